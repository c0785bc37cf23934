"""Database settings, kept in ``config.toml`` beside the catalog.

Block shape and page size are fixed when a database is created: every stored block and page
depends on them. The defaults come from the sweep in ``benchmarks/storage.py``: 128x128 blocks
store a sparse fine-tune in 42% fewer bytes than 256x256 at the same import and read speed,
while 64x64 costs 1.5x in speed and 9x in catalog size; page size barely moves speed, and 4 MiB
pages keep caching and packing fine-grained. The file is TOML, written with tomli-w and read
with tomllib.
"""

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

import tomli_w

from weightdb.errors import FormatVersionError, WeightDBError, one_line
from weightdb.storage.policies import DEFAULT_POLICY, make_policy

FORMAT_VERSION = 1
WIDEST_ITEMSIZE = 8  # float64 / int64
MAX_PAGE_SIZE = 1024**3  # writers hold two page buffers in memory
MAX_SEGMENT_BYTES = 1024**4


@dataclass(frozen=True)
class Settings:
    block_rows: int = 128
    block_cols: int = 128
    page_size: int = 4 * 1024 * 1024
    segment_bytes: int = 1024 * 1024 * 1024
    policy: str = DEFAULT_POLICY  # buffer pool replacement policy; a server run may override it
    lossless: bool = False  # code new blocks at import (the lossless tier, ``codecs``)
    format_version: int = FORMAT_VERSION

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.block_rows, self.block_cols

    def validate(self) -> "Settings":
        if self.block_rows < 1 or self.block_cols < 1:
            raise WeightDBError(
                f"block shape must be positive, got {self.block_rows},{self.block_cols}"
            )
        needed = self.block_rows * self.block_cols * WIDEST_ITEMSIZE
        if self.page_size < needed:
            raise WeightDBError(
                f"page size {self.page_size} bytes cannot hold one {self.block_rows}x"
                f"{self.block_cols} block of 8-byte values; use a page size of at least "
                f"{needed} bytes or a smaller block shape"
            )
        if self.page_size > MAX_PAGE_SIZE:
            raise WeightDBError(
                f"page size {self.page_size} bytes is over the {MAX_PAGE_SIZE} bytes a page "
                "buffer may take; use a smaller page size"
            )
        make_policy(self.policy)  # a clear error for unknown names
        if not self.page_size <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise WeightDBError(
                f"segment size must be at least the page size and at most {MAX_SEGMENT_BYTES} "
                f"bytes, got {self.segment_bytes}"
            )
        return self


def write_settings(path: Path, settings: Settings) -> None:
    header = "# weightdb database settings; fixed at creation.\n"
    path.write_text(header + tomli_w.dumps(asdict(settings)))


def read_settings(path: Path) -> Settings:
    damaged = f"database settings {path} are damaged; restore the file from a backup"
    try:
        values = tomllib.loads(path.read_text())
    except OSError as error:
        raise WeightDBError(f"cannot read database settings {path}: {error}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as error:
        raise WeightDBError(f"{damaged} ({one_line(error) or 'nested too deeply'})") from None
    version = values.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"the database at {path.parent} has format version {version}, newer than this "
            f"weightdb reads ({FORMAT_VERSION}); upgrade weightdb to open it"
        )
    defaults = Settings()
    unknown = set(values) - set(Settings.__dataclass_fields__)
    if unknown:
        raise WeightDBError(f"{path} has unknown settings: {', '.join(sorted(unknown))}")
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if type(value) is not expected:
            raise WeightDBError(f"{damaged}: {key} = {value!r} is not of type {expected.__name__}")
    return Settings(**values).validate()
