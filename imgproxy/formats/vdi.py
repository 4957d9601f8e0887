"""VirtualBox VDI: a little-endian 512-byte header (QEMU's block/vdi.c ``VdiHeader``).

Glance's ``VDIInspector`` reads the size; QEMU opens only version 1.1 images of the dynamic
and static types, so the others (undo and differencing images, which refer to a parent)
are refused here before anything tries.
"""

from __future__ import annotations

import struct

from .probe import HeaderProbe

__all__ = ["VdiProbe"]

_SIGNATURE = 0xBEDA107F
_VERSION_1_1 = 0x00010001
_DYNAMIC, _STATIC = 1, 2
_HEADER = 0x178  # through disk_size


class VdiProbe(HeaderProbe):
    name = "vdi"
    magic = struct.pack("<I", _SIGNATURE)
    magic_at = 0x40
    header_size = _HEADER

    def _judge(self, head: bytes) -> None:
        version, _, image_type = struct.unpack("<III", head[0x44:0x50])
        (disk_size,) = struct.unpack("<Q", head[0x170:0x178])
        reason = None
        if version != _VERSION_1_1:
            reason = f"VDI version {version:#x} is not accepted (only 1.1)"
        elif image_type not in (_DYNAMIC, _STATIC):
            reason = f"VDI image type {image_type} is not accepted (only dynamic and static images)"
        self._found(disk_size // 512 * 512, reason)
