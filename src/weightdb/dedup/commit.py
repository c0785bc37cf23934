"""Committing a plan: one catalog transaction, so a crash leaves the old layout or the new.

The transaction repoints the replaced positions, fixes reference counts, records every
replacement and each evaluated model's quality before and after, deletes blocks nothing
points at any more (and pages left empty) and bumps the layout generation so prepared models
recompile. Page files are removed only after the commit, by the usual garbage collection.
"""

from dataclasses import dataclass

from weightdb.dedup.metrics import Measurement
from weightdb.dedup.plan import Replacement
from weightdb.dedup.workspace import Workspace
from weightdb.storage.store import Store


@dataclass(frozen=True)
class Quality:
    metric: str
    measurements: dict[tuple[str, str], Measurement]  # (split, "before" | "after")


def commit_plan(
    store: Store,
    workspace: Workspace,
    replacements: list[Replacement],
    method: str,
    parameters: dict,
    quality: dict[str, Quality],
) -> tuple[int, int]:
    """Apply ``replacements`` atomically; return the run id and the stored bytes after."""
    catalog = store.catalog
    model_ids = catalog.model_ids()
    with catalog.transaction():
        run_id, stored_after, retired = catalog.commit_dedup(
            method,
            parameters,
            [
                (
                    r.position.tensor_id,
                    r.position.row,
                    r.position.col,
                    r.old_block,
                    r.new_block,
                    workspace.blocks[r.old_block].digest,
                    workspace.blocks[r.old_block].nbytes,
                    r.similarity,
                )
                for r in replacements
            ],
            [
                (model_ids[model], q.metric, m.value, f"{split} {when} dedup run {{run}}")
                for model, q in quality.items()
                for (split, when), m in q.measurements.items()
            ],
        )
    store.pool.discard(retired)
    store.collect_garbage()
    return run_id, stored_after
