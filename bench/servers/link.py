"""A shared slow link in front of the upstream: every connection's bytes share one rate.

nginx's ``limit_rate`` is per connection, so a client that fetches with several ranged
requests at once (imgproxy's read-ahead, nginx's slices) gets a multiple of it. A store
behind a ~100 MB/s network link does not work that way: all connections share the link.
This TCP relay models that link. Bytes towards the client pass a virtual-time
scheduler: each piece reserves its slot on the link (``len / rate`` seconds) and waits
for it, so all connections together get ``rate`` bytes/s, in arrival order, with a
burst of at most ``BURST_S`` seconds. Requests towards the upstream are not limited.

Run as ``python -m bench.servers.link --port P --upstream HOST:PORT --rate BYTES``; it
prints ``ready`` once listening and runs until SIGTERM. :class:`SharedLink` starts and
stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["SharedLink"]

PIECE = 64 * 1024
BURST_S = 0.01


class _Link:
    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._free_at = 0.0  # monotonic time at which the link has sent everything reserved

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self._free_at = max(self._free_at, now) + n / self.rate
        delay = self._free_at - now - BURST_S
        if delay > 0:
            await asyncio.sleep(delay)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link | None) -> None:
    try:
        while data := await reader.read(PIECE):
            if link is not None:
                await link.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _serve(port: int, upstream: str, rate: int) -> None:
    host, _, up_port = upstream.rpartition(":")
    link = _Link(rate)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(host, int(up_port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, up_w, None), _pump(up_r, client_w, link))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


class SharedLink:
    """The relay as a child process on ``127.0.0.1:port``, in front of ``upstream`` (host:port)."""

    def __init__(self, port: int, upstream: str, rate: int, log: Path) -> None:
        self.port, self.upstream, self.rate, self.log = port, upstream, rate, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> "SharedLink":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.servers.link", "--port", str(self.port),
                 "--upstream", self.upstream, "--rate", str(self.rate)],
                stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stdout.readline()
            if line.strip() == b"ready":
                return self
        self.stop()
        raise RuntimeError(f"shared link did not start: {line!r}; see {self.log}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--rate", type=int, required=True, help="bytes per second, for all connections together")
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.upstream, args.rate))


if __name__ == "__main__":
    main()
