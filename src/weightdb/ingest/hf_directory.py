"""Hugging Face style model folders: one ``model.safetensors`` or shards plus an index JSON."""

import json
from contextlib import ExitStack
from pathlib import Path

from weightdb.errors import SourceFormatError
from weightdb.ingest.safetensors_format import open_safetensors
from weightdb.ingest.source import ModelSource

INDEX_NAME = "model.safetensors.index.json"


def _shard_path(folder: Path, shard: object) -> Path:
    """Resolve a shard file named by the index, refusing anything outside the folder."""
    if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
        raise SourceFormatError(
            f"{folder / INDEX_NAME} names shard {shard!r}; shards must be plain file names "
            "inside the model folder"
        )
    path = folder / shard
    if not path.is_file():
        raise SourceFormatError(f"{folder / INDEX_NAME} names shard {shard!r}, which is missing")
    return path


def open_hf_directory(folder: Path) -> ModelSource:
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
            assert isinstance(weight_map, dict)
        except (json.JSONDecodeError, KeyError, AssertionError, UnicodeDecodeError):
            raise SourceFormatError(f"{index_path} is not a valid index (no weight_map)") from None
        shards = list(dict.fromkeys(weight_map.values()))
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
        if not shards:
            raise SourceFormatError(
                f"{folder} holds no .safetensors file and no {INDEX_NAME}; nothing to import"
            )
        if len(shards) > 1:
            raise SourceFormatError(
                f"{folder} holds several .safetensors files but no {INDEX_NAME} saying how they "
                "form one model"
            )
    resources = ExitStack()
    tensors, metadata = [], {}
    with ExitStack() as on_error:
        on_error.callback(resources.close)
        for shard in shards:
            part = resources.enter_context(open_safetensors(_shard_path(folder, shard)))
            tensors.extend(part.tensors)
            metadata.update(part.metadata)
        if index_path.is_file():
            missing = set(weight_map) - {t.name for t in tensors}
            if missing:
                raise SourceFormatError(
                    f"{index_path} lists tensors that no shard holds: {sorted(missing)[:5]}"
                )
        config = folder / "config.json"
        if config.is_file():
            metadata["hf_config"] = config.read_text()
        source = ModelSource("hf-directory", tensors, metadata=metadata, resources=resources)
        on_error.pop_all()
    return source
