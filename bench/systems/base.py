"""What every benchmarked system is: a server tree on loopback that can be started and stopped.

Scenarios ask a system for a URL to read an image from; how the image gets there
(a file in nginx's root, an image registered through the Image API, a location on
the slow upstream) is the system's business. A capability a system lacks raises
:class:`NotSupported`, which the report shows as "not run: <why>".
"""

from __future__ import annotations

import abc

import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["System", "SystemUnavailable", "NotSupported", "ImageFile", "free_port"]


class SystemUnavailable(RuntimeError):
    """The system cannot start here (not installed, failed to start); the message says why."""


class NotSupported(RuntimeError):
    """The system cannot do what the scenario asks (e.g. an endpoint answers 404/405/501)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ImageFile:
    """An image's bytes on local disk, with the digests a node must see."""

    path: Path
    size: int
    sha512: str
    md5: str

    @property
    def name(self) -> str:
        return self.path.name


class System(abc.ABC):
    """Base for all systems. ``pid`` is the root of the server's process tree while it runs."""

    kind = "system"

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid: int | None = None
        self.url = ""

    @abc.abstractmethod
    def start(self) -> "System":
        """Start the server (and whatever it needs); return self once it answers."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every process of the server, by PID; safe to call twice."""

    def cold_url(self, image: ImageFile, upstream_url: str) -> str:
        """A URL that serves ``image`` whose bytes live only on the upstream (not read yet)."""
        raise NotSupported(f"{self.name} cannot serve an image from an upstream")

    def warm_url(self, image: ImageFile) -> str:
        """A URL that serves ``image`` from local storage, already read once."""
        raise NotSupported(f"{self.name} cannot serve a local image")

    def __enter__(self) -> "System":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
