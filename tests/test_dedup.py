"""Deduplication: budgets hold on test, undo is complete, crashes leave the old state, models
without an eval spec are never changed approximately, bad specs are clear errors.

One digits-cnn family (small) is built per session, imported once and copied per test."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import weightdb
from weightdb.cli import app
from weightdb.dedup.commit import commit_plan
from weightdb.dedup.early_exit import EarlyExitGate
from weightdb.dedup.errors import DedupParameterError, EvalSpecError
from weightdb.dedup.evalspec import load_eval_spec
from weightdb.dedup.gate import Gate
from weightdb.dedup.metrics import parse_metric
from weightdb.dedup.plan import Plan
from weightdb.dedup.workspace import Workspace
from weightdb.storage.settings import Settings
from weightdb.zoo.build import build_family

BLOCKS = Settings()  # the defaults: fc1 of these CNNs spans two blocks


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dedup-zoo") / "digits-cnn"
    build_family("digits-cnn", folder, "small", seed=0)
    return folder


@pytest.fixture(scope="session")
def imported(family: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dedup-db") / "db"
    with weightdb.connect(path, settings=BLOCKS) as db:
        for model in _manifest(family)["models"]:
            db.import_model(family / model["onnx"], model["name"])
    return path


@pytest.fixture
def db_path(imported: Path, tmp_path: Path) -> Path:
    path = tmp_path / "db"
    shutil.copytree(imported, path)
    return path


def _manifest(family: Path) -> dict:
    return json.loads((family / "family.json").read_text())


def _exports(path: Path, out: Path) -> dict[str, bytes]:
    out.mkdir(parents=True, exist_ok=True)
    with weightdb.connect(path, create=False) as db:
        return {
            m.name: db.export_model(m.name, out / f"{m.name}.safetensors").read_bytes()
            for m in db.models()
        }


def _replaced_models(path: Path) -> set[str]:
    with weightdb.connect(path, create=False) as db:
        rows = db.store.catalog.conn.execute(
            "SELECT DISTINCT m.name FROM block_replacements r JOIN tensors t USING (tensor_id) "
            "JOIN models m USING (model_id)"
        )
        return {name for (name,) in rows}


def test_budget_holds_on_test_for_every_model(db_path: Path, family: Path):
    with weightdb.connect(db_path, create=False) as db:
        report = db.deduplicate(eval_spec=family / "family.json", max_drop=0.02)
        stats = db.stats()
    assert report.stored_bytes_after < report.stored_bytes_before
    assert stats["stored_bytes"] == report.stored_bytes_after
    assert set(report.models) == {m["name"] for m in _manifest(family)["models"]}
    assert sum(m.blocks_replaced for m in report.models.values()) > 0
    for model in report.models.values():
        assert model.test_before - model.test_after <= 0.02 + 1e-9
        assert model.validation_before - model.validation_after <= 0.02 + 1e-9


def test_commit_records_replacements_quality_and_savings(db_path: Path, family: Path):
    with weightdb.connect(db_path, create=False) as db:
        report = db.deduplicate(eval_spec=family / "family.json", max_drop=0.02)
        conn = db.store.catalog.conn
        replaced = conn.execute(
            "SELECT COUNT(*) FROM block_replacements WHERE run_id = ?", (report.run_id,)
        ).fetchone()[0]
        datasets = {d for (d,) in conn.execute("SELECT dataset FROM quality")}
        refs_ok = conn.execute(
            "SELECT COUNT(*) FROM blocks b WHERE refs != (SELECT COUNT(*) FROM tensor_blocks tb "
            "WHERE tb.block_id = b.block_id)"
        ).fetchone()[0]
        savings = db.store.catalog.savings_by_tier()
        stats = db.stats()
        assert db.verify() > 0
    assert replaced == sum(m.blocks_replaced for m in report.models.values())
    run = report.run_id
    assert datasets == {
        f"{s} {w} dedup run {run}" for s in ("validation", "test") for w in ("before", "after")
    }
    assert refs_ok == 0
    assert savings["approximate_saved_bytes"] == report.stored_bytes_before - stats["stored_bytes"]
    assert savings["exact_saved_bytes"] == stats["logical_bytes"] - report.stored_bytes_before


def test_forced_violation_is_undone_completely(db_path: Path, tmp_path: Path):
    before = _exports(db_path, tmp_path / "before")
    with weightdb.connect(db_path, create=False) as db:
        name = db.models()[0].name
        inputs = {"pixels": np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)}
        reference = next(iter(db.predict(name, inputs).values()))

        def exact(predict, split):  # any change at all costs the whole metric
            return float(np.array_equal(predict(inputs), reference))

        report = db.deduplicate(models=[name], eval_spec={name: exact}, max_drop=0.01)
    assert report.models[name].blocks_replaced == 0
    assert report.evaluations > 1  # proposals were tried, and every one undone
    assert _exports(db_path, tmp_path / "after") == before
    assert _replaced_models(db_path) == set()


def test_plan_undo_restores_mapping_and_weights(db_path: Path):
    with weightdb.connect(db_path, create=False) as db:
        models = [m.name for m in db.models()]
        workspace = Workspace(db.store, models)
        original = {n: t.read() for n, t in workspace.tensors(models[0]).items()}
        plan = Plan(workspace)
        positions = workspace.positions(models[0])
        other = workspace.original[workspace.positions(models[1])[0]]
        shape = workspace.blocks[other].shape_key
        mark = plan.mark()
        for position in positions:
            if workspace.blocks[workspace.current[position]].shape_key == shape:
                plan.replace(position, other, 0.0)
        assert plan.final()
        assert any(
            not np.array_equal(t.read(), original[n])
            for n, t in workspace.tensors(models[0]).items()
        )
        plan.undo_to(mark)
        assert workspace.current == workspace.original
        assert plan.replacements == [] and plan.final() == []
        for n, t in workspace.tensors(models[0]).items():
            assert np.array_equal(t.read(), original[n])


def test_models_without_eval_spec_are_never_changed_approximately(
    db_path: Path, family: Path, tmp_path: Path
):
    manifest = _manifest(family)
    covered = manifest["models"][:3]
    spec = {**manifest, "models": covered}
    for model in covered:
        for split in ("validation", "test"):
            model[split] = str(family / model[split])
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    before = _exports(db_path, tmp_path / "before")
    with weightdb.connect(db_path, create=False) as db:
        report = db.deduplicate(eval_spec=tmp_path / "spec.json", max_drop=0.035)
    after = _exports(db_path, tmp_path / "after")
    names = {m["name"] for m in covered}
    assert set(report.models) == names
    assert _replaced_models(db_path) <= names
    for name in before.keys() - names:
        assert after[name] == before[name]
    assert any("no eval spec for" in note for note in report.notes)


def test_identical_models_collapse_to_one_copy(family: Path, tmp_path: Path):
    onnx_file = family / _manifest(family)["models"][0]["onnx"]
    with weightdb.connect(tmp_path / "db", settings=BLOCKS) as db:
        db.import_model(onnx_file, "a")
        one = db.stats()["stored_bytes"]
        db.import_model(onnx_file, "b")
        report = db.deduplicate()
        assert db.stats()["stored_bytes"] == one == report.stored_bytes_after
    assert report.exact_only and report.models == {}
    assert report.notes == ["no eval spec covers these models: only exact deduplication ran"]


def test_exact_tier_merges_twins_an_older_writer_left(db_path: Path, tmp_path: Path):
    before = _exports(db_path, tmp_path / "before")
    with weightdb.connect(db_path, create=False) as db:
        conn = db.store.catalog.conn
        # Simulate a writer without exact dedup: give one model's blocks fresh ids of the same
        # content (same pages and slots), as a duplicate copy would be.
        with db.store.catalog.transaction():
            rows = conn.execute(
                "SELECT DISTINCT tb.block_id FROM tensor_blocks tb JOIN tensors t USING "
                "(tensor_id) WHERE t.model_id = (SELECT MIN(model_id) FROM models)"
            ).fetchall()
            top = conn.execute("SELECT MAX(block_id) FROM blocks").fetchone()[0]
            for offset, (block_id,) in enumerate(rows, 1):
                conn.execute(
                    "INSERT INTO blocks SELECT ?, digest, dtype, rows, cols, nbytes, page_id, "
                    "slot, 1 FROM blocks WHERE block_id = ?",
                    (top + offset, block_id),
                )
                conn.execute(
                    "UPDATE tensor_blocks SET block_id = ? WHERE block_id = ? AND tensor_id IN "
                    "(SELECT tensor_id FROM tensors WHERE model_id = "
                    "(SELECT MIN(model_id) FROM models))",
                    (top + offset, block_id),
                )
            conn.execute(
                "UPDATE blocks SET refs = (SELECT COUNT(*) FROM tensor_blocks tb "
                "WHERE tb.block_id = blocks.block_id)"
            )
            conn.execute("DELETE FROM blocks WHERE refs = 0")
            # ... and, as every writer does, record the digests of the rows it changed.
            db.store.catalog.record_digests(
                [m for (m,) in conn.execute("SELECT model_id FROM models")]
            )
        doubled = db.stats()["distinct_blocks"]
        report = db.deduplicate(method="exact")
        assert db.stats()["distinct_blocks"] < doubled
    assert report.exact_only
    assert _exports(db_path, tmp_path / "after") == before


def test_dedup_after_a_copying_pack_gives_the_same_models(
    db_path: Path, family: Path, tmp_path: Path
):
    unpacked = tmp_path / "unpacked"
    shutil.copytree(db_path, unpacked)
    for path in (db_path, unpacked):
        with weightdb.connect(path, create=False) as db:
            if path == db_path:
                assert db.pack("weightdb", force=True).copied_blocks > 0
            assert db.deduplicate(eval_spec=family / "family.json", max_drop=0.035).run_id
            assert db.verify() == db.stats()["pages"]
    assert _replaced_models(db_path)
    assert _exports(db_path, tmp_path / "packed") == _exports(unpacked, tmp_path / "plain")


def test_replacing_a_copied_block_drops_its_copy(db_path: Path, tmp_path: Path):
    """The stale copy goes in the commit; the model reads the new block, the others are
    untouched."""
    with weightdb.connect(db_path, create=False) as db:
        db.pack("weightdb", force=True)
        conn = db.store.catalog.conn
        model, block_id = conn.execute(
            "SELECT m.name, c.block_id FROM block_copies c JOIN models m USING (model_id) "
            "ORDER BY m.name, c.block_id LIMIT 1"
        ).fetchone()
    before = _exports(db_path, tmp_path / "before")
    with weightdb.connect(db_path, create=False) as db, db.store.writer_lock:
        conn = db.store.catalog.conn
        workspace = Workspace(db.store, [m.name for m in db.models()])
        shape = workspace.blocks[block_id].shape_key
        other = next(
            b for b, block in workspace.blocks.items() if block.shape_key == shape and b != block_id
        )
        plan = Plan(workspace)
        for position in workspace.positions(model):
            if workspace.current[position] == block_id:
                plan.replace(position, other, 0.0)
        expected = {name: t.read() for name, t in workspace.tensors(model).items()}
        commit_plan(db.store, workspace, plan.final(), "weightdb", {}, {})
        stale = conn.execute(
            "SELECT COUNT(*) FROM block_copies c JOIN models m USING (model_id) "
            "WHERE m.name = ? AND c.block_id = ?",
            (model, block_id),
        ).fetchone()[0]
        assert stale == 0
        for name, tensor in db.tensors(model).items():
            assert tensor.read().tobytes() == expected[name].tobytes(), name
        assert db.verify() == db.stats()["pages"]
    after = _exports(db_path, tmp_path / "after")
    assert {m: b for m, b in after.items() if m != model} == {
        m: b for m, b in before.items() if m != model
    }


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import weightdb
    from weightdb.dedup import early_exit
    from weightdb.storage.catalog import Catalog
    from weightdb.storage.store import Store

    point, path, spec = sys.argv[1:4]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def on_call(n, original):
        calls = []
        def wrapper(*args, **kwargs):
            calls.append(1)
            return die() if len(calls) == n else original(*args, **kwargs)
        return wrapper

    if point == "planning":  # while weightdb's candidate plans are being evaluated
        gate = early_exit.EarlyExitGate
        gate.passes = on_call(3, gate.passes)
    elif point == "reclaim":  # inside the commit transaction
        Catalog.reclaim_unreferenced = die
    elif point == "generation":  # the last statement of the commit transaction
        Catalog.bump_layout_generation = die
    elif point == "garbage":  # committed, page files not yet collected
        Store.collect_garbage = on_call(2, Store.collect_garbage)
    with weightdb.connect(path, create=False) as db:
        db.deduplicate(eval_spec=spec, max_drop=0.035)
    """
)


@pytest.mark.parametrize("point", ["planning", "reclaim", "generation"])
def test_sigkill_during_dedup_leaves_previous_state(
    db_path: Path, family: Path, tmp_path: Path, point: str
):
    before = _exports(db_path, tmp_path / "before")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    result = subprocess.run(
        [sys.executable, str(script), point, str(db_path), str(family / "family.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert _exports(db_path, tmp_path / "after") == before
    assert _replaced_models(db_path) == set()
    with weightdb.connect(db_path, create=False) as db:
        assert db.verify() > 0
        assert db.deduplicate(eval_spec=family / "family.json", max_drop=0.035).run_id


def test_sigkill_after_commit_keeps_the_new_state(db_path: Path, family: Path, tmp_path: Path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    result = subprocess.run(
        [sys.executable, str(script), "garbage", str(db_path), str(family / "family.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert _replaced_models(db_path)
    with weightdb.connect(db_path, create=False) as db:
        assert db.verify() > 0
        with db.store.writer_lock:
            db.store.collect_garbage()
        referenced = {
            f for (f,) in db.store.catalog.conn.execute("SELECT DISTINCT file FROM pages")
        }
        assert {f.name for f in db.store.pages_dir.iterdir()} == referenced


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.json", "does not exist"),
        ("not-json", "is not valid JSON"),
        ({"models": [{"name": "base", "validation": "v.npz", "metric": "accuracy"}]}, "no test"),
        (
            {"models": [{"name": "nobody", "validation": "v", "test": "t", "metric": "accuracy"}]},
            "names none of the models",
        ),
        ({"models": "base"}, "must be a list"),
        (42, "an eval spec is a path"),
    ],
)
def test_bad_eval_specs_are_clear_errors(db_path: Path, tmp_path: Path, spec, message):
    if spec == "not-json":
        spec = tmp_path / "bad.json"
        spec.write_text("{ nope")
    elif spec == "missing.json":
        spec = tmp_path / "missing.json"
    with weightdb.connect(db_path, create=False) as db, pytest.raises(EvalSpecError, match=message):
        db.deduplicate(eval_spec=spec)


def test_bad_metric_split_and_parameters_are_clear_errors(
    db_path: Path, family: Path, tmp_path: Path
):
    model = _manifest(family)["models"][0]
    entry = {
        "name": model["name"],
        "validation": str(family / model["validation"]),
        "test": str(family / model["test"]),
        "metric": "f1",
    }
    with weightdb.connect(db_path, create=False) as db:
        with pytest.raises(EvalSpecError, match="unknown metric 'f1'"):
            db.deduplicate(eval_spec={"models": [entry]})
        np.savez(tmp_path / "nolabels.npz", pixels=np.zeros((2, 1, 8, 8), np.float32))
        entry |= {"metric": "accuracy", "validation": str(tmp_path / "nolabels.npz")}
        with pytest.raises(EvalSpecError, match="has no 'labels' array"):
            db.deduplicate(eval_spec={"models": [entry]})
        with pytest.raises(DedupParameterError, match="unknown method"):
            db.deduplicate(method="zip")
        with pytest.raises(DedupParameterError, match="has no parameter bogus"):
            db.deduplicate(method="netsdb", bogus=1)
        with pytest.raises(DedupParameterError, match="budgets must be in"):
            db.deduplicate(
                eval_spec={"models": [entry | {"validation": entry["test"]}]}, max_drop=2.0
            )


@pytest.mark.parametrize("method", ["netsdb", "mistique", "pairwise"])
def test_reference_methods_keep_their_decision_split_within_budget(
    db_path: Path, family: Path, method: str
):
    with weightdb.connect(db_path, create=False) as db:
        report = db.deduplicate(eval_spec=family / "family.json", max_drop=0.02, method=method)
    for model in report.models.values():  # netsDB decides on the test split, as its artifact
        assert model.test_before - model.test_after <= 0.02 + 1e-9
    # One evaluation per model is its baseline; more means candidates were found and judged.
    assert report.evaluations > len(report.models)


@pytest.mark.parametrize("method", ["netsdb", "pairwise"])
def test_reference_methods_replace_blocks_of_the_fine_tunes(
    db_path: Path, family: Path, method: str
):
    with weightdb.connect(db_path, create=False) as db:
        report = db.deduplicate(eval_spec=family / "family.json", max_drop=0.02, method=method)
    replaced = {name: m.blocks_replaced for name, m in report.models.items() if m.blocks_replaced}
    assert replaced == {"base-extra-epochs": 1, "frozen-conv": 2}
    assert (report.distinct_blocks_before, report.distinct_blocks_after) == (24, 21)
    assert report.stored_bytes_after < report.stored_bytes_before


def test_metrics():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05]])
    assert parse_metric("accuracy").measure(logits, np.array([1, 1])).value == 0.5
    assert parse_metric("top-2").measure(logits, np.array([1, 1])).value == 1.0
    assert parse_metric("P@2").measure(logits, np.array([[1, 2], [2, -1]])).value == 0.25
    mse = parse_metric("MSE")
    base = mse.measure(np.array([1.0, 2.0]), np.array([0.0, 0.0]))
    worse = mse.measure(np.array([2.0, 2.0]), np.array([0.0, 0.0]))
    assert base.value == 2.5 and worse.drop(base) == pytest.approx(0.6)
    assert worse.losses(base) == pytest.approx(0.6)


def test_cli_json_and_exact_only_message(db_path: Path, family: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["--db", str(db_path), "dedup"])
    assert result.exit_code == 0, result.output
    assert "only exact deduplication ran" in result.output
    result = runner.invoke(
        app,
        [
            "--db",
            str(db_path),
            "dedup",
            "--eval",
            str(family / "family.json"),
            "--max-drop",
            "0.02",
            "--models",
            "base,frozen-conv",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["models"]) == {"base", "frozen-conv"}
    assert {"stored_bytes_before", "stored_bytes_after"} <= report.keys()
    assert {
        "validation_before",
        "validation_after",
        "test_before",
        "test_after",
        "blocks_replaced",
    } <= report["models"]["base"].keys()
    result = runner.invoke(app, ["--db", str(db_path), "dedup", "--method", "zip"])
    assert result.exit_code == 2 and "'zip' is not one of" in result.output


def test_flips_criterion_counts_any_change_of_predicted_class():
    from weightdb.dedup.metrics import Metric

    metric = Metric("accuracy")
    labels = np.array([0, 1, 2, 0])
    before = metric.measure(np.eye(3)[[0, 1, 1, 2]], labels)  # right, right, wrong, wrong
    after = metric.measure(np.eye(3)[[0, 1, 0, 1]], labels)  # the two wrong ones changed class
    assert after.losses(before) == 0.0  # no example got worse...
    assert after.flips(before) == 0.5  # ...but half the predictions moved


@pytest.mark.parametrize("criterion", ["losses", "flips"])
def test_early_exit_gate_reaches_the_same_verdicts_running_fewer_examples(
    db_path: Path, family: Path, criterion: str
):
    """Replace more and more of a model's blocks with another model's: at every step and budget
    the early-exit gate passes exactly when the plain gate does, and a failing model is run on
    fewer examples than the split holds."""
    with weightdb.connect(db_path, create=False) as db:
        models = [m.name for m in db.models()]
        workspace = Workspace(db.store, models)
        evaluators = load_eval_spec(family / "family.json", models)
        target, donor = models[0], models[1]
        examples = len(evaluators[target].load("validation")[1])
        run_rows = []
        predictor = workspace.predictor

        def counting(model):
            predict = predictor(model)

            def run(inputs):
                run_rows.append(len(next(iter(inputs.values()))))
                return predict(inputs)

            return run

        workspace.predictor = counting
        donors = {
            workspace.blocks[b].shape_key: b
            for p, b in workspace.original.items()
            if p.model == donor
        }
        positions = [
            p
            for p in workspace.positions(target)
            if workspace.blocks[workspace.current[p]].shape_key in donors
        ]
        budgets = [0.0, 0.02, 0.1, 0.5]
        gates = {
            b: Gate(workspace, evaluators, dict.fromkeys(evaluators, b), "validation", criterion)
            for b in budgets
        }
        fast = {b: EarlyExitGate.around(gate) for b, gate in gates.items()}
        for b in budgets:  # before any change
            gates[b].baseline(target), fast[b].baseline(target)
        verdicts, fewer = set(), 0
        for position in positions:
            workspace.current[position] = donors[
                workspace.blocks[workspace.current[position]].shape_key
            ]
            for b in budgets:
                expected = gates[b].passes([target])
                run_rows.clear()
                assert fast[b].passes([target]) == expected
                verdicts.add(expected)
                fewer += not expected and sum(run_rows) < examples
        assert verdicts == {True, False} and fewer > 0
