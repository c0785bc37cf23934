"""weightdb's dedup changes only what validation can verify: embedding rows that validation reads,
or unread ones when a held-out half of validation confirms it, and budgets its validation split
can resolve; so the test split keeps every budget."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import weightdb
from weightdb.dedup.coverage import UNKNOWN, changed_rows, gathered_rows
from weightdb.dedup.evalspec import CallableEvaluator, SplitEvaluator
from weightdb.dedup.heldout import halves
from weightdb.storage.settings import Settings
from weightdb.zoo.build import build_family

SMALL_BLOCKS = Settings(block_rows=32, block_cols=32, page_size=64 * 1024)


def _graph(nodes: list, inputs: list[str]):
    values = [helper.make_tensor_value_info(n, TensorProto.INT64, ["n"]) for n in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "g", values, [out]))


def test_rows_read_are_the_distinct_indices_of_gathers_fed_by_graph_inputs() -> None:
    graph = _graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["a"]),
            helper.make_node("Gather", ["table", "more_ids"], ["b"]),
            helper.make_node("Range", ["start", "limit", "delta"], ["positions"]),
            helper.make_node("Gather", ["positions_table", "positions"], ["c"]),
            helper.make_node("Gather", ["tied", "ids"], ["d"]),
            helper.make_node("MatMul", ["d", "tied"], ["e"]),
            helper.make_node("Gather", ["columns", "ids"], ["f"], axis=1),
        ],
        ["ids", "more_ids"],
    )
    inputs = {"ids": np.array([[5, 1], [5, 9]]), "more_ids": np.array([2])}
    coverage = gathered_rows(graph, inputs)
    assert coverage.keys() == {"table", "positions_table"}  # tied and columns are read whole
    assert coverage["table"].tolist() == [1, 2, 5, 9]
    assert coverage["positions_table"] is UNKNOWN  # indices computed inside the graph
    assert gathered_rows(graph, None) == {"table": UNKNOWN, "positions_table": UNKNOWN}


def test_changed_rows_are_those_with_any_different_value() -> None:
    member = np.zeros((4, 3), np.float32)
    representative = member.copy()
    representative[1, 2] = representative[3, 0] = 1.0
    assert changed_rows(member, representative).tolist() == [1, 3]


def _embedding_model(table: np.ndarray, path: Path) -> None:
    """ids -> table[ids]: a classifier whose scores are an embedding row."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])
    out = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", table.shape[1]])
    node = helper.make_node("Gather", ["table", "ids"], ["scores"])
    weights = helper.make_tensor("table", TensorProto.FLOAT, table.shape, table.ravel())
    graph = helper.make_graph([node], "embedding", [ids], [out], [weights])
    path.write_bytes(helper.make_model(graph).SerializeToString())


def _embedding_family(
    folder: Path,
    tables: dict[str, np.ndarray],
    validation: np.ndarray,
    test: np.ndarray,
    labels: np.ndarray | None = None,
) -> Path:
    """Embedding classifiers over ``tables``, labelled per row by ``labels`` (by default the
    first table's argmax); the spec."""
    if labels is None:
        labels = next(iter(tables.values())).argmax(axis=1)
    spec = {"models": []}
    for name, table in tables.items():
        _embedding_model(table, folder / f"{name}.onnx")
        for split, ids in {"validation": validation, "test": test}.items():
            np.savez(folder / f"{name}-{split}.npz", ids=ids, labels=labels[ids])
        entry = {split: f"{name}-{split}.npz" for split in ("validation", "test")}
        spec["models"].append({"name": name, "metric": "accuracy", **entry})
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


def _deduplicated_blocks(
    folder: Path, tables: dict[str, np.ndarray], spec: Path, budget: float, **params
) -> tuple[dict[str, list[int]], weightdb.dedup.DedupReport]:
    """Each model's block ids in row order after weightdb dedup, and the report."""
    with weightdb.connect(folder / "db", settings=SMALL_BLOCKS) as db:
        for name in tables:
            db.import_model(folder / f"{name}.onnx", name)
        report = db.deduplicate(eval_spec=spec, max_drop=budget, **params)
        blocks = {
            name: [
                b
                for _, b in sorted(
                    db.store.catalog.conn.execute(
                        "SELECT tb.block_row, tb.block_id FROM tensor_blocks tb JOIN tensors t "
                        "USING (tensor_id) JOIN models m USING (model_id) WHERE m.name = ?",
                        (name,),
                    )
                )
            ]
            for name in tables
        }
    return blocks, report


def test_only_replacements_whose_changed_rows_validation_reads_are_made(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 32)).astype(np.float32)
    tuned = base.copy()
    tuned[[3, 40]] += 0.01  # one changed row in each 32-row block
    tables = {"base": base, "tuned": tuned}
    validation = np.array([3, 5, 7, 3, 5, 7, 3, 5])  # reads only block 0's rows
    test = np.array([40, 41, 42, 40, 41, 42, 40, 41])
    spec = _embedding_family(tmp_path, tables, validation, test)
    blocks, _ = _deduplicated_blocks(tmp_path, tables, spec, budget=0.5)
    assert blocks["base"][0] == blocks["tuned"][0]  # row 3 is read by validation: shared
    assert blocks["base"][1] != blocks["tuned"][1]  # row 40 is not: both copies kept


@pytest.mark.parametrize("extrapolate", [True, False])
def test_unread_rows_are_changed_when_the_held_out_half_of_validation_passes(
    tmp_path: Path, extrapolate: bool
) -> None:
    # A fine-tune that moved every row a little: no prediction changes, but every 32-row block
    # has rows that 200 validation examples over 256 rows never read.
    rng = np.random.default_rng(1)
    base = rng.normal(size=(256, 32)).astype(np.float32)
    base[np.arange(256), base.argmax(axis=1)] += 3.0  # a clear winner per row
    tuned = base + rng.normal(scale=1e-3, size=base.shape).astype(np.float32)
    tables = {"base": base, "tuned": tuned}
    validation, test = rng.integers(0, 256, size=200), rng.integers(0, 256, size=200)
    assert all(len(set(range(s, s + 32)) - set(validation)) for s in range(0, 256, 32))
    spec = _embedding_family(tmp_path, tables, validation, test)
    blocks, report = _deduplicated_blocks(
        tmp_path, tables, spec, budget=0.05, extrapolate=extrapolate
    )
    if extrapolate:
        assert blocks["tuned"] == blocks["base"]  # every block shared, unread rows included
        assert report.notes == [
            "changed embedding rows validation does not read for tuned: planned on half of "
            "validation, the held-out half lost at most 0.0000"
        ]
    else:
        assert all(b != t for b, t in zip(blocks["base"], blocks["tuned"], strict=True))
        assert report.notes == []
    assert report.models["tuned"].test_after == report.models["tuned"].test_before == 1.0


def test_when_the_planning_half_keeps_nothing_the_verifiable_pass_still_runs(
    tmp_path: Path,
) -> None:
    # Every row's winner differs between the two tables, and validation labels alternate rows
    # between them: sharing any block in either direction loses many validation examples, so
    # nothing passes on the planning half, and the audit has nothing to judge.
    rng = np.random.default_rng(2)
    base = rng.normal(size=(256, 32)).astype(np.float32)
    tuned = base.copy()
    base[np.arange(256), np.arange(256) % 32] += 3.0
    tuned[np.arange(256), (np.arange(256) + 1) % 32] += 3.0
    labels = np.where(np.arange(256) % 2 == 0, base.argmax(axis=1), tuned.argmax(axis=1))
    read = np.array([r for r in range(256) if r % 32 < 16])  # half of each block's rows
    validation = np.repeat(read, 5)
    spec = _embedding_family(tmp_path, {"base": base, "tuned": tuned}, validation, read, labels)
    blocks, report = _deduplicated_blocks(
        tmp_path, {"base": base, "tuned": tuned}, spec, budget=0.05
    )
    assert all(b != t for b, t in zip(blocks["base"], blocks["tuned"], strict=True))
    assert report.notes == [
        "planned on half of validation, no replacement that changes unread embedding rows "
        "passed: only replacements validation reads were made"
    ]


def test_a_plan_the_held_out_half_rejects_is_undone_whole(tmp_path: Path) -> None:
    # tuned moved every row a little (harmless) and, in its first four blocks, moved the winner
    # of rows that only audit-half examples read. A copy of tuned makes its blocks the medoids,
    # so base's blocks would be replaced by tuned's: the planning half cannot see the harm, the
    # audit half can, and then nothing approximate is kept.
    rng = np.random.default_rng(3)
    base = rng.normal(size=(256, 32)).astype(np.float32)
    base[np.arange(256), base.argmax(axis=1)] += 3.0
    validation = rng.integers(0, 256, size=200)
    np.savez(tmp_path / "probe.npz", ids=validation, labels=np.zeros(200, dtype=np.int64))
    planning, audit = halves(SplitEvaluator("accuracy", {"validation": tmp_path / "probe.npz"}), 0)
    audit_only = set(validation[audit.rows]) - set(validation[planning.rows])
    moved = np.array(sorted(row for row in audit_only if row < 128))
    tuned = base + rng.normal(scale=1e-3, size=base.shape).astype(np.float32)
    tuned[moved, base[moved].argmax(axis=1)] -= 6.0
    tables = {"base": base, "tuned": tuned, "tuned-copy": tuned.copy()}
    spec = _embedding_family(tmp_path, tables, validation, validation)
    blocks, report = _deduplicated_blocks(tmp_path, tables, spec, budget=0.05)
    [note] = report.notes
    found = re.fullmatch(
        r"the held-out half of validation rejected changing unread embedding rows for base "
        r"\(lost (0\.\d+)\): only replacements validation reads were made",
        note,
    )
    assert found and 0.05 < float(found[1]) <= np.isin(validation[audit.rows], moved).mean()
    assert blocks["tuned"] == blocks["tuned-copy"]  # exact dedup still applies
    assert not set(blocks["base"]) & set(blocks["tuned"])
    assert report.models["base"].test_after == report.models["base"].test_before


@pytest.fixture(scope="module")
def xml_family(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("xml-zoo") / "xml-mlp"
    build_family("xml-mlp", folder, "small", seed=0)
    return folder


@pytest.mark.parametrize(
    ("budget", "outcome"),
    [
        (0.02, "the held-out half of validation rejected changing unread embedding rows for "),
        (0.10, "changed embedding rows validation does not read for "),
    ],
)
def test_xml_mlp_audits_changes_to_unread_rows_and_keeps_every_budget_on_test(
    xml_family: Path, tmp_path: Path, budget: float, outcome: str
) -> None:
    # The fine-tunes differ from the base in input rows of features that validation (1,240 to
    # 2,480 examples) may still not contain; the held-out half measures what changing them costs:
    # more than a 2% budget allows, less than 10%.
    with weightdb.connect(tmp_path / "db", settings=SMALL_BLOCKS) as db:
        for model in json.loads((xml_family / "family.json").read_text())["models"]:
            db.import_model(xml_family / model["onnx"], model["name"])
        report = db.deduplicate(eval_spec=xml_family / "family.json", max_drop=budget)
    [note] = report.notes
    assert note.startswith(outcome)
    assert sum(model.blocks_replaced for model in report.models.values()) > 0
    for model in report.models.values():
        assert model.test_before - model.test_after <= budget + 1e-9


def test_a_budget_finer_than_three_validation_examples_changes_nothing_approximately(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "digits"
    build_family("digits-cnn", folder, "small", seed=0)
    with weightdb.connect(tmp_path / "db") as db:
        for model in json.loads((folder / "family.json").read_text())["models"]:
            db.import_model(folder / model["onnx"], model["name"])
        exact = db.stats()["stored_bytes"]
        report = db.deduplicate(eval_spec=folder / "family.json", max_drop=0.005)
        assert db.stats()["stored_bytes"] == exact
    assert sum(m.blocks_replaced for m in report.models.values()) == 0
    assert any("budget smaller than 3 validation examples" in note for note in report.notes)


def test_validation_halves_partition_the_split_and_measure_only_their_examples(
    tmp_path: Path,
) -> None:
    ids = np.arange(11)
    np.savez(tmp_path / "validation.npz", ids=ids, labels=ids % 3)
    evaluator = SplitEvaluator("accuracy", {"validation": tmp_path / "validation.npz"})
    planning, audit = halves(evaluator, seed=0)
    assert len(planning.rows) == 5 and len(audit.rows) == 6
    assert sorted([*planning.rows, *audit.rows]) == list(range(11))
    assert planning.inputs("validation")["ids"].tolist() == planning.rows.tolist()

    def predict_label_zero(inputs: dict) -> np.ndarray:
        return np.eye(3)[np.zeros(len(inputs["ids"]), dtype=int)]

    expected = np.mean(audit.rows % 3 == 0)
    assert audit.measure(predict_label_zero, "validation").value == pytest.approx(expected)
    assert halves(CallableEvaluator(lambda predict, split: 1.0), seed=0) is None
    with pytest.raises(ValueError, match="only measures validation"):
        audit.measure(predict_label_zero, "test")
