"""Writing the containers SeqScope reads, byte by byte: PyTorch zip and legacy checkpoints around
a given pickle, safetensors files with any header, and zip bombs built without inflating them."""
from __future__ import annotations

import json
import struct
import zipfile
import zlib

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def torch_zip(pickle_bytes: bytes, storages: dict[str, bytes], prefix: str = "archive") -> bytes:
    """A PyTorch zip checkpoint (``torch.save``'s layout, records aligned to 64 bytes)."""
    import io

    entries = [("data.pkl", pickle_bytes), (".format_version", b"1"), (".storage_alignment", b"64"),
               ("byteorder", b"little")]
    entries += [(f"data/{k}", v) for k, v in storages.items()]
    entries += [("version", b"3\n")]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(2020, 1, 1, 0, 0, 0))
            start = buf.tell() + 30 + len(info.filename.encode())
            pad = (-(start + 4)) % 64
            info.extra = struct.pack("<HH", 0x4655, pad) + b"Z" * pad
            z.writestr(info, data)
    return buf.getvalue()


def _pickle_of(obj) -> bytes:
    import pickle

    return pickle.dumps(obj, protocol=2)


def torch_legacy(pickle_bytes: bytes, storages: dict[str, bytes], elem: int = 4) -> bytes:
    """A legacy (pre-1.6) PyTorch file: magic, protocol, sys info, the object pickle, the storage
    keys, then each storage as a little-endian element count and its bytes."""
    out = _pickle_of(LEGACY_MAGIC) + _pickle_of(1001)
    out += _pickle_of({"protocol_version": 1001, "little_endian": True,
                       "type_sizes": {"short": 2, "int": 4, "long": 4}})
    out += pickle_bytes + _pickle_of(list(storages))
    for data in storages.values():
        out += struct.pack("<q", len(data) // elem) + data
    return out


def safetensors_bytes(header: dict | bytes | str, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file with this header (a dict is written as JSON) and data; ``length``
    overrides the 8-byte header length (to lie about it)."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    header += b" " * ((-len(header)) % 8)
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def tensors_header(tensors: dict, metadata: dict | None = None) -> tuple[dict, bytes]:
    """A safetensors header and data for ``{name: (dtype, shape, bytes)}``."""
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, data


def deflate_zeros(n_mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``n_mib`` MiB of zero bytes, and its CRC-32, built from one
    compressed MiB repeated (each piece ends in a full flush, so pieces are independent)."""
    block = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(block, crc)
    return piece * n_mib + b"\x03\x00", crc


def zip_with_raw_entry(entries: list[tuple[str, bytes]], raw_name: str, raw_deflate: bytes, crc: int,
                       inflated: int, declared: int | None = None) -> bytes:
    """A zip whose entry ``raw_name`` holds an already deflated stream (``inflated`` bytes once
    inflated, ``declared`` in the headers) after the stored ``entries``."""
    out = bytearray()
    central = bytearray()
    declared = inflated if declared is None else declared
    big = declared >= 0xFFFFFFFF
    items = [(n, d, 0, zlib.crc32(d), len(d), len(d)) for n, d in entries]
    items.append((raw_name, raw_deflate, 8, crc, len(raw_deflate), declared))
    for name, data, method, c, csize, usize in items:
        nb = name.encode("utf-8")
        extra = struct.pack("<HHQQ", 1, 16, usize, csize) if big and method == 8 else b""
        u32 = 0xFFFFFFFF if extra else usize
        c32 = 0xFFFFFFFF if extra else csize
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if extra else 20, 0, method, 0, 0x21, c, c32, u32,
                           len(nb), len(extra)) + nb + extra + data
        cextra = struct.pack("<HHQQ", 1, 16, usize, csize) if extra else b""
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45 if extra else 20, 0, method, 0, 0x21, c,
                               c32, u32, len(nb), len(cextra), 0, 0, 0, 0, offset) + nb + cextra
    cd_offset = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(items), len(items), len(central), cd_offset, 0)
    return bytes(out)
