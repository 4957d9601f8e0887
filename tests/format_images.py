"""Real disk images for the format inspector's tests, made by ``qemu-img`` (Debian qemu-utils).

Formats qemu-img cannot write are built here byte by byte from their specifications: an ISO
9660 volume (a primary volume descriptor at 32 KiB), MBR and GPT partition tables. A few
unsafe variants no tool writes (a differencing VHD, a VMDK whose header defers to a footer)
are real images with the fields changed that the variant differs in; each says which.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

__all__ = ["FormatImages", "qemu_info", "require_qemu_img"]

MIB = 1024 * 1024


def require_qemu_img() -> str:
    """The qemu-img binary; fails the test when it is not installed."""
    binary = shutil.which("qemu-img")
    if binary is None:
        pytest.fail("qemu-img is not installed: apt-get install qemu-utils (.ci/run does)", pytrace=False)
    return binary


def qemu_info(path: Path, fmt: str | None = None) -> dict[str, object]:
    """``qemu-img info --output=json`` of ``path`` (read as ``fmt`` when given)."""
    args = [require_qemu_img(), "info", "--output=json", *(["-f", fmt] if fmt else []), str(path)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


def _qemu_img(*args: str) -> None:
    subprocess.run([require_qemu_img(), *args], check=True, capture_output=True)


class FormatImages:
    """Builds each image once, on first use, under ``root``; ``path(name)`` gives it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self._made:
            target = self.root / name
            getattr(self, "_make_" + name.replace("-", "_"))(target)
            self._made[name] = target
        return self._made[name]

    def data(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    # -- qemu-img's own -------------------------------------------------------------------

    def _make_raw(self, target: Path) -> None:
        target.write_bytes(os.urandom(MIB))

    def _make_qcow2_v2(self, target: Path) -> None:
        _qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", str(target), "1G")

    def _make_qcow2_v3(self, target: Path) -> None:
        _qemu_img("convert", "-O", "qcow2", "-o", "compat=1.1", "-f", "raw", str(self.path("raw")), str(target))

    def _make_qcow2_extended_l2(self, target: Path) -> None:
        _qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", str(target), "1G")

    def _make_qcow2_backing(self, target: Path) -> None:
        _qemu_img("create", "-f", "qcow2", "-b", str(self.path("qcow2-v2")), "-F", "qcow2", str(target))

    def _make_qcow2_data_file(self, target: Path) -> None:
        _qemu_img("create", "-f", "qcow2", "-o", f"data_file={target}.data", str(target), "64M")

    def _make_vhd(self, target: Path) -> None:
        _qemu_img("convert", "-O", "vpc", "-f", "raw", str(self.path("raw")), str(target))

    def _make_vhd_fixed(self, target: Path) -> None:
        _qemu_img("create", "-f", "vpc", "-o", "subformat=fixed", str(target), "1M")

    def _make_vhdx(self, target: Path) -> None:
        _qemu_img("create", "-f", "vhdx", str(target), "1G")

    def _make_vmdk_sparse(self, target: Path) -> None:
        _qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicSparse", str(target), "1G")

    def _make_vmdk_stream(self, target: Path) -> None:
        _qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", "-f", "raw",
                  str(self.path("raw")), str(target))

    def _make_vmdk_child(self, target: Path) -> None:
        # monolithicSparse with parentFileNameHint: qemu opens the parent as its backing file
        _qemu_img("create", "-f", "vmdk", "-b", str(self.path("vmdk-sparse")), "-F", "vmdk", str(target))

    def _make_vmdk_flat(self, target: Path) -> None:
        # the descriptor file only: its extent is the -flat file next to it
        _qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(target), "1M")

    def _make_vmdk_2gb(self, target: Path) -> None:
        _qemu_img("create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat", str(target), "1M")

    def _make_vdi(self, target: Path) -> None:
        _qemu_img("create", "-f", "vdi", str(target), "1G")

    def _make_qed(self, target: Path) -> None:
        _qemu_img("create", "-f", "qed", str(target), "1G")

    # -- real images with the fields changed that an unsafe variant differs in --------------

    def _make_vmdk_stream_footer(self, target: Path) -> None:
        """streamOptimized as VMware writes it: the header's grain directory offset says "at
        the end", and a footer (marker, header copy, end-of-stream marker) holds the real one.
        qemu reads it (qemu-img compare finds the same data)."""
        data = bytearray(self.data("vmdk-stream"))
        header = bytes(data[:512])
        data[56:64] = struct.pack("<Q", 0xFFFFFFFFFFFFFFFF)
        marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
        target.write_bytes(bytes(data) + marker + header + bytes(512))

    def _make_vhd_differencing(self, target: Path) -> None:
        """The dynamic VHD with disk type 4 (differencing) in both footer copies."""
        target.write_bytes(_edit_vhd_footers(self.data("vhd"), {60: struct.pack(">I", 4)}))

    def _make_vhd_current_size(self, target: Path) -> None:
        """The dynamic VHD claiming 2 MiB in current_size while its CHS geometry says 1 MiB:
        qemu sizes an image its creator app calls "qemu" by CHS."""
        target.write_bytes(_edit_vhd_footers(self.data("vhd"), {48: struct.pack(">Q", 2 * MIB)}))

    def _make_vhd_hyperv(self, target: Path) -> None:
        """The same, written by Hyper-V (creator app "win "): qemu sizes it by current_size."""
        target.write_bytes(_edit_vhd_footers(self.data("vhd"), {28: b"win ", 48: struct.pack(">Q", 2 * MIB)}))

    def _make_qcow2_unknown_feature(self, target: Path) -> None:
        """The v3 qcow2 with incompatible feature bit 20 set (no qemu knows it)."""
        data = bytearray(self.data("qcow2-v3"))
        data[72:80] = struct.pack(">Q", struct.unpack(">Q", data[72:80])[0] | 1 << 20)
        target.write_bytes(bytes(data))

    def _make_vdi_differencing(self, target: Path) -> None:
        """The VDI with image type 4 (differencing: it links to a parent)."""
        data = bytearray(self.data("vdi"))
        data[0x4C:0x50] = struct.pack("<I", 4)
        target.write_bytes(bytes(data))

    def _make_iso_qcow2(self, target: Path) -> None:
        """A polyglot: the qcow2 image with an ISO primary volume descriptor in its first cluster
        (still a valid qcow2 for qemu, and an ISO for anything reading sector 16)."""
        data = bytearray(self.data("qcow2-v2"))
        volume = _iso_bytes(blocks=24)
        data[32 * 1024:36 * 1024] = volume[32 * 1024:36 * 1024]
        target.write_bytes(bytes(data))

    # -- built from the specifications ------------------------------------------------------

    def _make_iso(self, target: Path) -> None:
        target.write_bytes(_iso_bytes(blocks=40))

    def _make_iso_hybrid(self, target: Path) -> None:
        # an isohybrid-style MBR in the system area: one bootable entry covering the volume
        target.write_bytes(_iso_bytes(blocks=40, system_area=_mbr([(0x80, 0x17, 0, 40 * 4)])))

    def _make_mbr(self, target: Path) -> None:
        disk = bytearray(os.urandom(2 * MIB))
        disk[:512] = _mbr([(0x80, 0x83, 2048, 2048)])
        target.write_bytes(bytes(disk))

    def _make_mbr_bad_boot_flag(self, target: Path) -> None:
        disk = bytearray(2 * MIB)
        disk[:512] = _mbr([(0x80, 0x83, 2048, 1024), (0x12, 0x83, 3072, 1024)])
        target.write_bytes(bytes(disk))

    def _make_gpt(self, target: Path) -> None:
        target.write_bytes(_gpt_disk(2 * MIB, extra_mbr_entry=False))

    def _make_gpt_extra_mbr_entry(self, target: Path) -> None:
        target.write_bytes(_gpt_disk(2 * MIB, extra_mbr_entry=True))


def _edit_vhd_footers(image: bytes, fields: dict[int, bytes]) -> bytes:
    """``image`` with ``fields`` (offset: bytes) set in its footer and footer copy, checksums fixed."""
    data = bytearray(image)
    for at in (0, len(data) - 512):
        footer = bytearray(data[at:at + 512])
        for offset, value in fields.items():
            footer[offset:offset + len(value)] = value
        footer[64:68] = bytes(4)
        footer[64:68] = struct.pack(">I", ~sum(footer) & 0xFFFFFFFF)
        data[at:at + 512] = footer
    return bytes(data)


def _both_endian(value: int, size: int) -> bytes:
    code = {2: "H", 4: "I"}[size]
    return struct.pack("<" + code, value) + struct.pack(">" + code, value)


def _iso_bytes(*, blocks: int, system_area: bytes = b"") -> bytes:
    """An ISO 9660 volume of ``blocks`` 2048-byte blocks: system area, primary volume
    descriptor (sector 16), set terminator (sector 17) (ECMA-119 8.4, 8.3)."""
    volume = bytearray(blocks * 2048)
    volume[:len(system_area)] = system_area
    pvd = bytearray(2048)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[8:40] = b"LINUX".ljust(32)
    pvd[40:72] = b"IMGPROXY_TEST".ljust(32)
    pvd[80:88] = _both_endian(blocks, 4)
    pvd[120:124] = _both_endian(1, 2)
    pvd[124:128] = _both_endian(1, 2)
    pvd[128:132] = _both_endian(2048, 2)
    pvd[881] = 1
    volume[16 * 2048:17 * 2048] = pvd
    volume[17 * 2048:17 * 2048 + 7] = b"\xffCD001\x01"
    return bytes(volume)


def _mbr(entries: list[tuple[int, int, int, int]]) -> bytes:
    """Sector 0 with up to four (boot flag, type, first LBA, sectors) entries."""
    sector = bytearray(512)
    for i, (boot, kind, first, count) in enumerate(entries):
        chs = b"\x00\x02\x00" if kind == 0xEE else b"\xfe\xff\xff"
        sector[446 + 16 * i:462 + 16 * i] = struct.pack("<B3sB3sII", boot, chs, kind, b"\xfe\xff\xff", first, count)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def _gpt_disk(size: int, *, extra_mbr_entry: bool) -> bytes:
    """A GPT disk (UEFI 2.10 ch. 5): protective MBR, primary and backup headers and entry
    arrays with their CRCs, one Linux partition."""
    sectors = size // 512
    disk = bytearray(size)
    mbr_entries = [(0x00, 0xEE, 1, sectors - 1)]
    if extra_mbr_entry:
        mbr_entries.append((0x00, 0x83, 2048, 1024))
    disk[:512] = _mbr(mbr_entries)
    entry = (uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4").bytes_le + uuid.uuid4().bytes_le
             + struct.pack("<QQQ", 2048, sectors - 34, 0) + "root".encode("utf-16-le").ljust(72, b"\0"))
    entries = entry.ljust(128 * 128, b"\0")
    disk_guid = uuid.uuid4().bytes_le

    def header(current: int, backup: int, entries_lba: int) -> bytes:
        fields = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, 92, 0, 0, current, backup,
                             34, sectors - 34, disk_guid, entries_lba, 128, 128, zlib.crc32(entries))
        crc = zlib.crc32(fields)
        return (fields[:16] + struct.pack("<I", crc) + fields[20:]).ljust(512, b"\0")

    disk[512:1024] = header(1, sectors - 1, 2)
    disk[1024:1024 + len(entries)] = entries
    disk[(sectors - 33) * 512:(sectors - 1) * 512] = entries
    disk[(sectors - 1) * 512:] = header(sectors - 1, 1, sectors - 33)
    return bytes(disk)
