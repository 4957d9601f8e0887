"""nginx in its benchmark roles: the slow upstream, the direct ceiling, two caching proxies.

- :class:`Upstream` serves the image files with ``limit_rate`` per connection (that is
  how nginx throttles: N parallel requests get N x the rate). Its access log counts
  the bytes every system pulled from it.
- :class:`NginxDirect` serves local files with sendfile: the ceiling for warm reads.
- :class:`NginxCache` is the classic caching proxy in front of the upstream:
  ``proxy_cache_lock on`` alone, or with ``slice 4m`` (each slice fetched once).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from bench.servers.nginx import NginxServer, NginxUnavailable, nginx_binary

from .base import ImageFile, NotSupported, System, SystemUnavailable

__all__ = ["Upstream", "NginxDirect", "NginxCache"]


class _NginxSystem(System):
    kind = "nginx"

    def __init__(self, name: str, prefix: Path, server_body: str, http_extra: str = "", workers: int = 1) -> None:
        super().__init__(name)
        self.server = NginxServer(prefix, server_body, http_extra=http_extra, workers=workers)
        self.url = self.server.url

    def start(self) -> "_NginxSystem":
        try:
            nginx_binary()
        except NginxUnavailable as exc:
            raise SystemUnavailable(str(exc)) from exc
        try:
            self.server.start()
        except RuntimeError as exc:
            raise SystemUnavailable(str(exc)) from exc
        assert self.server.proc is not None
        self.pid = self.server.proc.pid
        return self

    def stop(self) -> None:
        self.server.stop()
        self.pid = None


class Upstream(_NginxSystem):
    """The slow store: files under ``root`` at ``limit_rate`` bytes/s per connection (0 = unlimited).

    A ``?rate=N`` query argument overrides the rate per request, so one upstream serves
    every scenario: systems pass the query on (nginx proxies it, Image APIs keep the
    location URL whole).
    """

    def __init__(self, prefix: Path, root: Path, rate: int = 0) -> None:
        body = f"""\
        root {Path(root).resolve()};
        limit_rate {int(rate)};
        location / {{
            if ($arg_rate) {{ set $limit_rate $arg_rate; }}
        }}
"""
        super().__init__("upstream", prefix, body)
        self.root = Path(root)
        self.rate = rate

    def url_for(self, image: ImageFile, rate: int = 0) -> str:
        return f"{self.url}/{image.name}" + (f"?rate={int(rate)}" if rate else "")

    def bytes_sent(self) -> int:
        """Body bytes sent so far, from the access log."""
        return self.server.bytes_sent()

    def request_count(self) -> int:
        return len(self.server.requests())

    def usage_for(self, names: Iterable[str], settle: float = 0.3, timeout: float = 30.0) -> tuple[int, int]:
        """``(body bytes, requests)`` the upstream served for these file names, once the log settles.

        Counting by name keeps steps apart: a fill that starts early (imgproxy starts one
        when a location is registered) or ends late is still charged to its own step.
        nginx logs a request when it ends, so wait until two reads ``settle`` s apart agree.
        """
        wanted = {"/" + n for n in names}
        deadline = time.monotonic() + timeout
        last: tuple[int, int] | None = None
        while True:
            total = count = 0
            for line in self.server.requests():
                parts = line.split(" ")
                if len(parts) >= 5 and parts[1].split("?")[0] in wanted and parts[4].isdigit():
                    total += int(parts[4])
                    count += 1
            if (total, count) == last or time.monotonic() > deadline:
                return total, count
            last = (total, count)
            time.sleep(settle)


class NginxDirect(_NginxSystem):
    """Files under ``root`` with sendfile: no cache, no hashing, no upstream."""

    def __init__(self, prefix: Path, root: Path, workers: int = 1) -> None:
        body = f"""\
        root {Path(root).resolve()};
        location / {{ }}
"""
        super().__init__("nginx-direct", prefix, body, workers=workers)

    def warm_url(self, image: ImageFile) -> str:
        return f"{self.url}/{image.name}"


class NginxCache(_NginxSystem):
    """A caching proxy in front of ``upstream_url``; ``slice_size`` > 0 adds the slice module.

    With ``link_url`` (a :class:`bench.servers.link.SharedLink` in front of the same
    upstream), paths under ``/via-link/`` are proxied, and cached, through that link.
    """

    def __init__(self, prefix: Path, upstream_url: str, *, slice_size: int = 0, workers: int = 1,
                 link_url: str | None = None) -> None:
        prefix = Path(prefix).resolve()
        http_extra = (
            f"    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:16m max_size=64g inactive=1d use_temp_path=off;"
        )
        if slice_size:
            rules = f"""\
            slice {slice_size};
            proxy_cache bench;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1d;
            proxy_cache_lock on;
            proxy_http_version 1.1;
"""
            name = "nginx-slice-lock"
        else:
            rules = """\
            proxy_cache bench;
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            proxy_http_version 1.1;
"""
            name = "nginx-cache-lock"
        body = f"        location / {{\n{rules}            proxy_pass {upstream_url};\n        }}\n"
        if link_url:
            body += f"        location /via-link/ {{\n{rules}            proxy_pass {link_url}/;\n        }}\n"
        super().__init__(name, prefix, body, http_extra=http_extra, workers=workers)
        self.link_url = link_url

    def cold_url(self, image: ImageFile, upstream_url: str) -> str:
        parts = urlsplit(upstream_url)
        if not parts.path.endswith("/" + image.name):
            raise NotSupported("nginx cache proxies the upstream's paths only")
        via = "/via-link" if self.link_url and upstream_url.startswith(self.link_url + "/") else ""
        return f"{self.url}{via}{parts.path}" + (f"?{parts.query}" if parts.query else "")
