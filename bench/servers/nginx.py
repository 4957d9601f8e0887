"""nginx (Debian package) run as our own process: own prefix, pid, logs and port.

Used by the tests (a real, throttled HTTP store) and by the benchmark harness
(nginx direct, nginx caching proxy, the slow upstream). The caller supplies the
body of one ``server { ... }`` block; this module supplies everything around it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from .process import stop_process, wait_listening

__all__ = ["NginxServer", "nginx_binary", "NginxUnavailable"]

_CONF = """\
daemon off;
{user}worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format bytes '$request_method $request_uri $status $bytes_sent $body_bytes_sent "$http_range"';
    access_log {prefix}/access.log bytes;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    types {{ application/octet-stream img; }}
    default_type application/octet-stream;
{http_extra}
    server {{
        listen 127.0.0.1:{port};
{server_body}
    }}
}}
"""


class NginxUnavailable(RuntimeError):
    """nginx is not installed here."""


def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        raise NginxUnavailable("nginx is not installed (Debian package 'nginx'; .ci/run installs it)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NginxServer:
    """One nginx master on ``127.0.0.1:port``; stop it with :meth:`stop` (by PID).

    ``server_body`` is the inside of the ``server`` block (locations, root,
    limit_rate, proxy_pass...); ``http_extra`` goes into the ``http`` block
    (e.g. ``proxy_cache_path``). The access log records one line per request
    with ``$bytes_sent``, so callers can count what the server sent.
    """

    def __init__(self, prefix: Path, server_body: str, *, http_extra: str = "", port: int | None = None, workers: int = 1) -> None:
        self.prefix = Path(prefix).resolve()
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_body = server_body
        self.http_extra = http_extra
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def start(self, timeout: float = 10.0) -> "NginxServer":
        binary = nginx_binary()
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            _CONF.format(
                prefix=self.prefix,
                port=self.port,
                workers=self.workers,
                server_body=self.server_body,
                http_extra=self.http_extra,
                # As root, workers would drop to 'nobody' and fail to read our temp dirs.
                user="user root;\n" if os.geteuid() == 0 else "",
            )
        )
        self.access_log.touch()
        errlog = (self.prefix / "stderr.log").open("ab")
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log")],
            stdout=errlog,
            stderr=subprocess.STDOUT,
        )
        errlog.close()
        try:
            wait_listening(self.proc, self.port, timeout, "nginx", self.errors)
        except RuntimeError:
            self.stop()
            raise
        return self

    def errors(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            try:
                out.append((self.prefix / name).read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(out)

    def bytes_sent(self) -> int:
        """Body bytes sent so far, summed over the access log."""
        total = 0
        for line in self.access_log.read_text().splitlines():
            parts = line.split(" ")
            if len(parts) >= 5 and parts[4].isdigit():
                total += int(parts[4])
        return total

    def requests(self) -> list[str]:
        return self.access_log.read_text().splitlines()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, timeout, signal.SIGQUIT)  # graceful first: finish, then exit
        self.proc = None

    def __enter__(self) -> "NginxServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
