"""Deduplication across models: exact, and approximate under per-model accuracy budgets.

The public entry point is ``Database.deduplicate``; ``deduplicate`` here works on the store.
"""

from weightdb.dedup.api import METHODS, deduplicate
from weightdb.dedup.report import DedupReport, ModelReport

__all__ = ["METHODS", "DedupReport", "ModelReport", "deduplicate"]
