"""ISO 9660 / UDF: a volume descriptor at 32 KiB, after 16 sectors of system area.

As Glance's ``ISOInspector``: the identifier at byte 1 of the descriptor is ``CD001``
(ISO 9660) or ``NSR02``/``NSR03`` (UDF); a primary volume descriptor (type 1) gives the size
as volume space size (both-endian u32 at 80) times logical block size (both-endian u16 at 128).
The system area may hold anything, a hybrid ISO's partition table included.
"""

from __future__ import annotations

import struct

from .probe import Probe

__all__ = ["IsoProbe"]

_DESCRIPTOR = 32 * 1024
_IDENTIFIERS = (b"CD001", b"NSR02", b"NSR03")


class IsoProbe(Probe):
    name = "iso"
    placement = "volume"

    def __init__(self) -> None:
        super().__init__()
        self._pvd = self.want(_DESCRIPTOR, 2048)

    def _advance(self) -> None:
        if len(self._pvd) >= 6 and self._pvd.read(1, 6) not in _IDENTIFIERS:
            self._no()
        elif self._pvd.complete:
            pvd = self._pvd.read()
            size = None
            if pvd[0] == 1 and pvd[1:6] == b"CD001":
                (blocks,) = struct.unpack("<I", pvd[80:84])
                (block_size,) = struct.unpack("<H", pvd[128:130])
                size = blocks * block_size
            self._found(size)
