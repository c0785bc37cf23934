"""The exact tier: blocks with equal dtype, shape and bytes become one.

Import already stores each distinct block once, so this finds only what an older or crashed
writer left behind; it is lossless and applies to every model, evaluated or not.
"""

from collections import defaultdict

from weightdb.dedup.plan import Plan


def plan_exact(plan: Plan) -> None:
    workspace = plan.workspace
    twins: dict[tuple, list[int]] = defaultdict(list)
    for block_id in sorted(set(workspace.current.values())):
        block = workspace.blocks[block_id]
        twins[(block.digest, block.shape_key)].append(block_id)
    holders = workspace.holders()
    for group in twins.values():
        for duplicate in group[1:]:
            keep = next(
                (
                    b
                    for b in group
                    if b != duplicate
                    and workspace.array(b).tobytes() == workspace.array(duplicate).tobytes()
                ),
                None,
            )
            if keep is not None and keep < duplicate:
                for position in holders[duplicate]:
                    plan.replace(position, keep, 1.0)
