"""A minimal MetaImage (.mhd + .raw) reader, enough for PROMISE12, without SimpleITK/ITK.

Header: "Key = Value" text lines. Keys used: NDims, DimSize, ElementType, ElementDataFile
(a file name relative to the header, or LOCAL for data right after the header),
BinaryDataByteOrderMSB / ElementByteOrderMSB, HeaderSize, CompressedData,
ElementNumberOfChannels. The data is x-fastest, so the array is DimSize reversed:
(z, y, x) for a volume. The raw data is memory-mapped, not read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import DataError

ELEMENT_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16,
    "MET_INT": np.int32, "MET_UINT": np.uint32, "MET_LONG": np.int32, "MET_ULONG": np.uint32,
    "MET_LONG_LONG": np.int64, "MET_ULONG_LONG": np.uint64, "MET_FLOAT": np.float32,
    "MET_DOUBLE": np.float64,
}


def read_mhd_header(path: Path) -> tuple[dict[str, str], int]:
    """(header dict, byte offset just after the ElementDataFile line)."""
    try:
        raw = Path(path).read_bytes()[:65536]
    except OSError as e:
        raise DataError(f"{path}: cannot read MetaImage header ({e.strerror or e})") from e
    header, pos = {}, 0
    for line in raw.splitlines(keepends=True):
        pos += len(line)
        text = line.decode("latin-1").strip()
        if not text:
            continue
        if "=" not in text:
            raise DataError(f"{path}: not a MetaImage header (line {text[:40]!r} has no '=')")
        key, value = (t.strip() for t in text.split("=", 1))
        header[key] = value
        if key == "ElementDataFile":
            return header, pos
    raise DataError(f"{path}: MetaImage header has no ElementDataFile line")


def read_mhd(path: str | Path) -> np.ndarray:
    """The image of a .mhd header as a read-only array (memory-mapped), shape DimSize reversed."""
    path = Path(path)
    h, data_offset = read_mhd_header(path)
    try:
        ndims = int(h["NDims"])
        dims = [int(v) for v in h["DimSize"].split()]
        etype = h["ElementType"]
        channels = int(h.get("ElementNumberOfChannels", "1"))
        skip = int(h.get("HeaderSize", "0"))
    except KeyError as e:
        raise DataError(f"{path}: MetaImage header lacks required key {e.args[0]}") from e
    except ValueError as e:
        raise DataError(f"{path}: malformed NDims/DimSize/HeaderSize/ElementNumberOfChannels ({e})") from e
    if len(dims) != ndims or any(d < 1 for d in dims):
        raise DataError(f"{path}: DimSize {dims} does not match NDims {ndims}")
    if etype not in ELEMENT_TYPES:
        raise DataError(f"{path}: unsupported ElementType {etype!r}; known: {sorted(ELEMENT_TYPES)}")
    if h.get("CompressedData", "False").lower() == "true":
        raise DataError(f"{path}: compressed MetaImage data is not supported (save it uncompressed)")
    if channels != 1:
        raise DataError(f"{path}: multi-channel MetaImage is not supported")
    msb = h.get("BinaryDataByteOrderMSB", h.get("ElementByteOrderMSB", "False")).lower() == "true"
    dtype = np.dtype(ELEMENT_TYPES[etype]).newbyteorder(">" if msb else "<")
    shape = tuple(reversed(dims))
    nbytes = int(np.prod(shape)) * dtype.itemsize
    name = h["ElementDataFile"]
    if name == "LOCAL":
        data_file, offset = path, data_offset
    else:
        if " " in name.strip() and not (path.parent / name).exists():
            raise DataError(f"{path}: multi-file ElementDataFile {name!r} is not supported")
        data_file, offset = path.parent / name, 0
    if not data_file.is_file():
        raise DataError(f"{data_file}: MetaImage data file not found (named by {path})")
    size = data_file.stat().st_size
    offset = size - nbytes if skip == -1 else offset + skip
    if offset < 0 or size < offset + nbytes:
        raise DataError(f"{data_file}: truncated MetaImage data: {size - max(offset, 0)} bytes, "
                        f"header {path.name} needs {nbytes} ({etype} x {shape})")
    return np.memmap(data_file, dtype=dtype, mode="r", offset=offset, shape=shape)
