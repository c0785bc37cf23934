"""Write a safetensors file tensor by tensor, so models larger than memory can be produced.

The header (names, shapes, byte ranges) is computed up front from the shapes; the data is then
appended in order, in chunks of any size. The byte ranges let an ONNX file point its initializers
into this file as external data, so the weights are on disk once.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

_ALIGN = 8
FLOAT32 = np.dtype("<f4")


class SafetensorsWriter:
    """Appends float32 tensors, in the order declared, to a safetensors file."""

    def __init__(self, path: Path, tensors: Sequence[tuple[str, tuple[int, ...]]]) -> None:
        header: dict[str, object] = {}
        start = 0
        self._order = []
        for name, shape in tensors:
            length = int(np.prod(shape)) * FLOAT32.itemsize
            header[name] = {
                "dtype": "F32",
                "shape": list(shape),
                "data_offsets": [start, start + length],
            }
            self._order.append((name, start, length))
            start += length
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % _ALIGN)
        self.data_start = 8 + len(encoded)
        self._end = start
        self._file = path.open("wb")
        self._file.write(len(encoded).to_bytes(8, "little") + encoded)
        self._written = 0

    def byte_range(self, name: str) -> tuple[int, int]:
        """Absolute file offset and length of a tensor's data."""
        for tensor, start, length in self._order:
            if tensor == name:
                return self.data_start + start, length
        raise KeyError(name)

    def write(self, chunk: np.ndarray) -> None:
        """Append the next rows of the current tensor."""
        data = np.ascontiguousarray(chunk, dtype=FLOAT32)
        self._file.write(data.tobytes())
        self._written += data.nbytes

    def close(self) -> None:
        """Finish the file; every declared byte must have been written."""
        self._file.close()
        if self._written != self._end:
            raise AssertionError(f"wrote {self._written} of {self._end} tensor bytes")

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()
