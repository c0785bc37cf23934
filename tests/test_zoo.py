"""The model zoo: every family's small size is built once per session and checked exactly."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ZOO_FAMILIES
from onnx import numpy_helper
from safetensors.numpy import load_file
from typer.testing import CliRunner

from weightdb.zoo.build import BuildContext, build_family
from weightdb.zoo.errors import DataSourceMissingError, ZooError
from weightdb.zoo.families import families
from weightdb.zoo.families.scale import BLOCK
from weightdb.zoo.manifest import read_manifest
from weightdb.zoo.minilm import word_embeddings
from weightdb.zoo.splits import LABELS, load_split
from weightdb.zoo.text import LEXNAMES, TextTask, prepare, wordnet_tasks

FAMILIES = ZOO_FAMILIES
CLASSIFIERS = [name for name in FAMILIES if name != "scale"]


def _manifest(zoo: Path, family: str) -> dict:
    return read_manifest(zoo / family)


def _onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))  # external data (scale) is loaded from beside the file
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_registry_lists_every_family():
    assert [family.name for family in families()] == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_manifest_lists_models_with_lineage_and_files(zoo: Path, family: str):
    manifest = _manifest(zoo, family)
    assert manifest["name"] == family
    assert manifest["size"] == "small" and manifest["seed"] == 0
    assert manifest["synthetic"]
    names = [model["name"] for model in manifest["models"]]
    assert len(names) == len(set(names)) >= 4
    for model in manifest["models"]:
        assert (zoo / family / model["onnx"]).is_file()
        assert (zoo / family / model["safetensors"]).is_file()
        assert model["parent"] is None or model["parent"] in names[: names.index(model["name"])]
        assert (model["lineage"]["init"] == "parent") == (model["parent"] is not None)
        assert model["parameters"] > 0
        assert model["bytes"] == (zoo / family / model["safetensors"]).stat().st_size
    lineages = [model["lineage"] for model in manifest["models"]]
    if family == "scale":  # generated, not trained: every variant derives from the family seed
        assert {(lineage["steps"], lineage["seed"]) for lineage in lineages} == {(0, 0)}
    else:  # trained, model number k with seed family seed * 1000 + k
        assert [lineage["seed"] for lineage in lineages] == list(range(len(lineages)))
        assert min(lineage["steps"] for lineage in lineages) > 0


def test_minilm_family_has_six_finetunes_full_and_frozen(zoo: Path):
    models = _manifest(zoo, "minilm-finetunes")["models"]
    assert len(models) >= 6
    assert {m["task"] for m in models} == {"sentiment", "subjectivity", "word-pos"}
    assert any(m["frozen"] == [] for m in models)
    assert any("encoder.encoder.layer.0" in m["frozen"] for m in models)


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_splits_feed_the_onnx_inputs(zoo: Path, family: str):
    for model in _manifest(zoo, family)["models"]:
        session = ort.InferenceSession(str(zoo / family / model["onnx"]))
        for split in ("validation", "test"):
            with np.load(zoo / family / model[split]) as data:
                assert set(data.files) == {i.name for i in session.get_inputs()} | {LABELS}
                labels = data[LABELS]
                assert len(labels) > 0
                assert all(len(data[name]) == len(labels) for name in data.files)
                assert labels.min() >= 0 and labels.max() < len(model["classes"])


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_recorded_accuracy_is_reproduced_by_onnxruntime(zoo: Path, family: str):
    for model in _manifest(zoo, family)["models"]:
        assert model["metric"] == "accuracy"
        session = ort.InferenceSession(str(zoo / family / model["onnx"]))
        for split in ("validation", "test"):
            with np.load(zoo / family / model[split]) as data:
                feed = {name: data[name] for name in data.files if name != LABELS}
                logits = session.run(None, feed)[0]
                accuracy = float(np.mean(logits.argmax(axis=-1) == data[LABELS]))
            assert accuracy == model["accuracy"][split], (model["name"], split)


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_equal_onnx_initializers(zoo: Path, family: str):
    for model in _manifest(zoo, family)["models"]:
        in_onnx = _onnx_initializers(zoo / family / model["onnx"])
        in_safetensors = load_file(zoo / family / model["safetensors"])
        assert set(in_onnx) == set(in_safetensors)
        assert not [name for name in in_onnx if name.startswith("onnx::")]
        for name, array in in_onnx.items():
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array, in_safetensors[name], err_msg=name)


def _frozen_tensors(tensors: dict[str, np.ndarray], prefixes: list[str]) -> dict[str, np.ndarray]:
    return {
        name: array
        for name, array in tensors.items()
        if any(name == p or name.startswith(f"{p}.") for p in prefixes)
    }


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_frozen_tensors_equal_their_origin(zoo: Path, family: str):
    """Frozen parts equal the parent's, or (no parent) every model frozen the same way."""
    models = _manifest(zoo, family)["models"]
    tensors = {m["name"]: load_file(zoo / family / m["safetensors"]) for m in models}
    checked = 0
    for model in models:
        if not model["frozen"]:
            continue
        frozen = _frozen_tensors(tensors[model["name"]], model["frozen"])
        assert frozen, model["name"]
        origins = (
            [model["parent"]]
            if model["parent"]
            else [other["name"] for other in models if other["frozen"] == model["frozen"]]
        )
        for origin in origins:
            for name, array in frozen.items():
                np.testing.assert_array_equal(array, tensors[origin][name], err_msg=name)
                checked += 1
    assert checked > 0


def test_frozen_text_embedding_is_the_pretrained_minilm_matrix(zoo: Path):
    pretrained = word_embeddings().numpy()
    for model in _manifest(zoo, "text-embedding")["models"]:
        embedding = load_file(zoo / "text-embedding" / model["safetensors"])["embedding.weight"]
        if model["frozen"]:
            np.testing.assert_array_equal(embedding, pretrained)
        else:
            changed = np.any(embedding != pretrained, axis=1)
            assert 0 < changed.sum() < len(pretrained) // 10


def test_scale_variants_change_a_fraction_of_blocks(zoo: Path):
    manifest = _manifest(zoo, "scale")
    assert manifest["extra"]["block_shape"] == [BLOCK, BLOCK]
    base = load_file(zoo / "scale" / manifest["models"][0]["safetensors"])
    for model in manifest["models"]:
        assert model["metric"] is None and model["accuracy"] == {"validation": None, "test": None}
        tensors = load_file(zoo / "scale" / model["safetensors"])
        changed = total = 0
        for name, array in tensors.items():
            matrix = array.reshape(array.shape[0], -1)
            for row in range(0, matrix.shape[0], BLOCK):
                for col in range(0, matrix.shape[1], BLOCK):
                    block = (slice(row, row + BLOCK), slice(col, col + BLOCK))
                    other = base[name].reshape(matrix.shape)
                    changed += not np.array_equal(matrix[block], other[block])
                    total += 1
        assert model["notes"].startswith(f"{changed} of {total} ")
        assert (changed == 0) == (model["parent"] is None)
    session = ort.InferenceSession(str(zoo / "scale" / manifest["models"][1]["onnx"]))
    with np.load(zoo / "scale" / manifest["extra"]["requests"]) as requests:
        assert session.run(None, {"input_ids": requests["input_ids"]})[0].shape[0] == len(
            requests["input_ids"]
        )


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("family", ["digits-cnn", "xml-mlp", "scale"])
def test_builds_are_deterministic_for_a_seed(zoo: Path, tmp_path: Path, family: str):
    build_family(family, tmp_path / "again", "small", seed=0)
    assert _file_bytes(tmp_path / "again") == _file_bytes(zoo / family)
    build_family(family, tmp_path / "other", "small", seed=1)
    other = load_file(tmp_path / "other" / "models" / "base.safetensors")
    same = load_file(zoo / family / "models" / "base.safetensors")
    assert any(not np.array_equal(other[name], same[name]) for name in same)


def test_rebuilding_an_identical_build_is_a_no_op(zoo: Path):
    manifest = zoo / "digits-cnn" / "family.json"
    before = manifest.stat().st_mtime_ns
    result = build_family("digits-cnn", zoo / "digits-cnn", "small", seed=0)
    assert not result.built
    assert manifest.stat().st_mtime_ns == before


def test_a_changed_option_rebuilds(tmp_path: Path):
    first = build_family("scale", tmp_path / "s", "small", options={"total": "4MiB", "models": 2})
    again = build_family("scale", tmp_path / "s", "small", options={"total": "4MiB", "models": 3})
    assert first.built and again.built
    assert len(json.loads(again.manifest.read_text())["models"]) == 3


def test_missing_wordnet_names_the_install_command(tmp_path: Path):
    with pytest.raises(DataSourceMissingError, match="apt-get install wordnet-base"):
        build_family(
            "text-embedding", tmp_path / "t", "full", options={"wordnet": str(tmp_path / "no")}
        )
    assert list(tmp_path.iterdir()) == []


def test_wordnet_glosses_become_labelled_tasks(tmp_path: Path):
    lines = {
        "noun": '00015388 05 n 01 animal 0 000 | a living organism; "an example"',
        "verb": "01835496 38 v 01 travel 0 000 | change location; move",
        "adj": "00001740 00 a 01 able 0 000 | having the means to do something",
        "adv": "00001740 02 r 01 quickly 0 000 | with speed",
    }
    for pos, line in lines.items():
        (tmp_path / f"data.{pos}").write_text("  1 license header\n" + line + "\n")
    tasks = {task.name: task for task in wordnet_tasks(tmp_path)}
    assert tasks["wordnet-noun-category"].texts == ["animal: a living organism"]
    assert tasks["wordnet-noun-category"].labels == [LEXNAMES[5]] == ["noun.animal"]
    assert tasks["wordnet-verb-category"].labels == ["verb.motion"]
    assert tasks["wordnet-pos"].labels == ["noun", "verb", "adjective", "adverb"]


def test_unknown_family_size_or_option_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ZooError, match="unknown family 'nope'"):
        build_family("nope", tmp_path / "x")
    with pytest.raises(ZooError, match="unknown size"):
        build_family("digits-cnn", tmp_path / "x", "huge")
    with pytest.raises(ZooError, match="no option 'total'"):
        build_family("digits-cnn", tmp_path / "x", options={"total": "1GiB"})
    with pytest.raises(ZooError, match="too small"):
        build_family("scale", tmp_path / "x", options={"total": "64KiB"})


def test_refuses_to_build_over_a_foreign_directory(tmp_path: Path):
    (tmp_path / "keep.txt").write_text("not a family")
    with pytest.raises(ZooError, match="not a zoo family directory"):
        build_family("digits-cnn", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "not a family"


def test_cli_lists_and_reports_a_cached_build(zoo: Path):
    from weightdb.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["zoo", "list"])
    assert listed.exit_code == 0
    assert all(name in listed.output for name in FAMILIES)
    built = runner.invoke(app, ["zoo", "build", "digits-cnn", "--out", str(zoo / "digits-cnn")])
    assert built.exit_code == 0, built.output
    assert "already built (cached)" in built.output


def test_growing_validation_keeps_training_rows_and_the_test_split(tmp_path: Path):
    words = ["red", "green", "blue", "cat", "dog", "tree", "house", "river", "stone", "cloud"]
    texts = [f"{a} {b} {c}" for a in words for b in words for c in words[:4]]  # 400, distinct
    task = TextTask("t", "unit", "a toy task", texts, ["yes", "no"] * 200)

    def prepared(directory: str, validation: int):
        context = BuildContext(tmp_path / directory, "small", seed=3, options={})
        (result,) = prepare(
            context, [task], per_class=40, max_length=8, validation_at_least=validation
        )
        splits = {
            split: load_split(context.directory / path) for split, path in result.held_out.items()
        }
        return result, splits

    plain, plain_splits = prepared("plain", 0)
    grown, grown_splits = prepared("grown", 100)
    for result in (plain, grown):  # the rows a model trains on
        assert result.train_data()[0]["input_ids"].shape[0] == 48
    for name in ("input_ids", "attention_mask"):
        assert np.array_equal(plain.train_data()[0][name], grown.train_data()[0][name])
        assert np.array_equal(plain_splits["test"][0][name], grown_splits["test"][0][name])
    assert np.array_equal(plain_splits["test"][1], grown_splits["test"][1])
    val_inputs, val_labels = grown_splits["validation"]
    assert len(val_labels) == 100 and grown.entry.examples["validation"] == 100
    assert np.bincount(val_labels).tolist() == [50, 50]
    assert np.array_equal(val_inputs["input_ids"][:16], plain_splits["validation"][0]["input_ids"])
    # The added texts are new: none of them is among the 80 the cap took.
    taken = {tuple(row) for row in plain.inputs["input_ids"]}
    added = {tuple(row) for row in val_inputs["input_ids"][16:]}
    assert len(added) == 84 and not added & taken
