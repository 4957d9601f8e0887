"""The format inspector against real images (tests/format_images.py): what it detects, the
virtual size qemu-img reports, what it refuses and why, whatever the upload's piece sizes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgproxy.attrs import DISK_FORMATS
from imgproxy.formats import FormatRefused, FormatVerdict, open_inspector

from .format_images import MIB, FormatImages, qemu_info, require_qemu_img


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> FormatImages:
    require_qemu_img()
    return FormatImages(tmp_path_factory.mktemp("format-images"))


def pieces(data: bytes, size: int, *, small_span: int = MIB) -> Iterator[memoryview]:
    """``data`` in ``size``-byte pieces through its first ``small_span`` bytes and its last
    8 KiB (where every header, descriptor and footer the inspector reads lies, but VHDX
    metadata), and 1 MiB pieces between, which keeps byte-sized feeding affordable."""
    view = memoryview(data)
    head_end = min(len(data), small_span)
    tail_start = max(head_end, len(data) - 8192)
    offset = 0
    while offset < len(data):
        step = size if offset < head_end or offset >= tail_start else min(MIB, tail_start - offset)
        yield view[offset:offset + step]
        offset += step


def inspect(declared: str | None, chunks: Iterator[memoryview] | list[bytes], total: int) -> FormatVerdict:
    inspector = open_inspector(declared)
    try:
        for chunk in chunks:
            inspector.feed(chunk)
    except FormatRefused:
        pass
    return inspector.finish(total)


def summary(verdict: FormatVerdict) -> tuple[object, ...]:
    refusal = verdict.refusal
    return (verdict.format, verdict.virtual_size, verdict.partition_table,
            None if refusal is None else (refusal.kind, refusal.reason, refusal.detected))


@dataclass(frozen=True)
class Case:
    image: str
    declared: str | None
    format: str
    refusal: str | None = None  # the refusal's kind
    reason: str = ""
    table: str | None = None
    qemu_format: str | None = None  # compare virtual_size with qemu-img info -f this ("" = probe)

    def __str__(self) -> str:
        return f"{self.image}-as-{self.declared}"


ACCEPTED = [
    Case("raw", "raw", "raw", qemu_format="raw"),
    Case("qcow2-v2", "qcow2", "qcow2", qemu_format="qcow2"),
    Case("qcow2-v3", "qcow2", "qcow2", qemu_format="qcow2"),
    # Glance refuses incompatible feature bit 4 as unknown; qemu has known it since 5.2
    Case("qcow2-extended-l2", "qcow2", "qcow2", qemu_format="qcow2"),
    Case("vhd", "vhd", "vhd", qemu_format="vpc"),
    Case("vhd-fixed", "vhd", "vhd", qemu_format="vpc"),
    Case("vhd-current-size", "vhd", "vhd", qemu_format="vpc"),
    Case("vhd-hyperv", "vhd", "vhd", qemu_format="vpc"),
    Case("vhd-fixed", "raw", "raw", qemu_format=""),  # qemu too sees raw data unless told vpc
    Case("vhdx", "vhdx", "vhdx", qemu_format="vhdx"),
    Case("vmdk-sparse", "vmdk", "vmdk", qemu_format="vmdk"),
    Case("vmdk-stream", "vmdk", "vmdk", qemu_format="vmdk"),
    Case("vmdk-stream-footer", "vmdk", "vmdk", qemu_format="vmdk"),
    Case("vdi", "vdi", "vdi", qemu_format="vdi"),
    Case("iso", "iso", "iso", qemu_format=""),
    Case("iso", "raw", "iso", qemu_format="raw"),
    Case("iso-hybrid", "iso", "iso", table="mbr", qemu_format=""),
    Case("gpt", "raw", "raw", table="gpt", qemu_format="raw"),
    Case("mbr", "raw", "raw", table="mbr", qemu_format="raw"),
    Case("raw", "ami", "raw", qemu_format="raw"),
    Case("qcow2-v3", None, "qcow2", qemu_format=""),
]

UNSAFE = [
    Case("qcow2-backing", "qcow2", "qcow2", "unsafe", "backing file", qemu_format="qcow2"),
    Case("qcow2-data-file", "qcow2", "qcow2", "unsafe", "external data file", qemu_format="qcow2"),
    Case("qcow2-unknown-feature", "qcow2", "qcow2", "unsafe", "unknown incompatible features"),
    Case("vmdk-flat", "vmdk", "vmdk", "unsafe", 'createType "monolithicflat") points at other files'),
    Case("vmdk-2gb", "vmdk", "vmdk", "unsafe", 'createType "twogbmaxextentflat") points at other files'),
    Case("vmdk-child", "vmdk", "vmdk", "unsafe", "parentFileNameHint", qemu_format="vmdk"),
    Case("vhd-differencing", "vhd", "vhd", "unsafe", "differencing"),
    Case("vdi-differencing", "vdi", "vdi", "unsafe", "image type 4"),
    Case("qed", None, "qed", "unsafe", "QED images are not accepted"),
    Case("iso-qcow2", "qcow2", "iso+qcow2", "unsafe", "several formats at once (iso+qcow2)"),
    Case("iso-qcow2", "iso", "iso+qcow2", "unsafe", "several formats"),
    Case("mbr-bad-boot-flag", "raw", "raw", "unsafe", "entry 1 has an invalid boot flag", table="mbr"),
    Case("gpt-extra-mbr-entry", "raw", "raw", "unsafe", "protective MBR defines other partitions", table="gpt"),
]

MISMATCHED = [
    Case("qcow2-v3", "raw", "qcow2", "mismatch", "disk_format is raw but its data is qcow2"),
    Case("qcow2-backing", "raw", "qcow2", "mismatch", "its data is qcow2"),
    Case("vhd", "raw", "vhd", "mismatch"),
    Case("vhdx", "raw", "vhdx", "mismatch"),
    Case("vmdk-sparse", "raw", "vmdk", "mismatch"),
    Case("vmdk-flat", "raw", "vmdk", "mismatch"),
    Case("vdi", "raw", "vdi", "mismatch"),
    Case("qed", "qcow2", "qed", "mismatch"),
    Case("raw", "qcow2", "raw", "mismatch", "disk_format is qcow2 but its data is raw"),
    Case("raw", "vhd", "raw", "mismatch"),
    Case("raw", "iso", "raw", "mismatch"),
    Case("qcow2-v2", "vmdk", "qcow2", "mismatch"),
    Case("vmdk-sparse", "vhdx", "vmdk", "mismatch"),
    Case("qcow2-v2", "ami", "qcow2", "mismatch"),
    Case("iso", "qcow2", "iso", "mismatch"),
]


@pytest.mark.parametrize("case", ACCEPTED + UNSAFE + MISMATCHED, ids=str)
def test_real_image(images: FormatImages, case: Case) -> None:
    data = images.data(case.image)
    verdict = inspect(case.declared, [data], len(data))

    assert verdict.format == case.format
    assert verdict.partition_table == case.table
    if case.refusal is None:
        assert verdict.refusal is None, verdict.refusal
    else:
        assert verdict.refusal is not None
        assert verdict.refusal.kind == case.refusal
        assert case.reason in verdict.refusal.reason
        assert verdict.refusal.detected == case.format
        assert verdict.refusal.declared == case.declared
    if case.qemu_format is not None:
        info = qemu_info(images.path(case.image), case.qemu_format or None)
        assert verdict.virtual_size == info["virtual-size"], info
    # the same verdict whatever the upload's piece sizes
    for size in (4 * MIB, 7, 1):
        assert summary(inspect(case.declared, pieces(data, size), len(data))) == summary(verdict), size


@pytest.mark.parametrize("case", UNSAFE + MISMATCHED, ids=str)
def test_refusal_is_raised_once_the_headers_have_passed(images: FormatImages, case: Case) -> None:
    data = images.data(case.image)
    # VHDX metadata sits at 3 MiB in qemu's layout; everything else is decided by 64 KiB
    bound = 4 * MIB if case.format == "vhdx" else 64 * 1024
    if case.declared == "vhd" and case.format == "raw":
        bound = len(data)  # a fixed VHD is raw data and a footer: only the end can tell
    inspector = open_inspector(case.declared)
    fed = 0
    raised: FormatRefused | None = None
    for chunk in pieces(data, 4096, small_span=len(data)):
        fed += len(chunk)
        try:
            inspector.feed(chunk)
        except FormatRefused as exc:
            raised = exc
            break
    verdict = inspector.finish(len(data))
    assert summary(verdict) == summary(inspect(case.declared, [data], len(data)))
    if len(data) <= bound:  # a small image may end before the inspector could be sure
        return
    assert raised is not None and fed <= bound
    assert verdict.refusal is raised
    with pytest.raises(FormatRefused) as again:
        inspector.feed(b"more")
    assert again.value is raised


def test_the_unsafe_images_are_what_they_claim(images: FormatImages) -> None:
    # the unsafe fixtures are unsafe for qemu itself, not only for the inspector's reading
    assert qemu_info(images.path("qcow2-backing"))["backing-filename"]
    assert qemu_info(images.path("vmdk-child"))["backing-filename"]
    assert "data-file" in str(qemu_info(images.path("qcow2-data-file"))["format-specific"])
    for name in ("vmdk-flat", "vmdk-2gb"):
        extents = qemu_info(images.path(name))["format-specific"]["data"]["extents"]  # type: ignore[index]
        assert all(Path(extent["filename"]) != images.path(name) for extent in extents)
    assert qemu_info(images.path("iso-qcow2"))["format"] == "qcow2"


def test_luks_is_raw_content_of_version_1_only() -> None:
    # Cinder uploads encrypted volumes as raw images holding LUKS1; Glance refuses LUKS2.
    # (qemu-img spends ~10 s deriving a key to write a LUKS image, so these are headers.)
    luks1 = b"LUKS\xba\xbe\x00\x01" + bytes(64 * 1024)
    luks2 = b"LUKS\xba\xbe\x00\x02" + bytes(64 * 1024)
    assert summary(inspect("raw", [luks1], len(luks1))) == ("luks", len(luks1), None, None)
    refused = inspect("raw", [luks2], len(luks2)).refusal
    assert refused is not None and refused.kind == "unsafe" and "LUKS version 2" in refused.reason
    assert inspect("qcow2", [luks1], len(luks1)).refusal is not None


def test_truncated_headers_are_refused(images: FormatImages) -> None:
    for name, declared, cut in [("qcow2-v3", "qcow2", 50), ("vdi", "vdi", 0x100), ("vhd", "vhd", 300),
                                ("vmdk-sparse", "vmdk", 700), ("vhdx", "vhdx", 300 * 1024)]:
        data = images.data(name)[:cut]
        refusal = inspect(declared, [data], len(data)).refusal
        assert refusal is not None and "truncated" in refusal.reason, (name, refusal)


def test_memory_stays_bounded_whatever_the_image_size() -> None:
    # 64 MiB streams of text (what a VMDK descriptor file looks like) and of zeros
    for declared, byte in (("raw", b"a"), ("vmdk", b"a"), ("qcow2", b"\0"), ("iso", b"\0")):
        piece = byte * MIB
        inspector = open_inspector(declared)
        tracemalloc.start()
        try:
            for _ in range(64):
                try:
                    inspector.feed(piece)
                except FormatRefused:
                    break
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 3 * MIB, (declared, peak)


def test_finish_checks_the_byte_count() -> None:
    inspector = open_inspector("raw")
    inspector.feed(b"\0" * 100)
    with pytest.raises(ValueError):
        inspector.finish(99)
    assert inspector.finish(100) == FormatVerdict("raw", 100)


def test_an_empty_upload_is_raw() -> None:
    assert inspect("raw", [], 0) == FormatVerdict("raw", 0)
    refusal = inspect("qcow2", [], 0).refusal
    assert refusal is not None and refusal.kind == "mismatch"


# -- anything at all: only the typed error, and the same verdict for any piece sizes -----------

_HEADS = ["qcow2-v3", "qcow2-backing", "vhd", "vmdk-sparse", "vmdk-flat", "vdi", "qed", "iso-hybrid",
          "gpt", "mbr", "vmdk-stream-footer"]


@st.composite
def streams(draw: st.DrawFn, images: FormatImages) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=4096))
    data = bytearray(images.data(draw(st.sampled_from(_HEADS)))[:40 * 1024])
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.one_of(st.integers(0, min(600, len(data) - 1)), st.integers(0, len(data) - 1)))
        data[at] = draw(st.integers(0, 255))
    return bytes(data[:draw(st.integers(0, len(data)))])


@settings(max_examples=300, deadline=None, database=None,  # no example files in the work tree
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), declared=st.sampled_from([None, *DISK_FORMATS]),
       sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=20))
def test_any_bytes_get_a_verdict_or_the_typed_error(images: FormatImages, data: st.DataObject,
                                                    declared: str | None, sizes: list[int]) -> None:
    stream = data.draw(streams(images))
    whole = inspect(declared, [stream], len(stream))

    inspector = open_inspector(declared)
    offset, i = 0, 0
    raised: FormatRefused | None = None
    while offset < len(stream):
        piece = stream[offset:offset + sizes[i % len(sizes)]]
        try:
            inspector.feed(piece)
        except FormatRefused as exc:
            raised = exc
            break
        offset, i = offset + len(piece), i + 1
    verdict = inspector.finish(len(stream))
    assert summary(verdict) == summary(whole)
    if raised is not None:
        assert verdict.refusal is raised


def test_edits_of_one_field_flip_the_verdict(images: FormatImages) -> None:
    # guards against a check that passes for the wrong reason: the same image, one field apart
    vdi = bytearray(images.data("vdi"))
    vdi[0x44:0x48] = struct.pack("<I", 0x00010000)
    refusal = inspect("vdi", [bytes(vdi)], len(vdi)).refusal
    assert refusal is not None and "VDI version" in refusal.reason
    qcow = bytearray(images.data("qcow2-v2"))
    qcow[4:8] = struct.pack(">I", 1)
    refusal = inspect("qcow2", [bytes(qcow)], len(qcow)).refusal
    assert refusal is not None and "qcow2 version 1" in refusal.reason
    stream = bytearray(images.data("vmdk-stream-footer"))
    stream[-512 + 12] = 1  # the end-of-stream marker's type
    refusal = inspect("vmdk", [bytes(stream)], len(stream)).refusal
    assert refusal is not None and "end-of-stream marker" in refusal.reason
    assert inspect("raw", [os.urandom(4096)], 4096).refusal is None


# -- against Glance's own inspector (oslo.utils in the harness's Glance venv) -------------------

_GLANCE_SCRIPT = """
import json, sys
from oslo_utils.imageutils import format_inspector as fi
out = {}
for name, path in json.loads(sys.argv[1]).items():
    with open(path, "rb") as f:
        wrapper = fi.InspectWrapper(f)
        while wrapper.read(65536):
            pass
        wrapper.close()
    found = {str(i): i for i in wrapper.formats}
    if found.keys() == {"iso", "gpt"}:  # as glance/location.py: a hybrid ISO is an ISO
        found = {"iso": found["iso"]}
    if len(found) > 1:
        out[name] = ["+".join(sorted(found)), None, False]
        continue
    (inspector,) = found.values()
    try:
        inspector.safety_check()
        safe = True
    except (fi.SafetyCheckFailed, fi.ImageFormatError):
        safe = False
    out[name] = [str(inspector), inspector.virtual_size, safe]
print(json.dumps(out))
"""

# Where imgproxy answers otherwise than Glance 33's inspector, on purpose:
# image -> (field of (format, virtual_size, accepted), Glance's value, imgproxy's value).
GLANCE_DEVIATIONS: dict[str, tuple[int, object, object]] = {
    # qcow2 incompatible feature bit 4 (extended L2) is unknown to Glance, known to qemu >= 5.2
    "qcow2-extended-l2": (2, False, True),
    # a parentFileNameHint makes qemu open the parent as a backing file; Glance checks extents only
    "vmdk-child": (2, True, False),
    # differencing VHD and VDI images name a parent; Glance reads their size only
    "vhd-differencing": (2, True, False),
    "vdi-differencing": (2, True, False),
    # Glance reads a VHD's original_size; qemu (and imgproxy) size a Hyper-V image by current_size
    "vhd-hyperv": (1, 1079296, 2 * MIB),
}


def test_verdicts_match_glances_inspector_but_for_named_deviations(images: FormatImages) -> None:
    from bench.systems.glance import glance_venv

    from .requirements import require_glance_venv

    require_glance_venv()
    names = ["raw", "qcow2-v2", "qcow2-v3", "qcow2-extended-l2", "qcow2-backing", "qcow2-data-file",
             "qcow2-unknown-feature", "vhd", "vhd-fixed", "vhd-differencing", "vhd-current-size", "vhd-hyperv",
             "vhdx", "vmdk-sparse", "vmdk-stream", "vmdk-stream-footer", "vmdk-child", "vmdk-flat", "vmdk-2gb",
             "vdi", "vdi-differencing", "qed", "iso", "iso-hybrid", "iso-qcow2", "mbr", "mbr-bad-boot-flag",
             "gpt", "gpt-extra-mbr-entry"]
    paths = {name: str(images.path(name)) for name in names}
    out = subprocess.run([str(glance_venv() / "bin" / "python"), "-c", _GLANCE_SCRIPT, json.dumps(paths)],
                         check=True, capture_output=True, text=True).stdout
    # Glance says 0 where it does not know a virtual size; imgproxy says None
    glance = {name: (fmt, size or None, safe) for name, (fmt, size, safe) in json.loads(out).items()}
    for name in names:
        data = images.data(name)
        verdict = inspect(None, [data], len(data))
        # Glance names any partition table "gpt"; the sizes of refused images are not compared
        fmt = "gpt" if verdict.format == "raw" and verdict.partition_table else verdict.format
        accepted = verdict.refusal is None
        ours = (fmt, verdict.virtual_size if accepted else glance[name][1], accepted)
        expected = list(ours)
        if name in GLANCE_DEVIATIONS:
            field, theirs, mine = GLANCE_DEVIATIONS[name]
            assert ours[field] == mine, name
            expected[field] = theirs
        assert glance[name] == tuple(expected), name
