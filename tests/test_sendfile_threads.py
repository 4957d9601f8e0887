"""SendfileThreads: a cancelled send returns only once its thread is done with the descriptors.

Real sockets (socket pairs) and a real file; the one thread is held busy by a send on a
blocking socket whose buffer is full, so the call under test is still queued or running
when its task is cancelled.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from imgproxy.zerocopy import SendfileThreads


def _fill(sock: socket.socket) -> None:
    """Fill ``sock``'s send buffer (and its peer's receive buffer) until a send would block."""
    sock.setblocking(False)
    try:
        while True:
            sock.send(b"x" * 65536)
    except BlockingIOError:
        pass


async def test_a_cancelled_send_waits_for_its_thread_before_it_raises(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    path = tmp_path / "chunk"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    threads = SendfileThreads(1)
    busy_a, busy_b = socket.socketpair()
    out_a, out_b = socket.socketpair()
    try:
        _fill(busy_a)
        busy_a.setblocking(True)  # the one thread now blocks in sendfile until busy_b reads
        blocker = asyncio.ensure_future(threads.send(busy_a.fileno(), fd, 0, 1000))
        out_a.setblocking(False)
        sending = asyncio.ensure_future(threads.send(out_a.fileno(), fd, 0, len(data)))
        await asyncio.sleep(0.1)
        sending.cancel()
        await asyncio.sleep(0.1)
        assert not sending.done()  # its call has not run yet: it may not return before it did
        busy_b.setblocking(False)
        while not blocker.done():  # drain the blocked socket so the thread is free again
            try:
                busy_b.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        with pytest.raises(asyncio.CancelledError):
            await sending
        # The call ran to its end before the cancellation surfaced: its bytes are there.
        out_b.setblocking(False)
        got = b""
        while True:
            try:
                part = out_b.recv(1 << 20)
            except BlockingIOError:
                break
            got += part
        assert got and data.startswith(got)
    finally:
        for s in (busy_b, out_b, busy_a, out_a):  # a thread still blocked gets EPIPE and ends
            s.close()
        threads.close()
        os.close(fd)


async def test_a_full_socket_is_told_as_minus_one_and_errors_as_raised(tmp_path: Path) -> None:
    path = tmp_path / "chunk"
    path.write_bytes(os.urandom(10_000))
    fd = os.open(path, os.O_RDONLY)
    threads = SendfileThreads(2)
    a, b = socket.socketpair()
    try:
        _fill(a)
        assert await threads.send(a.fileno(), fd, 0, 10_000) == -1
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            await threads.send(a.fileno(), fd, 0, 10_000)
    finally:
        a.close()
        b.close()
        threads.close()
        os.close(fd)
