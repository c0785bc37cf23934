"""The registry of model families: name -> how to build it and which options it takes."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weightdb.zoo.build import BuildContext
from weightdb.zoo.errors import ZooError

Builder = Callable[[BuildContext], dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """A buildable family; ``build`` returns the family-specific fields of family.json."""

    name: str
    summary: str
    build: Builder
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resolve_options(self, size: str, given: dict[str, Any]) -> dict[str, Any]:
        """This size's defaults overridden by ``given``; unknown options are an error."""
        defaults = dict(self.defaults.get(size, {}))
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            known = ", ".join(sorted(defaults)) or "none"
            raise ZooError(f"family {self.name} has no option {unknown[0]!r} (options: {known})")
        return defaults | {k: v for k, v in given.items() if v is not None}


def _registry() -> dict[str, Family]:
    from weightdb.zoo.families import digits_cnn, minilm_finetunes, scale, text_embedding, xml_mlp

    modules = (digits_cnn, text_embedding, minilm_finetunes, xml_mlp, scale)
    return {module.FAMILY.name: module.FAMILY for module in modules}


def families() -> list[Family]:
    """All families, in the order `weightdb zoo list` shows them."""
    return list(_registry().values())


def get_family(name: str) -> Family:
    """The family called ``name``, or an error listing the ones that exist."""
    registry = _registry()
    if name not in registry:
        raise ZooError(f"unknown family {name!r}: choose one of {', '.join(registry)}")
    return registry[name]
