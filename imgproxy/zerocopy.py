"""The ASGI ``http.response.zerocopysend`` extension, for uvicorn's httptools protocol.

An app that finds ``"http.response.zerocopysend"`` in ``scope["extensions"]`` may send a
body part as ``{"type": "http.response.zerocopysend", "file": fd, "offset": o, "count": n,
"more_body": ...}`` (the ASGI spec's extension): the bytes go from the file to the socket
with ``os.sendfile``, never through Python. Everything else about the response (status,
headers, Content-Length or chunked framing, keep-alive) stays uvicorn's: the body's
``more_body=False`` end goes through uvicorn's own ``send``.

- **Flow control.** ``sendfile`` needs the socket to itself, so what uvicorn buffered
  (the head) is flushed first, through uvicorn's own writable signal. The socket is
  non-blocking: when it is full (``EAGAIN``) the sender waits until it is writable
  again, on a duplicate of its descriptor (an event loop refuses to watch a descriptor a
  transport owns), or until the connection is lost.
- **Fair service.** At most ``SLICE`` bytes per ``sendfile`` call, then the loop is
  yielded, so with one worker and many streams no stream waits behind another's whole
  chunk (nginx's ``sendfile_max_chunk`` does the same).
- **Many streams send on threads.** With more than ``FEW`` requests in flight, each
  ``sendfile`` call runs on one of the worker's :class:`SendfileThreads` (the lifespan
  owns them and offers them under :data:`SENDFILE`; nginx's ``aio threads`` in spirit): a
  ``sendfile`` to loopback also does the client's TCP receive work in the caller, and on
  one thread the curls then waited for it while a core idled (32 curls reading a cached
  1 GiB image, 1 worker, 2 cores: 15-17% of the machine idle, nginx 14-16%; on 4 threads
  2%). A call runs on the socket's duplicate, never on the transport's descriptor, and is
  awaited to its end even when the task is cancelled, so neither descriptor can be closed
  and reused while a thread still sends on it. A lone stream sends on the loop: its calls
  are many and small (``UNSENT_MAX``), and a thread's hand-off per call would cost more.
- **A lone stream keeps its transmit.** While the worker serves at most ``FEW`` requests,
  a socket that sends a file holds at most about ``UNSENT_MAX`` bytes not sent yet
  (``TCP_NOTSENT_LOWAT``): ``sendfile`` stops there and the sender waits for the socket,
  instead of queuing up to the send buffer (4 MiB). Data queued behind a closed window is
  sent by the kernel while it handles the client's ACKs, which on loopback runs in the
  client's process: the client then pays for our transmit and its own receive path on
  top of its copy, while the server's core idles. Sent by our ``sendfile`` as the window
  opens, that work stays on the server's core: one curl reading a cached 1 GiB image
  (2 cores) spent 0.33-0.54 s of CPU per GB before, 0.27-0.29 after; the server 0.28-0.31
  before, 0.36-0.41 after. With more requests the limit is lifted: full send buffers keep
  32 streams in step (their finish times 0.2 s apart; 0.5-0.6 s with the limit, though
  the limit made all 32 faster).
- **Full segments.** With more than ``FEW`` requests, once a response sends from a file its
  socket is corked (``TCP_CORK``, nginx's ``tcp_nopush``) until the response ends:
  ``sendfile`` calls that each fill what the socket has room for then leave no short
  segment behind, pushed alone (the socket is ``TCP_NODELAY``) for the client to take in as
  one more packet; what is left goes out when the response ends (or, at a pause, after the
  kernel's 200 ms). 32 curls reading a cached 1 GiB image (1 worker, 2 cores), each run
  in turn with nginx: 0.88-0.97x nginx's throughput before (median 0.93, 13 runs),
  0.93-1.04x after (median 0.97, 15 runs), the curls' and the kernel's receive work
  falling by more than the server's rises; corking each body part alone gained nothing.
  A lone stream is not corked: with its ``UNSENT_MAX`` limit, one curl was no faster.
- **Errors.** A client that has gone raises uvicorn's ``ClientDisconnected`` (an
  ``OSError``); a file that ends before ``count`` raises ``OSError`` and the app's error
  then cuts the connection (the body is shorter than its Content-Length).

It also joins a response's head to its body: uvicorn writes the head to the socket as soon
as ``http.response.start`` comes, so a small JSON answer cost two system calls (and two
segments for the client to take in). The head is kept until the app's next message or
its task's next turn of the loop (``call_soon``), whichever comes first, and goes out in
one write with a first body piece of up to ``JOIN_MAX`` bytes; a slow body never delays it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.protocols.utils import ClientDisconnected

__all__ = ["ZEROCOPY", "SENDFILE", "SLICE", "UNSENT_MAX", "FEW", "JOIN_MAX", "SendfileThreads",
           "open_sendfile_threads", "ZeroCopySend"]

ZEROCOPY = "http.response.zerocopysend"

# The lifespan state key under which an app offers its SendfileThreads to the protocol.
SENDFILE = "imgproxy.sendfile_threads"

# Bytes per sendfile call between two turns of the event loop: at most a chunk (and no
# more than the socket's free send buffer, 4 MiB at most here, takes anyway), so 32 streams
# take a turn each within a few milliseconds. 32 curls reading a cached 1 GiB image, in
# turn on one machine: 1 MiB 2.47-2.78 GB/s at 0.30-0.35 s of server CPU per GB, 2 MiB
# 3.07-3.08 GB/s at 0.27, 4 MiB 3.15-3.23 GB/s at 0.23 (nginx: ~3.6 GB/s at 0.19).
SLICE = 4 * 1024 * 1024

# Bytes a file-sending socket of a lone stream may hold not sent yet (TCP_NOTSENT_LOWAT):
# small, so the window's openings are filled by our sendfile rather than by the kernel on
# the client's ACK (one curl, interleaved rounds: curl's CPU per GB fell most with 16-64
# KiB, less with 256 KiB-1 MiB). The socket wakes us at half of it, ~25 us of a 10 Gb/s
# link: taken only while the loop is nearly idle (at most FEW requests).
UNSENT_MAX = 64 * 1024

# Requests in flight in the worker up to which its file streams are limited to UNSENT_MAX.
FEW = 4

# The largest first body piece copied behind a kept head (a copy this size costs less than
# the system call it saves).
JOIN_MAX = 64 * 1024


class _Keeper:
    """Stands in for a cycle's transport while uvicorn's ``send`` writes: the first write is
    kept (``kept``) or, when ``head`` is given, sent behind it in one write. Everything
    else goes to the transport; closing it sends what is kept first."""

    def __init__(self, transport: Any, head: bytes | None = None) -> None:
        self.transport = transport
        self.head = head
        self.kept = b""

    def write(self, data: bytes) -> None:
        if self.head is None:
            self.kept += data
            return
        head, self.head = self.head, b""
        self.transport.write(head + data if head else data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def flush(self) -> None:
        if self.head and not self.transport.is_closing():
            self.transport.write(self.head)
        self.head = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def _fileno(file: Any) -> int:
    return file if isinstance(file, int) else int(file.fileno())


class SendfileThreads:
    """A worker's threads that run ``sendfile`` calls for its streams. Thread-safe."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imgproxy-sendfile")

    async def send(self, sock: int, fd: int, offset: int, count: int) -> int:
        """Send up to ``count`` bytes of ``fd`` from ``offset`` to the non-blocking socket
        ``sock`` on a thread; the bytes sent, or -1 when the socket was full at once. Raises
        what ``os.sendfile`` raises. Returns only when the thread is done with both
        descriptors, even when cancelled (then it waits for the call and re-raises)."""
        call = asyncio.get_running_loop().run_in_executor(self._pool, _send_some, sock, fd, offset, count)
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            while not call.done():
                try:
                    await asyncio.wait([call])
                except asyncio.CancelledError:
                    pass
            if not call.cancelled():
                call.exception()  # retrieved: the cancellation is what the caller is told
            raise

    def close(self) -> None:
        """Wait for the calls in flight, then stop the threads."""
        self._pool.shutdown(wait=True)


@asynccontextmanager
async def open_sendfile_threads(threads: int) -> AsyncIterator[dict[str, SendfileThreads]]:
    """A lifespan's state entry offering ``threads`` sendfile threads (none for 0), closed on exit."""
    if threads <= 0:
        yield {}
        return
    pool = SendfileThreads(threads)
    try:
        yield {SENDFILE: pool}
    finally:
        await asyncio.to_thread(pool.close)


def _send_some(sock: int, fd: int, offset: int, count: int) -> int:
    """``sendfile`` until ``count`` bytes are sent or the socket is full (see ``SendfileThreads.send``)."""
    done = 0
    while done < count:
        try:
            sent = os.sendfile(sock, fd, offset + done, count - done)
        except BlockingIOError:
            return done or -1
        if sent == 0:
            break
        done += sent
    return done


class ZeroCopySend:
    """``send`` of one request/response cycle: uvicorn's, plus zerocopysend messages.

    Runs on the event loop; not thread-safe. It releases the duplicate descriptor it may
    hold when the response ends or its sending fails; the protocol calls :meth:`close`
    when the connection is lost (which also stops a wait for the socket). ``in_flight``
    counts the worker's requests in flight (compared with ``FEW`` before each ``sendfile``);
    with more, ``threads`` (when given) run the calls.
    """

    def __init__(self, cycle: RequestResponseCycle, loop: asyncio.AbstractEventLoop,
                 on_close: Callable[[ZeroCopySend], None] = lambda _: None,
                 in_flight: Callable[[], int] = lambda: 1, threads: SendfileThreads | None = None) -> None:
        self._cycle = cycle
        self._send = cycle.send  # uvicorn's own, for every other message
        self._loop = loop
        self._on_close = on_close
        self._watch_fd = -1  # a duplicate of the socket's descriptor, watched for writability
        self._waiter: asyncio.Future[None] | None = None
        self._head = b""  # a response head not written yet
        self._head_timer: asyncio.Handle | None = None
        self._in_flight = in_flight
        self._threads = threads
        self._on_thread = False  # a thread sends on _watch_fd: only it may close that descriptor
        self._corked = False
        self._unsent = 0  # the socket's TCP_NOTSENT_LOWAT as we set it (0: the system's default)

    async def __call__(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self._cycle.flow.write_paused:
            await self._through(_Keeper(self._cycle.transport), message)
            return
        head = self._take_head()
        if kind == ZEROCOPY:
            if head:
                self._cycle.transport.write(head)
            try:
                await self._zerocopysend(message)
            except BaseException:
                self.close()  # the app's error cuts the connection: no more sends
                raise
            return
        if head and kind == "http.response.body" and len(message.get("body", b"")) <= JOIN_MAX:
            await self._through(_Keeper(self._cycle.transport, head), message)
        else:
            if head:
                self._cycle.transport.write(head)
            await self._send(message)
        if self._cycle.response_complete:
            self.close()

    async def _through(self, keeper: _Keeper, message: Any) -> None:
        """uvicorn's ``send`` of ``message`` writing to ``keeper``; a head it kept waits for
        the next message or the loop's next turn."""
        cycle = self._cycle
        cycle.transport = keeper  # type: ignore[assignment]
        try:
            await self._send(message)
        finally:
            cycle.transport = keeper.transport
            keeper.flush()  # a head uvicorn did not write behind (HEAD, a refused body)
        if keeper.kept:
            self._head = keeper.kept
            self._head_timer = self._loop.call_soon(self._write_head)

    def _take_head(self) -> bytes:
        head, self._head = self._head, b""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        return head

    def _write_head(self) -> None:
        self._head_timer = None
        head, self._head = self._head, b""
        if head and not self._cycle.disconnected and not self._cycle.transport.is_closing():
            self._cycle.transport.write(head)

    async def _zerocopysend(self, message: Any) -> None:
        cycle = self._cycle
        if cycle.disconnected:
            raise ClientDisconnected
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{ZEROCOPY}' before the response started or after it ended.")
        fd = _fileno(message["file"])
        offset = message.get("offset")
        at_position = offset is None  # the spec: from the file's position, which then advances
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        if count and cycle.scope["method"] != "HEAD":
            if cycle.chunked_encoding:
                cycle.transport.write(b"%x\r\n" % count)
                await self._sendfile(fd, offset, count)
                cycle.transport.write(b"\r\n")
            else:
                if count > cycle.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                await self._sendfile(fd, offset, count)
                cycle.expected_content_length -= count
        if at_position:
            os.lseek(fd, offset + count, os.SEEK_SET)
        if not message.get("more_body", False):
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            self.close()  # uncorks: the end of the body goes out with what is left

    async def _sendfile(self, fd: int, offset: int, count: int) -> None:
        cycle = self._cycle
        transport = cycle.transport
        await self._flushed()
        end = offset + count
        while offset < end:
            # Checked right before each call, with no await in between: a transport that is
            # not closing still owns its descriptor, which no other connection can hold then.
            if cycle.disconnected or transport.is_closing():
                raise ClientDisconnected
            sock_object = transport.get_extra_info("socket")
            unsent = UNSENT_MAX if self._in_flight() <= FEW else 0
            if unsent != self._unsent:
                self._unsent = unsent
                _set_option(sock_object, socket.TCP_NOTSENT_LOWAT, unsent)
            if not unsent and not self._corked:
                self._corked = True
                _set_option(sock_object, socket.TCP_CORK, 1)
            sock = sock_object.fileno()
            try:
                if not unsent and self._threads is not None:
                    sent = await self._send_on_thread(sock, fd, offset, min(SLICE, end - offset))
                else:
                    sent = os.sendfile(sock, fd, offset, min(SLICE, end - offset))
            except BlockingIOError:
                sent = -1
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ClientDisconnected from exc
            if sent < 0:
                if not (cycle.disconnected or transport.is_closing()):  # a thread's call awaited
                    await self._writable(sock)
                continue
            if sent == 0:
                raise OSError(errno.EIO, f"the file ended at {offset}, before the {count} bytes to send")
            offset += sent
            await asyncio.sleep(0)  # a turn for the other streams

    async def _send_on_thread(self, sock: int, fd: int, offset: int, count: int) -> int:
        """One ``sendfile`` on a thread, to the socket's duplicate: the connection may be lost
        and the transport's descriptor closed (and its number reused) while the thread sends;
        the duplicate stays this connection's socket until it is closed, here if
        :meth:`close` ran meanwhile."""
        assert self._threads is not None
        if self._watch_fd < 0:
            self._watch_fd = os.dup(sock)
        dup = self._watch_fd
        self._on_thread = True
        try:
            return await self._threads.send(dup, fd, offset, count)
        finally:
            self._on_thread = False
            if self._watch_fd != dup:
                os.close(dup)

    async def _flushed(self) -> None:
        """Wait until uvicorn's write buffer (the response head) is on the wire."""
        transport = self._cycle.transport
        if transport.get_write_buffer_size() == 0:
            return
        low, high = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0)  # the protocol is paused until the buffer is empty
        try:
            await self._cycle.flow.drain()  # resumed when empty, or when the connection is lost
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _writable(self, sock: int) -> None:
        if self._watch_fd < 0:
            self._watch_fd = os.dup(sock)
        fd = self._watch_fd
        waiter = self._waiter = self._loop.create_future()
        self._loop.add_writer(fd, _set, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if self._watch_fd == fd:  # not closed meanwhile
                self._loop.remove_writer(fd)

    def _uncork(self) -> None:
        if self._corked:
            self._corked = False
            transport = self._cycle.transport
            if not transport.is_closing():
                _set_option(transport.get_extra_info("socket"), socket.TCP_CORK, 0)

    def close(self) -> None:
        """Stop waiting for the socket and release the duplicate descriptor. Idempotent."""
        self._uncork()
        self._take_head()  # the response ended (then nothing is kept) or the connection did
        if self._waiter is not None:
            _set(self._waiter)
        if self._watch_fd >= 0:
            fd, self._watch_fd = self._watch_fd, -1
            self._loop.remove_writer(fd)
            if not self._on_thread:
                os.close(fd)
        self._on_close(self)


def _set_option(sock: Any, option: int, value: int) -> None:
    """Set a TCP ``option`` on a transport's TCP socket; another socket (a Unix one) is left as it is."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError:
        pass


def _set(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
