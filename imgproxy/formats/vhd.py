"""Microsoft's formats: VHD (QEMU's ``vpc``) and VHDX.

VHD: a big-endian 512-byte footer, copied to offset 0 in dynamic images and found only at
the end of fixed ones (QEMU's block/vpc.c). VHDX: a region table at 192 KiB points at a
metadata region whose table points at the virtual disk size and file parameters items
(MS-VHDX 2.2-2.6). Glance's ``VHDInspector``/``VHDXInspector`` read the sizes; the parent
checks are this module's own: a differencing VHD or VHDX names a parent file by path, the
backing-file danger of qcow2 in another format.
"""

from __future__ import annotations

import struct
import uuid

from .probe import HeaderProbe, Probe, Region

__all__ = ["FixedVhdProbe", "VhdProbe", "VhdxProbe"]

_COOKIE = b"conectix"
_FIXED, _DYNAMIC, _DIFFERENCING = 2, 3, 4
# Creator applications whose images QEMU sizes by current_size rather than by CHS geometry.
_SIZED_BY_CURRENT_SIZE = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\x00")
_MAX_GEOMETRY = 65535 * 16 * 255


def _footer_size(footer: bytes) -> int:
    """The disk size QEMU's ``vpc_open`` computes from a footer (CHS unless told otherwise)."""
    creator = footer[28:32]
    current_size: int = struct.unpack(">Q", footer[48:56])[0]
    cylinders, heads, sectors = struct.unpack(">HBB", footer[56:60])
    chs_sectors: int = cylinders * heads * sectors
    if creator in _SIZED_BY_CURRENT_SIZE or chs_sectors == _MAX_GEOMETRY:
        return current_size // 512 * 512
    return chs_sectors * 512


def _footer_unsafe(footer: bytes) -> str | None:
    (disk_type,) = struct.unpack(">I", footer[60:64])
    if disk_type == _DIFFERENCING:
        return "the VHD image is a differencing disk (it names a parent image)"
    if disk_type not in (_FIXED, _DYNAMIC):
        return f"VHD disk type {disk_type} is not accepted (only fixed and dynamic)"
    return None


class VhdProbe(HeaderProbe):
    """A VHD whose footer copy opens the file: dynamic (and differencing) images."""

    name = "vhd"
    magic = _COOKIE
    header_size = 512

    def _judge(self, footer: bytes) -> None:
        self._found(_footer_size(footer), _footer_unsafe(footer))


class FixedVhdProbe(Probe):
    """A fixed VHD: raw data and a footer in the last 512 bytes, nothing at the start.

    QEMU finds it only when told the format is ``vpc`` (its probe reads the start only), so
    the inspector counts this match only where ``vhd`` is declared.
    """

    name = "vhd"
    placement = "tail"

    def _advance(self) -> None:
        pass  # only the end of the stream matters

    def _at_end(self, total: int, tail: bytes) -> None:
        footer = tail[-512:]
        if total >= 512 and footer[:8] == _COOKIE:
            self._found(_footer_size(footer), _footer_unsafe(footer))


_REGION_TABLE = 192 * 1024
_TABLE_SIZE = 64 * 1024
_MAX_ENTRIES = 2047
_MIB = 1024 * 1024
_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E")
_VIRTUAL_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
_HAS_PARENT = 1 << 1


class VhdxProbe(Probe):
    """VHDX: ident, region table, metadata table, then the two items it points at."""

    name = "vhdx"

    def __init__(self) -> None:
        super().__init__()
        self._ident = self.want(0, 8)
        self._regions_table = self.want(_REGION_TABLE, _TABLE_SIZE)
        self._meta: Region | None = None
        self._items: tuple[Region, Region] | None = None

    def _advance(self) -> None:
        if self._ident.complete and self._ident.read() != b"vhdxfile":
            self._no()
            return
        if not self._ident.complete or not self._regions_table.complete:
            return
        if self._meta is None:
            offset, unsafe = _metadata_offset(self._regions_table.read())
            if unsafe or offset is None:
                self._found(None, unsafe or "the VHDX image has no metadata region")
                return
            self._meta = self.want(offset, _TABLE_SIZE)
        if not self._meta.complete:
            return
        if self._items is None:
            offsets, unsafe = _item_offsets(self._meta.read())
            if unsafe or offsets is None:
                self._found(None, unsafe)
                return
            base = self._meta.offset
            self._items = (self.want(base + offsets[0], 8), self.want(base + offsets[1], 8))
        size_item, params_item = self._items
        if not (size_item.complete and params_item.complete):
            return
        (size,) = struct.unpack("<Q", size_item.read())
        _, flags = struct.unpack("<II", params_item.read())
        self._found(size, "the VHDX image is a differencing disk (it has a parent)" if flags & _HAS_PARENT else None)

    def _at_end(self, total: int, tail: bytes) -> None:
        if self._ident.complete:
            self._found(None, "the VHDX image is truncated")


def _guid(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=raw)


def _metadata_offset(table: bytes) -> tuple[int | None, str | None]:
    signature, _, count, _ = struct.unpack("<4sIII", table[:16])
    if signature != b"regi":
        return None, "the VHDX region table signature is missing"
    if count > _MAX_ENTRIES:
        return None, f"the VHDX region table has {count} entries (at most {_MAX_ENTRIES})"
    for i in range(count):
        entry = table[16 + 32 * i:48 + 32 * i]
        if _guid(entry[:16]) == _METADATA_REGION:
            (offset,) = struct.unpack("<Q", entry[16:24])
            if offset < _MIB or offset % _MIB:
                return None, f"the VHDX metadata region offset {offset} is not a positive multiple of 1 MiB"
            return offset, None
    return None, None


def _item_offsets(table: bytes) -> tuple[tuple[int, int] | None, str | None]:
    signature, _, count = struct.unpack("<8sHH", table[:12])
    if signature != b"metadata":
        return None, "the VHDX metadata table signature is missing"
    if count > _MAX_ENTRIES:
        return None, f"the VHDX metadata table has {count} entries (at most {_MAX_ENTRIES})"
    found: dict[uuid.UUID, int] = {}
    for i in range(count):
        entry = table[32 + 32 * i:64 + 32 * i]
        (offset,) = struct.unpack("<I", entry[16:20])
        found[_guid(entry[:16])] = offset
    if _PARENT_LOCATOR in found:
        return None, "the VHDX image is a differencing disk (it has a parent locator)"
    if _VIRTUAL_DISK_SIZE not in found or _FILE_PARAMETERS not in found:
        return None, "the VHDX metadata lacks the virtual disk size or file parameters"
    offsets = (found[_VIRTUAL_DISK_SIZE], found[_FILE_PARAMETERS])
    if min(offsets) < _TABLE_SIZE:  # MS-VHDX 2.6.1.2; so the items always follow the table in the stream
        return None, "a VHDX metadata item lies inside the metadata table"
    return offsets, None
