"""Reading and writing the safetensors format, streaming and memory-mapped.

We parse the format ourselves (it is an 8-byte length, a JSON header and raw bytes) because
we need three things the library does not give numpy users: bfloat16, precise errors for
truncated or inconsistent files, and streaming export of models larger than memory.
"""

import contextlib
import itertools
import json
import mmap
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from weightdb.errors import SourceFormatError, UnsupportedDTypeError
from weightdb.ingest import declared
from weightdb.ingest.source import ModelSource, TensorEntry
from weightdb.storage import dtypes

MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(path: Path, size: int, head: bytes) -> tuple[int, dict]:
    """Validate and return (header length, header dict) from the first bytes of a file."""
    if size < 8:
        raise SourceFormatError(f"{path} is not a safetensors file: only {size} bytes long")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise SourceFormatError(
            f"{path} is truncated or not a safetensors file: its header claims {header_len} "
            f"bytes but the file has {size - 8} after the length prefix"
        )
    what = f"{path} has a malformed safetensors header"
    header = declared.parse_json(head[8 : 8 + header_len], what)
    if not isinstance(header, dict):
        raise SourceFormatError(f"{what}: not a JSON object")
    return header_len, header


def _clip(value: object) -> str:
    """A declared value short enough for a one-line error."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _entries(
    path: Path, header: dict, data_size: int
) -> list[tuple[str, dtypes.DType, tuple, int]]:
    """Check every tensor record against the data section; return (name, dtype, shape, begin)."""
    records = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        what = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise SourceFormatError(f"{what} has a malformed record {_clip(info)}")
        if not isinstance(info["dtype"], str):
            raise SourceFormatError(f"{what} has dtype {_clip(info['dtype'])}, not a name")
        try:
            dtype = dtypes.from_safetensors(info["dtype"])
        except UnsupportedDTypeError as error:
            raise UnsupportedDTypeError(f"{what}: {error}") from None
        shape = declared.tensor_shape(info["shape"], dtype.itemsize, what)
        offsets = info["data_offsets"]
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise SourceFormatError(f"{what} has data offsets {_clip(offsets)}, not [begin, end]")
        begin, end = (declared.whole_number(x, f"{what} data offset") for x in offsets)
        expected = declared.nbytes(shape, dtype.itemsize)
        if not begin <= end or end - begin != expected:
            raise SourceFormatError(
                f"{path}: tensor {name!r} of {dtype.name}{list(shape)} needs {expected} bytes "
                f"but its data offsets are [{begin}, {end}]"
            )
        if end > data_size:
            raise SourceFormatError(
                f"{path} is truncated: tensor {name!r} ends at byte {end} of the data section, "
                f"which has only {data_size} bytes"
            )
        records.append((name, dtype, shape, begin, end))
    records.sort(key=lambda record: record[3])
    for previous, current in itertools.pairwise(records):
        if current[3] < previous[4]:
            raise SourceFormatError(
                f"{path}: tensors {previous[0]!r} and {current[0]!r} overlap in the data section"
            )
    return [(name, dtype, shape, begin) for name, dtype, shape, begin, _ in records]


def _close_map(mapped: mmap.mmap) -> None:
    """Unmap now if no array views the map. One still may (an import that failed holds its
    arrays in the traceback): then the map goes with the last view, and the import's own
    error, not a BufferError, is what the caller sees."""
    with contextlib.suppress(BufferError):
        mapped.close()


def open_safetensors(path: Path, fmt: str = "safetensors") -> ModelSource:
    source = ModelSource(format=fmt, tensors=[])
    with path.open("rb") as file:
        size = path.stat().st_size
        head = file.read(8)
        if len(head) == 8:
            claimed = int.from_bytes(head, "little")
            head += file.read(min(claimed, MAX_HEADER_BYTES))
        header_len, header = read_header(path, size, head)
        data_start = 8 + header_len
        records = _entries(path, header, size - data_start)
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    if mapped is not None:
        source.resources.callback(_close_map, mapped)
        mapped.madvise(mmap.MADV_SEQUENTIAL)

    def loader(dtype: dtypes.DType, shape: tuple, begin: int):
        def load() -> np.ndarray:
            count = int(np.prod(shape, dtype=np.int64))
            offset = data_start + begin
            if count:  # ask for the whole tensor at once rather than a page per fault
                start = offset - offset % mmap.PAGESIZE
                mapped.madvise(mmap.MADV_WILLNEED, start, offset + count * dtype.itemsize - start)
            array = np.frombuffer(mapped, dtype=dtype.numpy, count=count, offset=offset)
            return array.reshape(shape)

        return load

    source.tensors = [
        TensorEntry(name, dtype, shape, loader(dtype, shape, begin))
        for name, dtype, shape, begin in records
    ]
    metadata = header.get("__metadata__")
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise SourceFormatError(f"{path}: __metadata__ must map strings to strings")
        source.metadata["safetensors_metadata"] = metadata
    return source


def write_safetensors(
    out: BinaryIO,
    tensors: Iterable[tuple[str, dtypes.DType, tuple[int, ...]]],
    chunks: Iterator[tuple[str, bytes | memoryview | np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file whose tensor bytes arrive as (tensor name, chunk) in order.

    The header is computed from dtypes and shapes first, so no tensor is held whole.
    """
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    order = []
    for name, dtype, shape in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {
            "dtype": dtype.safetensors,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        order.append((name, nbytes))
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    out.write(struct.pack("<Q", len(encoded)))
    out.write(encoded)
    remaining = dict(order)
    for name, chunk in chunks:
        if isinstance(chunk, np.ndarray):
            chunk = np.ascontiguousarray(chunk).reshape(-1).view(np.uint8)
        data = memoryview(chunk)
        remaining[name] -= len(data)
        out.write(data)
    wrong = {name: left for name, left in remaining.items() if left}
    if wrong:
        raise RuntimeError(f"export wrote the wrong number of bytes for tensors {wrong}")
