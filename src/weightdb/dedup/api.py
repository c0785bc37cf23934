"""``deduplicate``: plan with the chosen method in memory, then commit once.

The writer lock is held for the whole run, so the snapshot the planner works on is the state
the commit changes. Planning never writes; a crash before the commit leaves the database as it
was.
"""

import dataclasses
import time
from collections.abc import Mapping

from weightdb.dedup.baselines import MistiqueMatcher, pairwise_matcher
from weightdb.dedup.commit import Quality, commit_plan
from weightdb.dedup.errors import DedupParameterError, EvalSpecError
from weightdb.dedup.evalspec import SPLITS, EvalSpec, Evaluator, load_eval_spec
from weightdb.dedup.exact import plan_exact
from weightdb.dedup.gate import Gate
from weightdb.dedup.group_test import (
    RESOLVABLE_EXAMPLES,
    GroupTestParams,
    resolvable,
    run_group_test,
)
from weightdb.dedup.metrics import Measurement
from weightdb.dedup.netsdb import NetsdbParams, netsdb_matcher, run_sequential
from weightdb.dedup.plan import Plan
from weightdb.dedup.report import DedupReport, ModelReport
from weightdb.dedup.workspace import Workspace
from weightdb.progress import Progress, silent
from weightdb.registry import Registry
from weightdb.storage.store import Store

METHODS: Registry[type | None] = Registry(
    {
        "exact": None,
        "netsdb": NetsdbParams,
        "group-test": GroupTestParams,
        "mistique": NetsdbParams,
        "pairwise": NetsdbParams,
    },
    aliases={"weightdb": "group-test"},
)
"""Method name -> the dataclass of its parameters (exact takes none); ``weightdb`` is the old
name of ``group-test``."""


def deduplicate(
    store: Store,
    models: list[str] | None = None,
    eval_spec: EvalSpec = None,
    max_drop: float | Mapping[str, float] = 0.01,
    method: str = "group-test",
    progress: Progress | None = None,
    **params,
) -> "DedupReport":
    """Deduplicate ``models`` (default: all) and commit the result in one transaction.

    ``max_drop`` is each model's budget in metric units (0.01 = one accuracy point; for MSE a
    relative increase), one number or a dict per model. Models the eval spec does not cover
    only take part in exact deduplication. ``params`` are the method's parameters (see
    ``NetsdbParams`` and ``GroupTestParams``). ``progress`` gets a stage per phase.
    """
    start = time.perf_counter()
    method, progress = METHODS.canonical(method), progress or silent
    options = _options(method, params)
    with store.writer_lock:
        store.collect_garbage()
        everyone = store.catalog.model_names()
        for name in models or ():
            store.catalog.model_id(name)  # raises naming the stored models
        selected = everyone if models is None else list(models)
        evaluators = load_eval_spec(eval_spec, selected)
        _refuse_unmeasurable(store, evaluators)
        budgets = _budgets(max_drop, evaluators)
        workspace = Workspace(store, everyone)
        plan = Plan(workspace)
        plan_exact(plan)
        approximate = method != "exact" and bool(evaluators)
        before = (
            _measure_all(workspace, evaluators, progress, "measuring before") if approximate else {}
        )
        gate, notes = None, []
        if approximate:
            gate, notes = _plan_approximate(plan, method, options, evaluators, budgets, progress)
        after = (
            _measure_all(workspace, evaluators, progress, "measuring after") if approximate else {}
        )
        final = plan.final()
        quality = {
            m: Quality(
                evaluators[m].metric,
                {(s, "before"): before[m][s] for s in SPLITS}
                | {(s, "after"): after[m][s] for s in SPLITS},
            )
            for m in before
        }
        blocks_before = len(set(workspace.original.values()))
        stored_before = sum(b.nbytes for b in workspace.blocks.values())
        run_id, stored_after = None, stored_before
        if final or quality:
            parameters = {"budgets": budgets, **dataclasses.asdict(options)} if options else {}
            run_id, stored_after = commit_plan(store, workspace, final, method, parameters, quality)
        report = DedupReport(
            method=method,
            run_id=run_id,
            stored_bytes_before=stored_before,
            stored_bytes_after=stored_after,
            distinct_blocks_before=blocks_before,
            distinct_blocks_after=len(set(workspace.current.values())),
            exact_only=not approximate,
            evaluations=gate.evaluations if gate else 0,
            seconds=time.perf_counter() - start,
            notes=notes,
        )
    changed = {m: sum(1 for r in final if r.position.model == m) for m in evaluators}
    for model in before:
        report.models[model] = ModelReport(
            metric=evaluators[model].metric,
            budget=budgets[model],
            validation_before=before[model]["validation"].value,
            validation_after=after[model]["validation"].value,
            test_before=before[model]["test"].value,
            test_after=after[model]["test"].value,
            blocks_replaced=changed[model],
        )
    if not evaluators:
        report.notes.append("no eval spec covers these models: only exact deduplication ran")
    unresolved = sorted(set(evaluators) - set(gate.evaluators)) if gate else []
    if unresolved:
        report.notes.append(
            f"budget smaller than {RESOLVABLE_EXAMPLES} validation examples for "
            f"{', '.join(unresolved)}: changed only exactly (give a larger budget or a larger "
            "validation split)"
        )
    uncovered = sorted(set(selected) - set(evaluators))
    if evaluators and uncovered:
        report.notes.append(f"no eval spec for {', '.join(uncovered)}: changed only exactly")
    return report


def _options(method: str, params: dict):
    if method not in METHODS:
        raise DedupParameterError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "exact":
        if params:
            raise DedupParameterError(f"method exact takes no parameters (got {sorted(params)})")
        return None
    kind = METHODS[method]
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise DedupParameterError(
            f"method {method} has no parameter {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(names))}"
        )
    options = kind(**params)
    if getattr(options, "criterion", "losses") not in ("losses", "flips"):
        raise DedupParameterError(
            f"criterion must be 'losses' or 'flips', got {options.criterion!r}"
        )
    return options


def _budgets(max_drop, evaluators: dict[str, Evaluator]) -> dict[str, float]:
    if isinstance(max_drop, Mapping):
        budgets = {m: float(max_drop.get(m, 0.0)) for m in evaluators}
    else:
        budgets = dict.fromkeys(evaluators, float(max_drop))
    bad = {m: b for m, b in budgets.items() if not 0.0 <= b < 1.0}
    if bad:
        raise DedupParameterError(
            f"accuracy budgets must be in [0, 1) (0.01 = one point); got {bad}"
        )
    return budgets


def _measure_all(workspace, evaluators, progress, stage: str) -> dict[str, dict[str, Measurement]]:
    result = {}
    for model in sorted(evaluators):
        result[model] = {s: workspace.measure(model, evaluators[model], s) for s in SPLITS}
        progress(1, len(evaluators), stage)
    return result


def _plan_approximate(
    plan, method, options, evaluators, budgets, progress
) -> tuple[Gate, list[str]]:
    """The gate the method decided with, and the method's notes for the report."""
    workspace = plan.workspace
    if method == "group-test":
        verifiable = {m: e for m, e in evaluators.items() if resolvable(e, budgets[m])}
        gate = Gate(workspace, verifiable, budgets, "validation", options.criterion, options.margin)
        return gate, run_group_test(plan, gate, options, progress)
    gate = Gate(workspace, evaluators, budgets, options.decision_split)
    matcher = {
        "netsdb": netsdb_matcher,
        "pairwise": pairwise_matcher,
        "mistique": lambda ws, opts: MistiqueMatcher(ws, opts.seed),
    }[method](workspace, options)
    run_sequential(plan, gate, matcher, options.eval_step, progress)
    return gate, []


def _refuse_unmeasurable(store: Store, evaluators: Mapping[str, Evaluator]) -> None:
    """An accuracy can only be measured by running the model: refuse a spec naming one stored
    without a graph (weights only), before any work."""
    for name in evaluators:
        if store.graph(name) is None:
            raise EvalSpecError(
                f"the eval spec measures model {name!r}, which is stored without a graph, so "
                "it cannot run; import it with its graph (`weightdb import WEIGHTS --graph "
                "MODEL.onnx`) or leave it out of the spec"
            )
