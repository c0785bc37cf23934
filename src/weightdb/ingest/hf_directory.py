"""Hugging Face style model folders: one ``model.safetensors`` or shards plus an index JSON."""

from contextlib import ExitStack
from pathlib import Path

from weightdb.errors import SourceFormatError
from weightdb.ingest import declared
from weightdb.ingest.safetensors_format import open_safetensors
from weightdb.ingest.source import ModelSource

INDEX_NAME = "model.safetensors.index.json"


def _inside(folder: Path, path: Path, what: str) -> Path:
    """``path`` if it is a file that really lies in ``folder``: a symlink out is refused."""
    if folder.resolve() != path.resolve().parent:
        raise SourceFormatError(
            f"{what} {path.name!r} in {folder} links outside the folder; weightdb reads only "
            "files inside a model folder, so copy the file in"
        )
    return path


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
    return _inside(folder, path, "shard")


def _read_text(folder: Path, path: Path) -> str:
    try:
        return _inside(folder, path, "file").read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SourceFormatError(f"{path} cannot be read as text: {error}") from None


def _weight_map(folder: Path, index_path: Path) -> dict[str, str]:
    what = f"{index_path} is not a valid index"
    index = declared.parse_json(_read_text(folder, index_path), what)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise SourceFormatError(f"{what}: it needs an object with a weight_map object")
    return weight_map


def open_hf_directory(folder: Path) -> ModelSource:
    index_path = folder / INDEX_NAME
    if index_path.is_file():
        weight_map = _weight_map(folder, index_path)
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
            metadata["hf_config"] = _read_text(folder, config)
        source = ModelSource("hf-directory", tensors, metadata=metadata, resources=resources)
        on_error.pop_all()
    return source
