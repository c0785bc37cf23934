"""Bad input gets a clear error naming what is wrong, and the database loses nothing."""

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.numpy import save_file

import weightdb
from weightdb.errors import (
    DatabaseNotFoundError,
    FormatVersionError,
    InvalidNameError,
    ModelExistsError,
    ModelNotFoundError,
    SourceFormatError,
    UnsupportedDTypeError,
    WeightDBError,
)


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.safetensors"
    save_file({"w": np.arange(600, dtype=np.float32).reshape(30, 20)}, path)
    return path


def assert_untouched(db, models: list[str]) -> None:
    assert [m.name for m in db.models()] == models
    assert db.verify() == db.stats()["pages"]
    assert not [p for p in (db.path / "pages").iterdir() if p.stat().st_size == 0]


def test_truncated_safetensors(db, good_file, tmp_path):
    db.import_model(good_file, name="ok")
    data = good_file.read_bytes()
    for cut, message in [(4, "only 4 bytes"), (20, "truncated"), (len(data) - 7, "truncated")]:
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(SourceFormatError, match=message):
            db.import_model(bad, name="bad")
    assert_untouched(db, ["ok"])


def test_malformed_safetensors_header(db, tmp_path):
    cases = {
        "not json": b"{not json",
        "not an object": b"[1, 2]",
        "bad record": json.dumps({"w": {"dtype": "F32"}}).encode(),
        "bad offsets": json.dumps(
            {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}
        ).encode(),
    }
    for label, header in cases.items():
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
        with pytest.raises(SourceFormatError, match=r"bad\.safetensors"):
            db.import_model(bad, name="bad")
        assert db.models() == [], label


def test_overlapping_safetensors_tensors(db, tmp_path):
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    ).encode()
    bad = tmp_path / "overlap.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(SourceFormatError, match="overlap"):
        db.import_model(bad, name="bad")


def test_unknown_safetensors_dtype(db, tmp_path):
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})
    bad = tmp_path / "fp8.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0\0")
    with pytest.raises(UnsupportedDTypeError, match=r"F8_E4M3.*not supported"):
        db.import_model(bad, name="bad")


def test_unknown_numpy_dtype(db, tmp_path):
    np.savez(tmp_path / "c.npz", w=np.ones(3, dtype=np.complex64))
    with pytest.raises(UnsupportedDTypeError, match="complex64"):
        db.import_model(tmp_path / "c.npz", name="bad")


def test_malformed_npz(db, tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(SourceFormatError, match=r"junk\.npz"):
        db.import_model(tmp_path / "junk.npz", name="bad")
    np.savez(tmp_path / "obj.npz", w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SourceFormatError, match="unpickle"):
        db.import_model(tmp_path / "obj.npz", name="bad")
    good = tmp_path / "good.npz"
    np.savez(good, w=np.ones((50, 50), np.float32))
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFormatError, match=r"cut\.npz"):
        db.import_model(tmp_path / "cut.npz", name="bad")
    assert db.models() == []


def test_bfloat16_in_npz_is_refused_with_advice(db, tmp_path):
    import ml_dtypes

    np.savez(tmp_path / "bf.npz", w=np.ones(3, dtype=ml_dtypes.bfloat16))
    with pytest.raises(UnsupportedDTypeError, match="safetensors"):
        db.import_model(tmp_path / "bf.npz", name="bad")


def identity_model(weights: np.ndarray | onnx.TensorProto) -> onnx.ModelProto:
    if isinstance(weights, np.ndarray):
        weights = onnx.numpy_helper.from_array(weights, "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", weights.data_type, list(weights.dims))],
        initializer=[weights],
    )
    return onnx.helper.make_model(graph)


def test_malformed_and_truncated_onnx(db, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(SourceFormatError, match=r"junk\.onnx is not a valid ONNX model"):
        db.import_model(tmp_path / "junk.onnx", name="bad")
    onnx.save(identity_model(np.ones((64, 32), np.float32)), tmp_path / "m.onnx")
    data = (tmp_path / "m.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) - 100])
    with pytest.raises(SourceFormatError, match=r"cut\.onnx"):
        db.import_model(tmp_path / "cut.onnx", name="bad")
    assert db.models() == []


def test_onnx_external_data_outside_the_model_folder_is_refused(db, tmp_path):
    weights = onnx.numpy_helper.from_array(np.ones((40, 40), np.float32), "w")
    weights.data_location = onnx.TensorProto.EXTERNAL
    entry = weights.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    weights.ClearField("raw_data")
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(identity_model(weights), folder / "m.onnx")
    with pytest.raises(SourceFormatError):
        db.import_model(folder / "m.onnx", name="bad")


def test_pytorch_file_that_is_not_a_state_dict(db, tmp_path):
    torch.save([torch.ones(3)], tmp_path / "list.pt")
    with pytest.raises(SourceFormatError, match="not a state dict"):
        db.import_model(tmp_path / "list.pt", name="bad")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(SourceFormatError, match="weights_only=True"):
        db.import_model(tmp_path / "junk.pt", name="bad")


def test_unknown_file_type_and_missing_source(db, tmp_path):
    (tmp_path / "model.h5").write_bytes(b"x")
    with pytest.raises(SourceFormatError, match=r"unknown file type '\.h5'"):
        db.import_model(tmp_path / "model.h5", name="bad")
    with pytest.raises(SourceFormatError, match="does not exist"):
        db.import_model(tmp_path / "missing.safetensors", name="bad")


def test_duplicate_model_name(db, good_file):
    db.import_model(good_file, name="m")
    with pytest.raises(ModelExistsError, match="'m' already exists"):
        db.import_model(good_file, name="m")
    assert_untouched(db, ["m"])


@pytest.mark.parametrize(
    "name",
    ["a/b", "../escape", "x\\y", "it's", 'say "hi"', "drop table;--", "", ".hidden", "a" * 129],
)
def test_unsafe_model_names_are_refused(db, good_file, name):
    with pytest.raises(InvalidNameError, match="not allowed"):
        db.import_model(good_file, name=name)
    assert db.models() == []


def test_tensor_names_with_quotes_and_separators_are_stored_safely(db, tmp_path):
    arrays = {
        "enc/layer.0'; DROP TABLE models;--": np.ones((3, 3), np.float32),
        "../x": np.zeros(2),
    }
    db.import_arrays("m", arrays)
    out = tmp_path / "out.npz"
    db.export_model("m", out)
    with np.load(out) as loaded:
        assert set(loaded.files) == set(arrays)
    assert [m.name for m in db.models()] == ["m"]


def test_unknown_model(db, good_file):
    db.import_model(good_file, name="known")
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope'.*known"):
        db.export_model("nope", db.path / "x.safetensors")


def test_missing_database(tmp_path):
    with pytest.raises(DatabaseNotFoundError, match="weightdb init"):
        weightdb.connect(tmp_path / "nowhere", create=False)


def test_refuses_to_create_over_a_non_empty_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "file.txt").write_text("mine")
    with pytest.raises(WeightDBError, match="not an empty directory"):
        weightdb.connect(tmp_path / "stuff")
    assert (tmp_path / "stuff" / "file.txt").read_text() == "mine"


def test_newer_format_versions_are_refused(tmp_path, good_file):
    path = tmp_path / "db"
    with weightdb.connect(path) as db:
        db.import_model(good_file, name="m")
    config = path / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("format_version = 1", "format_version = 99"))
    with pytest.raises(FormatVersionError, match=r"format version 99.*upgrade weightdb"):
        weightdb.connect(path)
    config.write_text(original)
    import sqlite3

    with sqlite3.connect(path / "catalog.sqlite") as conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'catalog_version'")
    with pytest.raises(FormatVersionError, match="catalog format 7"):
        weightdb.connect(path)


def test_export_to_unknown_suffix_or_missing_folder(db, good_file, tmp_path):
    db.import_model(good_file, name="m")
    with pytest.raises(WeightDBError, match=r"must end in \.safetensors"):
        db.export_model("m", tmp_path / "m.bin")
    with pytest.raises(WeightDBError, match="does not exist"):
        db.export_model("m", tmp_path / "no" / "m.safetensors")
    with pytest.raises(WeightDBError, match="without a graph"):
        db.export_model("m", tmp_path / "m.onnx")
    assert list(tmp_path.glob("*.partial")) == []
