"""The streaming inspector: every probe watches the upload, then one function decides."""

from __future__ import annotations

from .iso import IsoProbe
from .luks import LuksProbe
from .partitions import PartitionTableProbe
from .probe import Match, Probe
from .qcow import QcowProbe, QedProbe
from .vdi import VdiProbe
from .verdict import FormatRefused, FormatVerdict
from .vhd import FixedVhdProbe, VhdProbe, VhdxProbe
from .vmdk import VmdkProbe

__all__ = ["FormatInspector", "decide", "open_inspector"]

#: Declared disk formats whose content is verified; any other (ami, ari, aki, ploop) must be
#: data in no recognised format, as Glance allows for formats it cannot inspect.
INSPECTED = frozenset({"raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "iso"})
#: What ``raw`` may hold: data QEMU reads as raw when told so, and that clouds upload as raw
#: (installer ISOs; LUKS volumes, which Cinder uploads as raw images).
RAW_CONTENT = frozenset({"raw", "iso", "luks"})
_TAIL = 1536  # the most any probe reads from the end (a VMDK footer)


def open_inspector(declared_disk_format: str | None) -> FormatInspector:
    """A new inspector for one stream of image data whose ``disk_format`` is ``declared_disk_format``
    (``None``: not set; then only the safety rules apply)."""
    return FormatInspector(declared_disk_format)


class FormatInspector:
    """Inspects one image's data as it streams past; not thread-safe (one per upload).

    Call :meth:`feed` with every piece, in order, of any sizes; then :meth:`finish`. It keeps
    only header regions (at most about 1.2 MiB, while a VMDK descriptor is read) and the last
    few KiB, never the image. Each call costs little CPU (copies of header bytes only), so
    the async upload path may call it on the event loop.
    """

    def __init__(self, declared: str | None) -> None:
        self._declared = declared
        self._probes: list[Probe] = [
            QcowProbe(), QedProbe(), VhdProbe(), FixedVhdProbe(), VhdxProbe(), VmdkProbe(),
            VdiProbe(), LuksProbe(), IsoProbe(), PartitionTableProbe(),
        ]
        # only the fixed-VHD footer probe waits for the end; it is not fed
        self._pending = [probe for probe in self._probes if probe.placement != "tail"]
        self._position = 0
        self._tail = bytearray()
        self._verdict: FormatVerdict | None = None

    def feed(self, piece: bytes | bytearray | memoryview) -> None:
        """Inspects the next piece of the stream.

        Raises :class:`FormatRefused` as soon as the refusal is certain: once every header
        region has passed (34 KiB for most data, the descriptor or metadata for VMDK and
        VHDX), and again on every later call; the caller stops the upload and keeps nothing.
        The refusal is the one :meth:`finish` would give, whatever the piece sizes.
        """
        if self._verdict is not None and self._verdict.refusal is not None:
            raise self._verdict.refusal
        if isinstance(piece, memoryview) and piece.format != "B":
            piece = piece.cast("B")  # count bytes, not items
        start = self._position
        self._position += len(piece)
        self._tail += piece[-_TAIL:]
        if len(self._tail) > 8 * _TAIL:  # trimmed now and then: small pieces stay cheap
            del self._tail[:-_TAIL]
        if self._pending:
            view = memoryview(piece)
            for probe in self._pending:
                probe.feed(start, view)
            still = [probe for probe in self._pending if not probe.decided]
            if len(still) != len(self._pending):
                self._pending = still
                self._refuse_if_certain()

    @property
    def settled(self) -> bool:
        """True once :meth:`feed` can raise no new refusal (only :meth:`finish` may)."""
        return not self._pending

    def finish(self, total_size: int) -> FormatVerdict:
        """The verdict on the whole stream, which held ``total_size`` bytes.

        Returns the refusal that :meth:`feed` raised, if it raised one; raises ``ValueError``
        when ``total_size`` is not the number of bytes fed (a caller's bug, not bad data).
        """
        if self._verdict is not None:
            return self._verdict
        if total_size != self._position:
            raise ValueError(f"finish({total_size}) after {self._position} bytes were fed")
        for probe in self._probes:
            probe.end(total_size, bytes(self._tail[-_TAIL:]))
        self._pending = []
        self._verdict = decide(self._declared, self._matches(), total_size)
        return self._verdict

    def _matches(self) -> list[Match]:
        return [probe.match for probe in self._probes if probe.decided and probe.match is not None]

    def _refuse_if_certain(self) -> None:
        # Only the fixed-VHD footer waits for the end, and it counts only where vhd is
        # declared and nothing else matched: once the others have decided, decide() sees the
        # final set of matches, so an early refusal is exactly the final one.
        if self._pending:
            return
        matches = self._matches()
        if self._declared == "vhd" and not any(m.placement in ("head", "volume") for m in matches):
            return
        verdict = decide(self._declared, matches, self._position)
        if verdict.refusal is not None:
            self._verdict = verdict
            raise verdict.refusal


def decide(declared: str | None, matches: list[Match], total: int) -> FormatVerdict:
    """The verdict for ``declared`` given what the probes recognised in ``total`` bytes."""
    found = [m for m in matches if m.placement in ("head", "volume")]
    if not found and declared == "vhd":  # a dynamic VHD has a footer at its end too
        found = [m for m in matches if m.placement == "tail"]
    # a partition table is sector 0 of raw data: another format's header there owns the sector
    heads = any(m.placement == "head" for m in matches)
    table = None if heads else next((m for m in matches if m.placement == "table"), None)
    noted = table.format if table is not None else None
    if len(found) > 1:
        names = "+".join(sorted(m.format for m in found))
        reason = f"the data is in several formats at once ({names})"
        return FormatVerdict(names, None, noted, FormatRefused(reason, names, kind="unsafe", declared=declared))
    chosen = found[0] if found else Match("raw", total, None, "none")
    as_raw = declared == "raw" or (declared is not None and declared not in INSPECTED)
    size = total if as_raw or chosen.format == "raw" else chosen.virtual_size
    refused_size = None if chosen.format == "raw" else chosen.virtual_size  # a refusal may come early
    if declared is not None and not _accepts(declared, chosen.format):
        reason = f"the image's disk_format is {declared} but its data is {chosen.format}"
        refusal = FormatRefused(reason, chosen.format, kind="mismatch", declared=declared)
        return FormatVerdict(chosen.format, refused_size, noted, refusal)
    # a hybrid ISO's partition table only boots the ISO: Glance takes iso+gpt as iso, unchecked
    unsafe = chosen.unsafe or (table.unsafe if table is not None and chosen.format != "iso" else None)
    if unsafe is not None:
        refusal = FormatRefused(unsafe, chosen.format, kind="unsafe", declared=declared)
        return FormatVerdict(chosen.format, refused_size, noted, refusal)
    return FormatVerdict(chosen.format, size, noted)


def _accepts(declared: str, detected: str) -> bool:
    if declared == "raw":
        return detected in RAW_CONTENT
    if declared not in INSPECTED:
        return detected == "raw"
    return detected == declared
