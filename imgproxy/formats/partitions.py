"""MBR and GPT partition tables at the start of raw data.

As Glance's ``GPTInspector`` (oslo.utils, UEFI 2.10 chapter 5): sector 0 ending in
``55 AA`` is a partition table unless it is a FAT boot sector (two FATs, fixed-disk media
byte); a protective entry (type ``0xEE``) makes it GPT. The sanity checks are Glance's:
boot flags ``0x00``/``0x80`` only; a protective MBR has exactly one entry, the first,
starting at CHS 0/2/0 and LBA 1; at least one partition is defined.
"""

from __future__ import annotations

import struct

from .probe import Probe

__all__ = ["PartitionTableProbe"]

_SIGNATURE = b"\x55\xaa"
_ENTRIES = 446
_PROTECTIVE = 0xEE
_FIXED_DISK_MEDIA = 0xF8


class PartitionTableProbe(Probe):
    name = "mbr"
    placement = "table"

    def __init__(self) -> None:
        super().__init__()
        self._sector = self.want(0, 512)

    def _advance(self) -> None:
        if not self._sector.complete:
            return
        sector = self._sector.read()
        is_fat = sector[0x10] == 2 and sector[0x15] == _FIXED_DISK_MEDIA
        if sector[510:512] != _SIGNATURE or is_fat:
            self._no()
            return
        types = [sector[_ENTRIES + 16 * i + 4] for i in range(4)]
        self._found(None, _check(sector), format="gpt" if _PROTECTIVE in types else "mbr")


def _check(sector: bytes) -> str | None:
    defined = []
    protective = False
    for i in range(4):
        boot, head, sect, cyl, kind, _, _, _, start_lba, _ = struct.unpack(
            "<B3BB3BII", sector[_ENTRIES + 16 * i:_ENTRIES + 16 * i + 16])
        if boot not in (0x00, 0x80):
            return f"MBR partition entry {i} has an invalid boot flag ({boot:#04x})"
        if kind != 0:
            defined.append(i)
        if kind == _PROTECTIVE:
            protective = True
            if (head, sect, cyl) != (0, 2, 0):
                return "the GPT protective MBR entry has an invalid start CHS"
            if start_lba != 1:
                return "the GPT protective MBR entry does not start at LBA 1"
    if protective and defined != [0]:
        return "the GPT protective MBR defines other partitions"
    if not defined:
        return "the MBR defines no partitions"
    return None
