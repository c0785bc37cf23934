"""Build a family into a directory: check the cache, build in a staging directory, publish.

The staging directory sits beside the target, so publishing is one rename and an interrupted
build never leaves a half-written family where a complete one is expected.
"""

import shutil
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from weightdb.zoo.cache import cache_key, code_version, is_current
from weightdb.zoo.errors import ZooError
from weightdb.zoo.manifest import MANIFEST_NAME, FamilyManifest, write_manifest
from weightdb.zoo.progress import Reporter, SilentReporter

SIZES = ("small", "full")


@dataclass(frozen=True)
class BuildContext:
    """What a family builder gets: where to write, how big, which seed, its options."""

    directory: Path
    size: str
    seed: int
    options: dict[str, Any]
    reporter: Reporter = field(default_factory=SilentReporter)

    @property
    def full(self) -> bool:
        return self.size == "full"


@dataclass(frozen=True)
class BuildResult:
    """Where the family is and whether this call built it or found it cached."""

    manifest: Path
    built: bool


def _built_with() -> dict[str, str]:
    packages = ("weightdb", "torch", "onnx", "onnxruntime", "numpy", "scikit-learn")
    versions = {name: version(name) for name in packages}
    return versions | {"zoo_code": code_version(), "torch_threads": "1"}


def build_family(
    name: str,
    out: Path,
    size: str = "small",
    seed: int = 0,
    options: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> BuildResult:
    """Build family ``name`` into ``out`` unless an identical build is already there."""
    from weightdb.zoo.families import get_family

    family = get_family(name)
    if size not in SIZES:
        raise ZooError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    resolved = family.resolve_options(size, options or {})
    key = cache_key(name, size, seed, resolved)
    out = out.resolve()
    if is_current(out, key):
        return BuildResult(out / MANIFEST_NAME, built=False)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ZooError(f"{out} exists and is not a zoo family directory; choose an empty --output")
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    context = BuildContext(staging, size, seed, resolved, reporter or SilentReporter())
    import torch  # here, not at module level: `weightdb --help` should not load PyTorch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums on any machine: builds are deterministic
    try:
        parts = family.build(context)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
    manifest = FamilyManifest(
        name=name,
        size=size,
        seed=seed,
        cache_key=key,
        options=resolved,
        built_with=_built_with(),
        **parts,
    )
    write_manifest(staging, manifest)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return BuildResult(out / MANIFEST_NAME, built=True)
