"""A simple progress display on stderr: elapsed time, the current step, and notes."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Prints ``[mm:ss] scenario | step`` lines; ``quiet`` silences everything (tests)."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.scenario = ""

    def _print(self, text: str) -> None:
        if self.quiet:
            return
        elapsed = int(time.monotonic() - self.t0)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", file=self.stream, flush=True)

    def begin(self, scenario: str, index: int = 0, total: int = 0) -> None:
        """A new scenario; ``index``/``total`` (1-based) show how far the run has got."""
        self.scenario = scenario
        self._print(f"== [{index}/{total}] {scenario}" if total else f"== {scenario}")

    def step(self, text: str) -> None:
        self._print(f"{self.scenario} | {text}")

    def note(self, text: str) -> None:
        self._print(f"   {text}")

    def alarm(self, text: str) -> None:
        """Always shown, even when quiet: a wrong byte or a broken run."""
        print(f"!! {text}", file=sys.stderr, flush=True)
