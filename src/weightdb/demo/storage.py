"""The tour's storage section: one family of fine-tuned classifiers imported, then each tier
of deduplication in turn, with stored bytes against logical bytes after each, and every
model's accuracy before and after on its test split, which approximate deduplication never
sees (it decides on the validation split).
"""

from dataclasses import dataclass

from weightdb.database import Database
from weightdb.dedup import DedupReport


@dataclass(frozen=True)
class TierBytes:
    """Stored bytes after one tier, against the family's logical bytes."""

    tier: str
    meaning: str
    logical_bytes: int
    stored_bytes: int

    @property
    def ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0


def import_family(db: Database, family: dict) -> TierBytes:
    """Import every model of ``family`` (graph and weights, from its ONNX file): identical
    blocks, within a model or across models, are stored once; nothing is coded yet, whatever
    the database's lossless setting, so the exact tier is measured alone."""
    before = db.stats()
    for model in family["models"]:
        db.import_model(family["dir"] / model["onnx"], model["name"], lossless=False)
    after = db.stats()
    return TierBytes(
        "exact",
        "identical blocks stored once (always on at import)",
        after["logical_bytes"] - before["logical_bytes"],
        after["stored_bytes"] - before["stored_bytes"],
    )


def compress_family(db: Database, exact: TierBytes) -> TierBytes:
    """Code every block as a delta against its parent model's (or alone), losslessly."""
    before = db.stats()["stored_bytes"]
    db.compress()
    saved = before - db.stats()["stored_bytes"]
    return TierBytes(
        "+ lossless",
        "blocks coded against the parent model's and compressed; exports stay bit-identical",
        exact.logical_bytes,
        exact.stored_bytes - saved,
    )


def deduplicate_family(
    db: Database, family: dict, previous: TierBytes, max_drop: float
) -> tuple[TierBytes, DedupReport]:
    """Share near-identical blocks where every model's validation accuracy stays within
    ``max_drop`` of its own."""
    names = [m["name"] for m in family["models"]]
    report = db.deduplicate(names, eval_spec=family["dir"] / "family.json", max_drop=max_drop)
    saved = report.stored_bytes_before - report.stored_bytes_after
    tier = TierBytes(
        "+ approximate",
        f"near-identical blocks shared, each model within {max_drop:.0%} of its validation "
        "accuracy",
        previous.logical_bytes,
        previous.stored_bytes - saved,
    )
    return tier, report
