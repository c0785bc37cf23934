"""The group-test method (``group-test``, once ``weightdb``, the default): cluster similar
blocks across all models, keep each cluster's medoid, and accept replacements by group testing
against every affected model's budget.

1. Candidates: per block shape, an L2 LSH over unit-normalised blocks, then the exact relative
   distance ||a - b|| / max(||a||, ||b||) (scale-aware: a layer of small weights is not
   "similar" to everything, as under an absolute tolerance).
2. Clusters: blocks in order of use (positions pointing at them) each gather their unassigned
   neighbours within ``max_distance``; the representative is the cluster's medoid weighted by
   use, so the block most models already read (e.g. a frozen pretrained layer) stays. Blocks
   that a model without an eval spec uses are never replaced (but may represent a cluster).
3. Proposals "member -> medoid" are sorted by estimated damage: the RMS change relative to
   the layer's mean absolute weight.
4. Group testing: a batch of proposals is applied to the workspace and every model reading any
   replaced block is re-validated; a failing batch is undone (plan and weights) and bisected,
   so a harmful proposal costs O(log n) evaluations instead of ending the run.
5. The gate works on the validation split and counts per-example losses only, so gains on
   some examples cannot hide losses on others, against ``margin`` x each model's budget; the
   test split is only measured for the report.
6. Only what validation can check is kept. A model whose budget is finer than its validation
   split can resolve (``resolvable``) is only deduplicated exactly. A replacement that changes
   an embedding row no validation example reads is invisible to validation (``coverage``): such
   replacements are planned on one half of validation and the plan is kept only if the other,
   held-out half, measured once, stays within budget (``heldout``); otherwise only replacements
   whose changed rows validation reads are made.
"""

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from weightdb.dedup.coverage import UNKNOWN, changed_rows, gathered_rows
from weightdb.dedup.early_exit import EarlyExitGate
from weightdb.dedup.evalspec import Evaluator
from weightdb.dedup.gate import Gate
from weightdb.dedup.heldout import AUDIT, PLANNING, ValidationHalf, halves
from weightdb.dedup.lsh import L2LSH
from weightdb.dedup.magnitude import relative_damage
from weightdb.dedup.metrics import parse_metric
from weightdb.dedup.plan import Plan
from weightdb.dedup.similarity import relative_distance
from weightdb.dedup.workspace import Position, Workspace
from weightdb.progress import Progress

RESOLVABLE_EXAMPLES = 3
"""A budget must amount to this many validation examples. With no loss among n examples the 95%
upper confidence bound of the loss rate is about 3 / n (the rule of three), so a smaller budget
cannot be verified on that split: a plan that passes it still breaks the budget on test often."""


def resolvable(evaluator: Evaluator, budget: float) -> bool:
    """Whether validation can verify ``budget`` for this model (see RESOLVABLE_EXAMPLES); a
    callable evaluator measures its own data and MSE budgets are relative, so both are trusted."""
    inputs = evaluator.inputs("validation")
    if inputs is None or parse_metric(evaluator.metric).name == "mse":
        return True
    examples = len(next(iter(inputs.values())))
    return budget * examples >= RESOLVABLE_EXAMPLES - 1e-9


@dataclass(frozen=True)
class GroupTestParams:
    max_distance: float = 1.0  # relative distance within which blocks may share a medoid
    margin: float = 0.5  # share of each model's budget validation losses may use
    criterion: str = "losses"  # or "flips": any change of predicted class counts (safer)
    extrapolate: bool = True  # change embedding rows validation never reads, audited (heldout)
    max_evaluations: int = 1000  # per group test; a run makes one, or two (see heldout)
    lsh_r: float = 0.5  # bucket width on unit-normalised blocks
    lsh_bands: int = 32
    lsh_rows: int = 4
    seed: int = 0


@dataclass(frozen=True)
class Proposal:
    member: int
    representative: int
    distance: float
    damage: float


def run_group_test(
    plan: Plan, gate: Gate, params: GroupTestParams, progress: Progress
) -> list[str]:
    """Apply the accepted proposals to ``plan``; returns notes for the report.

    Decides with an ``EarlyExitGate`` around ``gate`` (the same verdicts, fewer examples run)
    and leaves its count of evaluations on ``gate``."""
    outer, gate = gate, EarlyExitGate.around(gate)
    try:
        return _run(plan, gate, params, progress)
    finally:
        outer.evaluations = gate.evaluations


def _run(plan: Plan, gate: Gate, params: GroupTestParams, progress: Progress) -> list[str]:
    workspace = plan.workspace
    holders = workspace.holders()
    proposals = _proposals(workspace, set(gate.evaluators), params, progress)
    proposals.sort(key=lambda p: (p.damage, p.member))
    coverage = {
        model: gathered_rows(workspace.graph(model), evaluator.inputs("validation"))
        for model, evaluator in gate.evaluators.items()
    }
    verifiable = [p for p in proposals if _validation_sees(p, workspace, holders, coverage)]
    split = _splittable(gate, params.seed) if params.extrapolate else {}
    relaxed = {model: {} if model in split else rows for model, rows in coverage.items()}
    extrapolated = [p for p in proposals if _validation_sees(p, workspace, holders, relaxed)]
    notes: list[str] = []
    if len(extrapolated) > len(verifiable):
        accepted, note = _extrapolate(plan, gate, split, extrapolated, params, progress)
        notes.append(note)
        if accepted:
            return notes
    _group_test(plan, gate, verifiable, params, progress, "validating")
    return notes


def _splittable(gate: Gate, seed: int) -> dict[str, tuple[ValidationHalf, ValidationHalf]]:
    """Model -> (planning, audit) halves of its validation split, for every model whose budget
    each half still resolves."""
    result = {}
    for model, evaluator in gate.evaluators.items():
        parts = halves(evaluator, seed)
        if parts and all(resolvable(part, gate.budgets[model]) for part in parts):
            result[model] = parts
    return result


def _extrapolate(
    plan: Plan,
    gate: Gate,
    split: dict[str, tuple[ValidationHalf, ValidationHalf]],
    proposals: list[Proposal],
    params: GroupTestParams,
    progress: Progress,
) -> tuple[bool, str]:
    """Group-test ``proposals``, which may change embedding rows validation never reads, on the
    planning halves, then measure the plan once on the audit halves (see ``heldout``); a plan
    any audit rejects is undone whole. Returns whether it was kept, and a note saying why."""
    workspace = plan.workspace
    planning = dataclasses.replace(
        gate,
        evaluators={m: split[m][PLANNING] if m in split else e for m, e in gate.evaluators.items()},
        evaluations=0,
        baselines={},
    )
    audit = dataclasses.replace(
        gate, evaluators={m: split[m][AUDIT] for m in split}, evaluations=0, baselines={}
    )
    audited = sorted({m for p in proposals for m in workspace.users[p.member]} & split.keys())
    for model in audited:
        audit.baseline(model)
    mark = plan.mark()
    _group_test(plan, planning, proposals, params, progress, "validating on half")
    changes = {model: audit.change(model) for model in sorted(plan.models(mark) & split.keys())}
    gate.evaluations += planning.evaluations + audit.evaluations
    if not changes:
        plan.undo_to(mark)
        return False, (
            "planned on half of validation, no replacement that changes unread embedding rows "
            "passed: only replacements validation reads were made"
        )
    worst = max(changes.values())
    failed = [model for model, change in changes.items() if not audit.within(model, change)]
    if not failed:
        return True, (
            f"changed embedding rows validation does not read for {', '.join(changes)}:"
            f" planned on half of validation, the held-out half lost at most {worst:.4f}"
        )
    plan.undo_to(mark)
    return False, (
        f"the held-out half of validation rejected changing unread embedding rows for "
        f"{', '.join(failed)} (lost {worst:.4f}): only replacements validation reads were made"
    )


def _group_test(
    plan: Plan,
    gate: Gate,
    proposals: list[Proposal],
    params: GroupTestParams,
    progress: Progress,
    stage: str,
) -> None:
    """Apply ``proposals`` in batches, keeping each batch that ``gate`` passes and bisecting
    each that fails; reports proposals decided to ``progress`` as ``stage``."""
    holders = plan.workspace.holders()
    for model in sorted({m for p in proposals for m in plan.workspace.users[p.member]}):
        gate.baseline(model)
    limit = gate.evaluations + params.max_evaluations

    def attempt(batch: list[Proposal]) -> None:
        if gate.evaluations >= limit:
            return
        mark = plan.mark()
        for proposal in batch:
            for position in holders[proposal.member]:
                plan.replace(position, proposal.representative, 1.0 - proposal.distance)
        if gate.passes(plan.models(mark)):
            progress(len(batch), len(proposals), stage)
            return
        plan.undo_to(mark)
        if len(batch) == 1:
            progress(1, len(proposals), stage)
            return
        half = len(batch) // 2
        attempt(batch[:half])
        attempt(batch[half:])

    if proposals:
        attempt(proposals)


def _validation_sees(
    proposal: Proposal,
    workspace: Workspace,
    holders: dict[int, list[Position]],
    coverage: dict[str, dict[str, np.ndarray | None]],
) -> bool:
    """Whether every model's validation split reads each embedding row the proposal changes."""
    changed = None
    for position in holders[proposal.member]:
        if position.tensor not in coverage[position.model]:
            continue  # a dense weight: every example reads all of it
        if changed is None:
            member = workspace.array(proposal.member)
            changed = changed_rows(member, workspace.array(proposal.representative))
        read = coverage[position.model][position.tensor]
        if changed.size and read is UNKNOWN:
            return False
        layout = workspace.layout(position)
        table_rows = layout.matrix_shape[0]
        read = np.where(read < 0, read + table_rows, read)
        if not np.isin(position.row * layout.block_rows + changed, read).all():
            return False
    return True


def _proposals(
    workspace: Workspace, evaluated: set[str], params: GroupTestParams, progress: Progress
) -> list[Proposal]:
    holders = workspace.holders()
    uses = {block_id: len(positions) for block_id, positions in holders.items()}
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for block_id in sorted(uses):
        by_shape[workspace.blocks[block_id].shape_key].append(block_id)
    layer_scale = _layer_scales(workspace, holders)
    proposals = []
    for block_ids in by_shape.values():
        changeable = {b for b in block_ids if workspace.users[b] <= evaluated}
        if changeable:
            neighbours = _neighbours(workspace, block_ids, params)
            for cluster in _clusters(block_ids, neighbours, uses, changeable):
                proposals += _cluster_proposals(
                    workspace, cluster, uses, changeable, layer_scale, holders
                )
        progress(1, len(by_shape), "clustering")
    return proposals


def _layer_scales(workspace: Workspace, holders) -> dict[int, float]:
    """Block id -> mean absolute weight of the (first) tensor that holds it."""
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
    for position, block_id in workspace.current.items():
        array = workspace.array(block_id)
        sums[position.tensor_id][0] += float(np.abs(array).sum())
        sums[position.tensor_id][1] += array.size
    return {
        block_id: sums[positions[0].tensor_id][0] / max(sums[positions[0].tensor_id][1], 1)
        for block_id, positions in holders.items()
    }


def _neighbours(workspace: Workspace, block_ids: list[int], params: GroupTestParams):
    block = workspace.blocks[block_ids[0]]
    lsh = L2LSH(
        block.rows * block.cols, params.lsh_r, params.lsh_bands, params.lsh_rows, params.seed
    )
    units = {}
    for block_id in block_ids:
        array = workspace.array(block_id).astype(np.float64).ravel()
        units[block_id] = array / max(float(np.linalg.norm(array)), 1e-30)
        lsh.insert(block_id, units[block_id])
    neighbours: dict[int, dict[int, float]] = defaultdict(dict)
    for block_id in block_ids:
        for other in lsh.query(units[block_id]):
            if other <= block_id or other in neighbours[block_id]:
                continue
            distance = relative_distance(workspace.array(block_id), workspace.array(other))
            if distance <= params.max_distance:
                neighbours[block_id][other] = neighbours[other][block_id] = distance
    return neighbours


def _clusters(block_ids, neighbours, uses, changeable) -> list[list[int]]:
    """Star clusters: the most used unassigned block gathers its unassigned neighbours."""
    assigned: set[int] = set()
    clusters = []
    for center in sorted(block_ids, key=lambda b: (b in changeable, -uses[b], b)):
        if center in assigned or not neighbours.get(center):
            continue
        joining = sorted(b for b in neighbours[center] if b not in assigned and b in changeable)
        members = [center, *joining]
        if len(members) > 1:
            assigned.update(members)
            clusters.append(members)
    return clusters


def _cluster_proposals(workspace, cluster, uses, changeable, layer_scale, holders):
    fixed = [b for b in cluster if b not in changeable]
    if fixed:
        medoid = fixed[0]
    else:
        arrays = {b: workspace.array(b) for b in cluster}

        def cost(candidate: int) -> float:
            return sum(
                uses[b] * relative_distance(arrays[b], arrays[candidate])
                for b in cluster
                if b != candidate
            )

        medoid = min(cluster, key=lambda b: (cost(b), b))
    representative = workspace.array(medoid)
    return [
        Proposal(
            member,
            medoid,
            relative_distance(workspace.array(member), representative),
            relative_damage(workspace.array(member), representative, layer_scale[member]),
        )
        for member in cluster
        if member != medoid and member in changeable
    ]
