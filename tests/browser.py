"""A real headless browser for tests: Debian's ``chromium`` (.ci/run installs it).

No driver, no download: each call runs ``chromium --headless`` once, with a profile of its
own, to print a page's DOM after it loaded, or to write a screenshot.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

__all__ = ["dump_dom", "require_chromium", "screenshot"]

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
          "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def require_chromium() -> str:
    """The chromium binary; fails the test when it is not installed."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run does)", pytrace=False)
    return path


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory(prefix="imgproxy-chromium-") as profile:
        cmd = [require_chromium(), *_FLAGS, f"--user-data-dir={profile}", *args]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done


def dump_dom(url: str, timeout: float = 60.0) -> str:
    """The page's DOM, serialized, once it has loaded."""
    return _run(["--dump-dom", url], timeout).stdout.decode()


def screenshot(url: str, path: Path, *, width: int = 1100, height: int = 900, timeout: float = 60.0) -> Path:
    """A PNG of the page at ``width`` x ``height``."""
    _run([f"--window-size={width},{height}", f"--screenshot={path}", url], timeout)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no PNG at {path}"
    return path
