"""VMware VMDK: the hosted sparse extent (``KDMV``) with its embedded descriptor, and the
text descriptor files that only point at other files.

Layout from VMware's "Virtual Disk Format 5.0" and QEMU's block/vmdk.c; the checks follow
Glance's ``VMDKInspector`` (oslo.utils ``format_inspector``) and its ``vmdk_allowed_types``
default, plus two of this module's own where QEMU would read another file: a
``parentFileNameHint`` (QEMU opens it as the backing file) and any extent but one ``SPARSE``
extent. A text descriptor (no ``KDMV`` header) is always refused: all its extents are other
files. VMDK3 (``COWD``) is recognised and refused.
"""

from __future__ import annotations

import re
import struct

from .probe import Probe

__all__ = ["VmdkProbe"]

_SPARSE_MAGIC = b"KDMV"
_COWD_MAGIC = b"COWD"
_DESCRIPTOR_AT = 0x200
_DESCRIPTOR_MAX = (1 << 20) - 1  # QEMU's limit on a descriptor's size
_GD_AT_END = 0xFFFFFFFFFFFFFFFF
_MARKER_EOS, _MARKER_FOOTER = 0, 3
_ALLOWED_TYPES = ("monolithicsparse", "streamoptimized")
_ACCESS = ("rw", "rdonly", "noaccess")
_EXTENT = re.compile(r'(rw|rdonly|noaccess)\s+(\d+)\s+(\w+)\s+"([^"]*)"(\s+\d+)?')
_CREATE_TYPE = re.compile(rb'createtype="([^"]{0,64})(")?', re.IGNORECASE)
_TEXT = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\n\v\f\r")


class VmdkProbe(Probe):
    """One region from offset 0: the 512-byte sparse header and the descriptor after it
    (sparse), or the descriptor itself (text); shrunk to what the header says."""

    name = "vmdk"

    def __init__(self) -> None:
        super().__init__()
        self._head = self.want(0, _DESCRIPTOR_AT + _DESCRIPTOR_MAX)
        self._kind: str | None = None
        self._header: tuple[int, int, int, int, int] | None = None
        self._scanned = 0
        self._footer_due = False  # the header defers to a footer at the end of the stream

    def _advance(self) -> None:
        if self._kind is None:
            self._classify(False)
        if self._kind == "sparse":
            self._advance_sparse()
        elif self._kind == "text":
            self._advance_text(False)

    def _classify(self, at_end: bool) -> None:
        if len(self._head) >= 4 and self._head.read(0, 4) == _SPARSE_MAGIC:
            self._kind = "sparse"
        elif len(self._head) >= 4 and self._head.read(0, 4) == _COWD_MAGIC:
            self._found(None, "VMDK version 3 (COWD) images are not accepted")
        elif len(self._head) >= 512 or (at_end and len(self._head)):
            if set(self._head.read(0, 512)) <= _TEXT:
                self._kind = "text"
                self._head.limit(_DESCRIPTOR_MAX)
            else:
                self._no()

    def _advance_sparse(self) -> None:
        if self._header is None:
            if len(self._head) < 512:
                return
            (_, version, _, capacity, _, desc_sector, desc_sectors, _, _, gd_offset) = struct.unpack(
                "<4sIIQQQQIQQ", self._head.read(0, 64))
            if version not in (1, 2, 3):
                self._found(None, f"VMDK version {version} is not accepted (only 1 to 3)")
                return
            if desc_sector * 512 != _DESCRIPTOR_AT or desc_sectors == 0:
                self._found(None, "the VMDK descriptor is not at sector 1")
                return
            self._header = (version, capacity, desc_sector, desc_sectors, gd_offset)
            self._head.limit(_DESCRIPTOR_AT + min(desc_sectors * 512, _DESCRIPTOR_MAX))
        if not self._head.complete or self._footer_due:
            return
        _, capacity, _, _, gd_offset = self._header
        unsafe = _descriptor_unsafe(self._head.read(_DESCRIPTOR_AT))
        if gd_offset == _GD_AT_END and unsafe is None:
            # the grain directory and the authoritative header are in a footer (streamOptimized)
            self._footer_due = True
            self._head.limit(0)
            return
        self._found(capacity * 512, unsafe)

    def _advance_text(self, at_end: bool) -> None:
        # A descriptor file ends at its first NUL or at QEMU's size limit. Each call searches
        # only the bytes that arrived since the last one, in place (the buffer may hold 1 MiB).
        base = max(0, self._scanned - len(b'createtype="'))
        nul = self._head.find(b"\0", base)
        end = len(self._head) if nul < 0 else nul
        ended = nul >= 0 or self._head.complete or at_end
        found = self._head.search(_CREATE_TYPE, base, end)
        if found is not None:
            value = found.group(1)
            if found.group(2) or len(value) >= 64 or ended:
                create_type = value[:64].decode("ascii", "replace").lower()
                self._found(None, f'a VMDK descriptor file (createType "{create_type}") points at other files')
                return
            self._scanned = found.start() + len(b'createtype="')  # the next search starts at the marker
        elif ended:
            self._no()
        else:
            self._scanned = len(self._head)

    def _at_end(self, total: int, tail: bytes) -> None:
        if self._kind is None:
            self._classify(True)
        if self._kind == "text" and not self.decided:
            self._advance_text(True)
        elif self._kind == "sparse" and self._footer_due and self._header is not None:
            self._found(*(_footer(self._header, tail) if total >= 1536 else (None, "the VMDK footer is missing")))
        elif self._kind == "sparse":
            self._found(None, "the VMDK header or descriptor is truncated")


def _descriptor_unsafe(raw: bytes) -> str | None:
    """Why an embedded descriptor is refused, or None; Glance's line grammar, then the extents."""
    try:
        text = raw.split(b"\0", 1)[0].decode("ascii").lower()
    except UnicodeDecodeError:
        return "the VMDK descriptor is not ASCII text"
    fields: dict[str, str] = {}
    extents: list[str] = []
    for line in (raw_line.strip() for raw_line in text.split("\n")):
        key, equals, value = line.partition("=")
        if not line or line.startswith("#") or line.startswith("ddb"):
            continue
        if equals and " " not in key:
            fields[key] = value.strip().strip('"')
        elif line.split(" ")[0] in _ACCESS:
            extents.append(line)
        else:
            return f"the VMDK descriptor has a line it may not have: {line[:60]!r}"
    create_type = fields.get("createtype", "")
    if create_type not in _ALLOWED_TYPES:
        return f'VMDK createType "{create_type[:64]}" is not accepted (only monolithicSparse and streamOptimized)'
    if "parentfilenamehint" in fields:
        return "the VMDK image names a parent image (parentFileNameHint)"
    if len(extents) != 1:
        return f"the VMDK descriptor has {len(extents)} extents (exactly one is accepted)"
    extent = _EXTENT.fullmatch(extents[0])
    if extent is None:
        return "the VMDK extent line is malformed"
    if extent.group(3) != "sparse" or "/" in extent.group(4) or "\\" in extent.group(4):
        return "the VMDK extent is not the sparse data of this file"
    return None


def _footer(header: tuple[int, int, int, int, int], tail: bytes) -> tuple[int | None, str | None]:
    """Glance's ``check_footer``: a footer marker, a copy of the header, an end-of-stream marker."""
    version, _, desc_sector, desc_sectors, _ = header
    marker, footer, eos = tail[-1536:-1024], tail[-1024:-512], tail[-512:]
    (magic, f_version, _, capacity, _, f_desc_sector, f_desc_sectors, _, _, f_gd_offset) = struct.unpack(
        "<4sIIQQQQIQQ", footer[:64])
    pad = b"\0" * 496
    if magic != _SPARSE_MAGIC or f_version != version:
        return None, "the VMDK footer does not match its header"
    if (f_desc_sector, f_desc_sectors) != (desc_sector, desc_sectors):
        return None, "the VMDK footer names another descriptor than its header"
    if f_gd_offset == _GD_AT_END:
        return None, "the VMDK footer points at another footer"
    if struct.unpack("<II", marker[8:16]) != (0, _MARKER_FOOTER) or marker[16:] != pad:
        return None, "the VMDK footer marker is invalid"
    if struct.unpack("<QII", eos[:16]) != (0, 0, _MARKER_EOS) or eos[16:] != pad:
        return None, "the VMDK end-of-stream marker is invalid"
    return capacity * 512, None
