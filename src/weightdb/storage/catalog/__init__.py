"""The catalog: SQLite (WAL) holding the relations of DESIGN.md, the single commit point, and
the only code that runs SQL against ``catalog.sqlite`` (``tests/test_layers.py`` checks)."""

from weightdb.storage.catalog.catalog import CATALOG_VERSION, Catalog
from weightdb.storage.catalog.connection import CatalogError, damaged, is_damage
from weightdb.storage.catalog.digests import RESTORE, Damage
from weightdb.storage.catalog.models import ModelInfo, TensorRow

__all__ = [
    "CATALOG_VERSION",
    "RESTORE",
    "Catalog",
    "CatalogError",
    "Damage",
    "ModelInfo",
    "TensorRow",
    "damaged",
    "is_damage",
]
