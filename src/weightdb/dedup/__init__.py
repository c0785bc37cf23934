"""Deduplication across models: exact, and approximate under per-model accuracy budgets."""

from weightdb.dedup.api import METHODS, deduplicate
from weightdb.dedup.report import DedupReport, ModelReport
from weightdb.storage.savings import savings_by_tier

__all__ = ["METHODS", "DedupReport", "ModelReport", "deduplicate", "savings_by_tier"]
