"""What an inspection concludes: :class:`FormatVerdict`, and :class:`FormatRefused` for data refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FormatRefused", "FormatVerdict", "RefusalKind"]

#: ``mismatch``: the data contradicts the declared ``disk_format``; ``unsafe``: the data is
#: unsafe to hand to qemu. Glance 33 answers 415 to both (its upload maps InvalidImageData,
#: which both raise, to HTTPUnsupportedMediaType); the kind lets the boundary tell them apart.
RefusalKind = Literal["mismatch", "unsafe"]


class FormatRefused(Exception):
    """Image data that must not be stored.

    ``reason`` says why in words a user can act on, ``detected`` names the format the data
    is (``"raw"`` when no format was recognised, ``"iso+qcow2"`` when several were), ``kind``
    tells the HTTP boundary which status to answer, ``declared`` is the image's ``disk_format``.
    """

    def __init__(self, reason: str, detected: str, *, kind: RefusalKind, declared: str | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detected = detected
        self.kind: RefusalKind = kind
        self.declared = declared

    def __repr__(self) -> str:
        return f"FormatRefused({self.reason!r}, {self.detected!r}, kind={self.kind!r}, declared={self.declared!r})"


@dataclass(frozen=True)
class FormatVerdict:
    """The outcome of inspecting one image's data.

    ``format`` is what the data is (``raw``, ``qcow2``, ``vhd``, ``vhdx``, ``vmdk``, ``vdi``,
    ``iso``, ``qed``, ``luks``); ``partition_table`` is ``gpt`` or ``mbr`` when raw (or iso, or
    fixed vhd) data starts with one. ``virtual_size`` is the size of the disk a consumer sees
    when it opens the data as the declared format (the byte count for ``raw`` and the formats
    that are not inspected, the header's disk size otherwise), ``None`` when the data does not
    say. ``refusal`` is ``None`` for accepted data.
    """

    format: str
    virtual_size: int | None
    partition_table: str | None = None
    refusal: FormatRefused | None = None

    @property
    def accepted(self) -> bool:
        return self.refusal is None
