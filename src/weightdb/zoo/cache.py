"""Cache keys: a build is reused when family, size, seed, options and zoo code are the same."""

import hashlib
import json
from pathlib import Path
from typing import Any

from weightdb.zoo.manifest import MANIFEST_NAME, read_manifest

_ZOO_DIR = Path(__file__).resolve().parent


def code_version() -> str:
    """Digest of the zoo's own source: any change to how families are built invalidates caches."""
    digest = hashlib.sha256()
    for path in sorted(_ZOO_DIR.rglob("*.py")):
        digest.update(path.relative_to(_ZOO_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(family: str, size: str, seed: int, options: dict[str, Any]) -> str:
    """The key recorded in family.json and compared before rebuilding."""
    fields = {
        "family": family,
        "size": size,
        "seed": seed,
        "options": options,
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def is_current(directory: Path, key: str) -> bool:
    """True when ``directory`` holds a complete build with this cache key."""
    if not (directory / MANIFEST_NAME).is_file():
        return False
    manifest = read_manifest(directory)
    if manifest.get("cache_key") != key:
        return False
    files = [manifest.get("extra", {}).get("requests")]
    for model in manifest["models"]:
        files += [model["onnx"], model["safetensors"], model["validation"], model["test"]]
    return all((directory / f).is_file() for f in files if f)
