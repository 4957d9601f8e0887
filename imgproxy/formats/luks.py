"""LUKS: an encrypted volume (cryptsetup's LUKS1 on-disk format, big-endian header).

Glance's ``LUKSInspector`` accepts only version 1. Cinder uploads encrypted volumes as
``raw`` images holding LUKS data, so a LUKS payload is accepted where raw is declared.
"""

from __future__ import annotations

import struct

from .probe import HeaderProbe

__all__ = ["LuksProbe"]


class LuksProbe(HeaderProbe):
    name = "luks"
    magic = b"LUKS\xba\xbe"
    header_size = 8

    def _judge(self, header: bytes) -> None:
        (version,) = struct.unpack(">H", header[6:8])
        self._found(None, None if version == 1 else f"LUKS version {version} is not accepted (only 1)")
