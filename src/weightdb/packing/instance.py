"""A page-packing instance: which distinct blocks each model uses, and the page capacity.

The file format is the one of ``reference/netsdb-packing``: ``models`` (name -> block ids),
``blocks_per_page``, and optionally ``frequencies`` (name -> how often the model is served),
``name`` and ``netsdb_reference_pages``. Other keys (``distinct_blocks``,
``lower_bound_pages``) are derived, so they are recomputed rather than trusted.
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from weightdb.errors import WeightDBError

Signature = frozenset[str]
"""The set of models that use a block. Blocks with equal signatures are interchangeable."""


REFERENCE_INSTANCES = Path(__file__).parent / "reference"
"""The netsDB artifact's instances with the page counts its algorithms reach (shipped with
the package so tests, benchmarks and users have them without the shared folder)."""


class PackingError(WeightDBError):
    """A packing instance or request that cannot be solved as given."""


@dataclass(frozen=True)
class Instance:
    """Models (name -> the distinct block ids it uses, in the order given) and page capacity."""

    models: Mapping[str, tuple[int, ...]]
    blocks_per_page: int
    frequencies: Mapping[str, float] = field(default_factory=dict)
    name: str = ""
    reference_pages: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.blocks_per_page, bool) or not isinstance(self.blocks_per_page, int):
            raise PackingError(f"blocks_per_page must be an integer, not {self.blocks_per_page!r}")
        if self.blocks_per_page < 1:
            raise PackingError(f"blocks_per_page must be at least 1, not {self.blocks_per_page}")
        for model, blocks in self.models.items():
            if len(set(blocks)) != len(blocks):
                raise PackingError(f"model {model!r} lists a block id more than once")
        for model, weight in self.frequencies.items():
            if model not in self.models:
                raise PackingError(f"frequency given for unknown model {model!r}")
            if not math.isfinite(weight) or weight < 0:
                raise PackingError(f"frequency of {model!r} must be finite and >= 0, not {weight}")

    @classmethod
    def from_models(
        cls,
        models: Mapping[str, Sequence[int]],
        blocks_per_page: int,
        frequencies: Mapping[str, float] | None = None,
        name: str = "",
    ) -> "Instance":
        """The plain-Python entry point: block lists may be any sequence of distinct ints."""
        return cls(
            models={model: tuple(blocks) for model, blocks in models.items()},
            blocks_per_page=blocks_per_page,
            frequencies=dict(frequencies or {}),
            name=name,
        )

    def frequency(self, model: str) -> float:
        """How often ``model`` is served; models without a given frequency count once."""
        return self.frequencies.get(model, 1.0)

    @property
    def distinct_blocks(self) -> int:
        return len({block for blocks in self.models.values() for block in blocks})

    @property
    def lower_bound_pages(self) -> int:
        """Every distinct block is stored at least once: ceil(distinct / capacity)."""
        return -(-self.distinct_blocks // self.blocks_per_page)

    def signatures(self) -> dict[int, Signature]:
        """Block id -> the models that use it (computed once: packers and the layout that
        checks their pages all need it, and it takes a second at 200,000 blocks; read it,
        do not change it)."""
        return self._signatures

    @cached_property
    def _signatures(self) -> dict[int, Signature]:
        users: dict[int, list[str]] = {}
        for model, blocks in self.models.items():
            for block in blocks:
                users.setdefault(block, []).append(model)
        interned: dict[Signature, Signature] = {}
        return {
            block: interned.setdefault(frozenset(names), frozenset(names))
            for block, names in users.items()
        }

    def signature_groups(self) -> dict[Signature, list[int]]:
        """Blocks grouped by signature, by hashing: linear in the instance, never 2^models.

        Groups come in first-seen order; blocks within a group in first-seen order.
        """
        groups: dict[Signature, list[int]] = {}
        for block, signature in self.signatures().items():
            groups.setdefault(signature, []).append(block)
        return groups


def load_instance(path: Path) -> Instance:
    """Read an instance file, with a clear error for every way it can be wrong."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PackingError(f"instance file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PackingError(f"cannot read instance file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise PackingError(f"instance file {path} is not valid JSON: {error}") from None
    return parse_instance(data, source=str(path))


def parse_instance(data: object, source: str = "instance") -> Instance:
    """Check the JSON shape of an instance and build it."""
    if not isinstance(data, dict):
        raise PackingError(f"{source}: expected a JSON object with 'models' and 'blocks_per_page'")
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise PackingError(f"{source}: 'models' must be a non-empty object of name -> block ids")
    for model, blocks in models.items():
        if not isinstance(blocks, list) or not all(_is_int(block) for block in blocks):
            raise PackingError(f"{source}: blocks of model {model!r} must be a list of integers")
    if "blocks_per_page" not in data:
        raise PackingError(f"{source}: missing 'blocks_per_page'")
    frequencies = data.get("frequencies", {})
    if not isinstance(frequencies, dict) or not all(
        isinstance(value, int | float) and not isinstance(value, bool)
        for value in frequencies.values()
    ):
        raise PackingError(f"{source}: 'frequencies' must be an object of name -> number")
    reference = data.get("netsdb_reference_pages", {})
    return Instance(
        models={model: tuple(blocks) for model, blocks in models.items()},
        blocks_per_page=data["blocks_per_page"],
        frequencies={model: float(value) for model, value in frequencies.items()},
        name=str(data.get("name", Path(source).stem)),
        reference_pages=dict(reference) if isinstance(reference, dict) else {},
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
