"""QEMU's own formats: qcow2 (checked) and QED (recognised, never accepted).

Layouts from QEMU's docs/interop/qcow2.txt and block/qed.h; the checks follow Glance's
``QcowInspector``/``QEDInspector`` (oslo.utils ``format_inspector``) and QEMU's ``qcow2_do_open``.
"""

from __future__ import annotations

import struct

from .probe import HeaderProbe

__all__ = ["QcowProbe", "QedProbe"]

_MAGIC = b"QFI\xfb"
_V3_HEADER = 104
# Incompatible feature bits (qcow2.txt): 0 dirty, 1 corrupt, 2 external data file,
# 3 compression type, 4 extended L2 entries. Higher bits are unknown.
_EXTERNAL_DATA_FILE = 1 << 2
_KNOWN_INCOMPATIBLE = (1 << 5) - 1
# QEMU refuses cluster sizes outside 512 B .. 2 MiB (MIN/MAX_CLUSTER_BITS).
_CLUSTER_BITS = range(9, 22)


class QcowProbe(HeaderProbe):
    """qcow2 version 2 or 3: the header's first 104 bytes say all that matters."""

    name = "qcow2"
    magic = _MAGIC
    header_size = _V3_HEADER  # a v2 header is 72 bytes, but no v2 image is shorter than 104

    def _judge(self, head: bytes) -> None:
        _, version, backing_offset, backing_size, cluster_bits, size = struct.unpack(">4sIQIIQ", head[:32])
        reason = None
        if version not in (2, 3):
            size, reason = None, f"qcow2 version {version} is not accepted (only 2 and 3)"
        elif backing_offset or backing_size:
            reason = "the qcow2 image has a backing file"
        elif cluster_bits not in _CLUSTER_BITS:
            reason = f"qcow2 cluster_bits {cluster_bits} is out of range (9..21)"
        elif version == 3:
            incompatible, _, _, _, header_length = struct.unpack(">QQQII", head[72:104])
            if incompatible & _EXTERNAL_DATA_FILE:
                reason = "the qcow2 image has an external data file"
            elif incompatible & ~_KNOWN_INCOMPATIBLE:
                reason = f"the qcow2 image has unknown incompatible features ({incompatible:#x})"
            elif not _V3_HEADER <= header_length <= 1 << cluster_bits:
                reason = f"qcow2 header_length {header_length} is invalid"
        self._found(size, reason)


class QedProbe(HeaderProbe):
    """QED: recognised so that it is never taken for raw data; Glance bans the format."""

    name = "qed"
    magic = b"QED\x00"
    header_size = 4

    def _judge(self, header: bytes) -> None:
        self._found(None, "QED images are not accepted")
