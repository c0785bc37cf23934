"""Import then export is bit-identical, for every dtype, format and awkward shape."""

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from safetensors.torch import load_file, save_file

from weightdb.errors import SourceFormatError
from weightdb.ingest.torch_format import tensor_to_numpy

SHAPES = [(37, 29), (5,), (), (3, 4, 5, 2), (0, 7), (300,), (16, 8), (1, 1000)]
NUMPY_DTYPES = ["float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
ALL_DTYPES = [*NUMPY_DTYPES, "bfloat16"]


def make_array(rng: np.random.Generator, dtype: str, shape: tuple) -> np.ndarray:
    if dtype == "bool":
        values = rng.random(shape) < 0.5
    elif dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        target = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
        values = (rng.standard_normal(shape) * 3).astype(target)
    return np.asarray(values)


def model_arrays(rng, dtypes: list[str]) -> dict[str, np.ndarray]:
    arrays = {}
    for dtype in dtypes:
        for index, shape in enumerate(SHAPES):
            arrays[f"layer.{dtype}.{index}"] = make_array(rng, dtype, shape)
    # An array with NaNs and signed zeros must survive bit for bit.
    special = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1e-45], dtype=np.float32)
    arrays["special"] = special
    return arrays


def assert_bit_identical(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> None:
    assert list(actual) == list(expected) or set(actual) == set(expected)
    for name, array in expected.items():
        got = actual[name]
        assert got.dtype == array.dtype, name
        assert got.shape == array.shape, name
        assert got.tobytes() == array.tobytes(), name


def torch_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, array in arrays.items():
        if array.dtype == ml_dtypes.bfloat16:
            tensors[name] = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
        else:
            tensors[name] = torch.from_numpy(array.copy())
    return tensors


def numpy_dict(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: tensor_to_numpy(t) for name, t in tensors.items()}


def test_safetensors_roundtrip_every_dtype(db, rng, tmp_path: Path):
    arrays = model_arrays(rng, ALL_DTYPES)
    source = tmp_path / "model.safetensors"
    save_file(torch_dict(arrays), source, metadata={"format": "pt", "note": "x"})
    db.import_model(source, name="m")
    out = tmp_path / "out.safetensors"
    db.export_model("m", out)
    assert_bit_identical(arrays, numpy_dict(load_file(out)))
    with open(out, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"] == {"format": "pt", "note": "x"}
    assert db.stats()["logical_bytes"] == sum(a.nbytes for a in arrays.values())


def test_stored_tensors_read_back_through_the_pool(db, rng):
    arrays = model_arrays(rng, ["float32", "bfloat16", "int64"])
    db.import_arrays("m", arrays)
    tensors = db.tensors("m")
    assert list(tensors) == list(arrays)
    assert_bit_identical(arrays, {name: t.read() for name, t in tensors.items()})


def test_hf_sharded_directory(db, rng, tmp_path: Path):
    arrays = model_arrays(rng, ["float32", "float16", "bfloat16"])
    folder = tmp_path / "hf"
    folder.mkdir()
    names = list(arrays)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, members in shards.items():
        save_file(torch_dict({n: arrays[n] for n in members}), folder / shard)
        weight_map.update({n: shard for n in members})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (folder / "config.json").write_text('{"hidden_size": 8}')
    info = db.import_model(folder, name="hf")
    assert info.format == "hf-directory"
    out = tmp_path / "out.safetensors"
    db.export_model("hf", out)
    assert_bit_identical(arrays, numpy_dict(load_file(out)))


def test_npz_roundtrip(db, rng, tmp_path: Path):
    arrays = model_arrays(rng, NUMPY_DTYPES)
    np.savez(tmp_path / "m.npz", **arrays)
    db.import_model(tmp_path / "m.npz", name="m")
    db.export_model("m", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as loaded:
        assert_bit_identical(arrays, dict(loaded))


def test_big_endian_npz_is_stored_little_endian(db, tmp_path: Path):
    values = np.arange(40, dtype=">i4").reshape(5, 8)
    np.savez(tmp_path / "be.npz", w=values)
    db.import_model(tmp_path / "be.npz", name="be")
    assert np.array_equal(db.tensors("be")["w"].read(), values)


def test_pytorch_state_dict_roundtrip(db, rng, tmp_path: Path):
    arrays = model_arrays(rng, ALL_DTYPES)
    torch.save(torch_dict(arrays), tmp_path / "m.pt")
    info = db.import_model(tmp_path / "m.pt", name="m")
    assert info.format == "pytorch"
    db.export_model("m", tmp_path / "out.safetensors")
    assert_bit_identical(arrays, numpy_dict(load_file(tmp_path / "out.safetensors")))


def test_pytorch_module_state_dict_with_tied_weights(db, tmp_path: Path):
    module = torch.nn.Sequential(torch.nn.Embedding(50, 12), torch.nn.Linear(12, 50))
    module[1].weight = module[0].weight  # tied, as in language models
    torch.save(module.state_dict(), tmp_path / "tied.pt")
    db.import_model(tmp_path / "tied.pt", name="tied")
    stored = db.tensors("tied")
    assert np.array_equal(stored["0.weight"].read(), stored["1.weight"].read())
    # Tied tensors are the same bytes, so their blocks are stored once.
    assert db.stats()["stored_bytes"] == 50 * 12 * 4 + 50 * 4


def onnx_model(rng) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    initializers = {
        "w.float32": make_array(rng, "float32", (37, 29)),
        "w.float16": make_array(rng, "float16", (3, 4, 5, 20)),
        "w.bfloat16": make_array(rng, "bfloat16", (300,)),
        "w.int64": make_array(rng, "int64", (40,)),
        "w.int8": make_array(rng, "int8", (17, 33)),
        "shape": np.array([1, -1], dtype=np.int64),  # small: stays inline in the graph
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w.float32"], ["y"]),
            helper.make_node("Reshape", ["y", "shape"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 37])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 29])],
        initializer=[numpy_helper.from_array(a, n) for n, a in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model, initializers


def test_onnx_roundtrip(db, rng, tmp_path: Path):
    model, initializers = onnx_model(rng)
    onnx.save(model, tmp_path / "m.onnx")
    info = db.import_model(tmp_path / "m.onnx", name="m")
    assert info.has_graph and info.tensors == 6  # the shape constant stays inline, counted
    db.export_model("m", tmp_path / "out.onnx")
    exported = onnx.load(tmp_path / "out.onnx")
    assert [t.name for t in exported.graph.initializer] == list(initializers)
    assert_bit_identical(
        initializers, {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    )
    assert exported.graph.node == model.graph.node
    db.export_model("m", tmp_path / "out.safetensors")
    assert set(load_file(tmp_path / "out.safetensors")) == set(initializers) - {"shape"}


def test_onnx_with_external_data_roundtrip(db, rng, tmp_path: Path):
    # Weights beside the model file are mapped, not loaded (a model over protobuf's 2 GiB limit
    # cannot be one message); small ones (the shape constant) go back inline into the graph.
    model, initializers = onnx_model(rng)
    onnx.save(
        model,
        tmp_path / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.data",
        size_threshold=0,
    )
    info = db.import_model(tmp_path / "m.onnx", name="m")
    assert info.tensors == 6  # the shape constant counted with the stored tensors
    db.export_model("m", tmp_path / "out.onnx")
    exported = onnx.load(tmp_path / "out.onnx")
    assert_bit_identical(
        initializers, {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    )
    (tmp_path / "m.data").write_bytes((tmp_path / "m.data").read_bytes()[:1000])
    with pytest.raises(SourceFormatError, match="truncated or mismatched"):
        db.import_model(tmp_path / "m.onnx", name="cut")
