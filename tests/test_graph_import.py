"""Weights find their graph: a weights file with an ONNX file's graph, a Hugging Face BERT folder
with the graph transformers builds, and listings that say which models can predict."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fakes import export, relative_error
from safetensors.numpy import load_file, save_file
from torch_models import MLP

import weightdb
from weightdb.engine import UnsupportedModelError
from weightdb.errors import SourceFormatError
from weightdb.storage.catalog.models import NO_GRAPH

FEATURES = np.random.default_rng(7).standard_normal((13, 100)).astype(np.float32)


@pytest.fixture(scope="module")
def mlp_files(tmp_path_factory) -> dict[str, Path]:
    """One MLP as an ONNX file and its state dict as .safetensors, .pt and .npz."""
    folder = tmp_path_factory.mktemp("mlp")
    torch.manual_seed(3)
    module = MLP()
    state = {name: t.detach().clone() for name, t in module.state_dict().items()}
    arrays = {name: t.numpy() for name, t in state.items()}
    save_file(arrays, folder / "mlp.safetensors")
    torch.save(state, folder / "mlp.pt")
    np.savez(folder / "mlp.npz", **arrays)
    export(module, (torch.randn(2, 100),), folder / "mlp.onnx", ["x"], {"x": {0: "batch"}})
    return {"onnx": folder / "mlp.onnx", "arrays": arrays, "folder": folder}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".npz"])
def test_weights_with_graph_predict_as_the_onnx_file_does(db, mlp_files, suffix):
    whole = db.import_model(mlp_files["onnx"], name="whole")
    weights = mlp_files["folder"] / f"mlp{suffix}"
    info = db.import_model(weights, name="parts", graph=mlp_files["onnx"])

    assert info.can_predict and info.cannot_predict_because is None
    assert info.tensors == whole.tensors == 6  # 3 weights, 3 biases (ONNX keeps 1 inline)
    got, want = db.predict("parts", {"x": FEATURES}), db.predict("whole", {"x": FEATURES})
    assert got.keys() == want.keys() == {"output"}
    assert np.array_equal(got["output"], want["output"])  # bit-identical


def test_weights_with_graph_export_as_both(db, mlp_files, tmp_path):
    db.import_model(mlp_files["folder"] / "mlp.safetensors", name="m", graph=mlp_files["onnx"])
    db.export_model("m", tmp_path / "m.safetensors")
    db.export_model("m", tmp_path / "m.onnx")
    exported = load_file(tmp_path / "m.safetensors")
    assert exported.keys() == mlp_files["arrays"].keys()
    for name, array in mlp_files["arrays"].items():
        assert np.array_equal(exported[name], array)
    again = db.import_model(tmp_path / "m.onnx", name="again")
    assert again.can_predict
    assert np.array_equal(
        db.predict("again", {"x": FEATURES})["output"], db.predict("m", {"x": FEATURES})["output"]
    )


def _refused(db, tmp_path, onnx_path, arrays) -> str:
    weights = tmp_path / "w.safetensors"
    save_file(arrays, weights)
    with pytest.raises(SourceFormatError) as error:
        db.import_model(weights, name="bad", graph=onnx_path)
    assert db.models() == []
    return str(error.value)


@pytest.mark.parametrize(
    ("drop", "add", "message"),
    [
        (
            "layers.2.weight",
            {},
            "safetensors weights with graph mlp.onnx: the graph needs tensors the weights lack: "
            "'layers.2.weight'; export the weights from the same model as the graph, or import "
            "the ONNX file itself",
        ),
        (
            None,
            {"head.weight": np.zeros((4, 4), np.float32)},
            "safetensors weights with graph mlp.onnx: the graph does not use tensors "
            "'head.weight'; remove them from the weights, or use the graph of the model they "
            "come from",
        ),
        (
            None,
            {"layers.0.weight": np.zeros((70, 99), np.float32)},
            "safetensors weights with graph mlp.onnx: tensor 'layers.0.weight' is "
            "float32[70, 99] but the graph needs float32[70, 100]; export the weights from the "
            "same model as the graph",
        ),
    ],
    ids=["missing_tensor", "extra_tensor", "wrong_shape"],
)
def test_mismatched_weights_are_refused(db, tmp_path, mlp_files, drop, add, message):
    arrays = {k: v for k, v in mlp_files["arrays"].items() if k != drop} | add
    assert _refused(db, tmp_path, mlp_files["onnx"], arrays) == message


def test_wrong_dtype_of_a_small_constant_is_refused(db, tmp_path, mlp_files):
    arrays = {**mlp_files["arrays"], "layers.4.bias": np.zeros(10, np.float64)}
    assert "tensor 'layers.4.bias' is float64[10] but the graph needs float32[10]" in _refused(
        db, tmp_path, mlp_files["onnx"], arrays
    )


def test_graph_must_be_an_onnx_file(db, mlp_files):
    weights = mlp_files["folder"] / "mlp.safetensors"
    with pytest.raises(SourceFormatError, match=r"graph .*mlp\.npz is not an existing \.onnx"):
        db.import_model(weights, name="m", graph=mlp_files["folder"] / "mlp.npz")
    with pytest.raises(SourceFormatError, match="already holds a graph; import it without"):
        db.import_model(mlp_files["onnx"], name="m", graph=mlp_files["onnx"])


def test_listings_say_which_models_can_predict(db, mlp_files):
    db.import_model(mlp_files["onnx"], name="net")
    db.import_model(mlp_files["folder"] / "mlp.npz", name="weights")
    infos = {m.name: m for m in db.models()}
    assert infos["net"].can_predict and infos["net"].cannot_predict_because is None
    assert not infos["weights"].can_predict
    assert infos["weights"].cannot_predict_because == NO_GRAPH
    # The ONNX import keeps its 40-byte bias inside the graph, and still counts it.
    assert infos["net"].tensors == infos["weights"].tensors == 6
    assert db.stats()["tensors"] == 12


def test_cli_import_with_graph_and_ls(tmp_path, mlp_files):
    env = {**os.environ, "WEIGHTDB_DB": str(tmp_path / "db"), "COLUMNS": "200"}

    def cli(*args):
        run = [sys.executable, "-m", "weightdb", *args]
        return subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)

    assert cli("init", env["WEIGHTDB_DB"]).returncode == 0
    weights = str(mlp_files["folder"] / "mlp.safetensors")
    done = cli("import", weights, "--name", "net", "--graph", str(mlp_files["onnx"]))
    assert done.returncode == 0, done.stderr
    assert "imported net: 6 tensors" in done.stdout and "can predict" in done.stdout
    done = cli("import", weights, "--name", "bare")
    assert f"cannot predict: {NO_GRAPH}" in " ".join(done.stdout.split())
    listing = json.loads(cli("ls", "--json").stdout)
    assert {m["name"]: m["can_predict"] for m in listing} == {"bare": False, "net": True}
    assert f"bare: cannot predict: {NO_GRAPH}" in " ".join(cli("ls").stdout.split())


# -- Hugging Face folders ------------------------------------------------------------------

TINY_BERT = {
    "vocab_size": 120,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
}


def _bert_folder(folder: Path, head: bool = False) -> "torch.nn.Module":
    """A tiny BERT with random (not initial) weights saved by transformers in ``folder``."""
    import transformers

    config = transformers.BertConfig(**TINY_BERT)
    torch.manual_seed(11)
    model = (transformers.BertForMaskedLM if head else transformers.BertModel)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    return model.bert if head else model


@pytest.mark.parametrize("head", [False, True], ids=["encoder", "masked-lm"])
def test_bert_folder_gets_its_graph(db, tmp_path, head):
    encoder = _bert_folder(tmp_path / "bert", head)
    info = db.import_model(tmp_path / "bert", name="bert")
    assert info.can_predict, info.cannot_predict_because

    ids = np.random.default_rng(2).integers(0, 120, (3, 11))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # padding exercises the attention mask
    got = db.predict("bert", {"input_ids": ids, "attention_mask": mask})["last_hidden_state"]
    with torch.no_grad():
        want = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    want = want.last_hidden_state.numpy()
    # Not bit-identical: weightdb sums each dot product in its own (batch-invariant) order,
    # torch in its BLAS's, and float32 rounding differs in the last bits of each product.
    assert got.shape == want.shape == (3, 11, 32)
    assert relative_error(got, want) < 1e-5


def test_bert_weights_stream_through_the_pool(tmp_path):
    """A pool smaller than the encoder reads its weights again on every prediction: they are
    not copied whole into the compiled model (its Linear layers run as streamed Gemms)."""
    _bert_folder(tmp_path / "bert")
    settings = weightdb.Settings(block_rows=16, block_cols=8, page_size=8192)
    with weightdb.connect(tmp_path / "db", settings=settings, budget="24KiB") as db:
        info = db.import_model(tmp_path / "bert", name="bert")
        assert info.logical_bytes > 3 * 24 * 1024
        feeds = {
            "input_ids": np.ones((2, 5), np.int64),
            "attention_mask": np.ones((2, 5), np.int64),
        }
        first = db.predict("bert", feeds)["last_hidden_state"]
        misses = db.pool.stats().misses
        again = db.predict("bert", feeds)["last_hidden_state"]
        assert db.pool.stats().misses >= misses + 5  # of about 12 pages, 3 fit in the pool
    assert np.array_equal(first, again)


def test_bert_folder_is_stored_whole(db, tmp_path):
    """Every tensor of the folder is stored as it is, used by the graph or not (here an int64
    position_ids, as older checkpoints carry)."""
    _bert_folder(tmp_path / "bert")
    weights = tmp_path / "bert" / "model.safetensors"
    folder = {**load_file(weights), "embeddings.position_ids": np.arange(40)[None]}
    save_file(folder, weights)
    info = db.import_model(tmp_path / "bert", name="bert")
    assert info.can_predict
    db.export_model("bert", tmp_path / "out.safetensors")
    exported = load_file(tmp_path / "out.safetensors")
    assert exported.keys() == folder.keys()
    assert all(np.array_equal(exported[name], folder[name]) for name in folder)


def test_half_precision_bert_folder_is_weights_only(db, tmp_path):
    _bert_folder(tmp_path / "bert")
    weights = tmp_path / "bert" / "model.safetensors"
    save_file({k: v.astype(np.float16) for k, v in load_file(weights).items()}, weights)
    info = db.import_model(tmp_path / "bert", name="bert")
    assert info.cannot_predict_because == (
        "its weight embeddings.word_embeddings.weight is float16; graphs are built for float32 "
        "encoders"
    )


def test_a_built_graph_the_engine_cannot_run_is_dropped(db, tmp_path, mlp_files, monkeypatch):
    """A graph weightdb builds itself never blocks the import; a graph the user gives does."""
    monkeypatch.setattr("weightdb.database.unsupported_ops", lambda model: ["Erf (opset 17)"])
    _bert_folder(tmp_path / "bert")
    info = db.import_model(tmp_path / "bert", name="bert")
    assert info.cannot_predict_because == "its graph uses ops weightdb cannot run: Erf (opset 17)"
    assert info.tensors == len(load_file(tmp_path / "bert" / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match="uses ops weightdb cannot run: Erf"):
        db.import_model(mlp_files["folder"] / "mlp.npz", name="m", graph=mlp_files["onnx"])


def _folder_with_config(folder: Path, config: dict) -> Path:
    folder.mkdir()
    save_file({"w": np.ones((4, 4), np.float32)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_other_architecture_is_weights_only_and_says_why(db, tmp_path):
    folder = _folder_with_config(tmp_path / "gpt", {"model_type": "gpt2"})
    info = db.import_model(folder, name="gpt")
    assert not info.can_predict
    assert info.cannot_predict_because == (
        "weightdb builds graphs for bert encoders, and config.json says model_type 'gpt2'; "
        "import an ONNX export of it, or add --graph"
    )


def test_bert_folder_without_transformers_is_weights_only(db, tmp_path, monkeypatch):
    _bert_folder(tmp_path / "bert")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    info = db.import_model(tmp_path / "bert", name="bert")
    assert not info.can_predict
    assert info.cannot_predict_because == (
        "building its graph needs transformers and torch: pip install transformers, then "
        "import it again"
    )


def test_bert_config_that_disagrees_with_the_weights(db, tmp_path):
    _bert_folder(tmp_path / "bert")
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    info = db.import_model(tmp_path / "bert", name="wide")
    assert info.cannot_predict_because == (
        "config.json gives embeddings.word_embeddings.weight the shape [120, 64], the folder "
        "[120, 32]; fix config.json, or add --graph"
    )
    folder = _folder_with_config(tmp_path / "odd", {"model_type": "bert", **TINY_BERT})
    info = db.import_model(folder, name="odd")
    assert info.cannot_predict_because == (
        "config.json's num_hidden_layers 2 is not a layer count the folder's 1 tensors can hold"
    )


class SequenceLinear(torch.nn.Module):
    """A Linear over (batch, tokens, features): exported as MatMul with the weight transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(40, 24)

    def forward(self, x):
        return self.proj(x)


@pytest.mark.parametrize("fold", [True, False])
def test_constant_folding_renames_weights(db, tmp_path, fold):
    module = SequenceLinear().eval()
    path = tmp_path / "seq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, 3, 40),),
            str(path),
            dynamo=False,
            do_constant_folding=fold,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch"}},
        )
    weights = tmp_path / "seq.safetensors"
    save_file({k: v.numpy() for k, v in module.state_dict().items()}, weights)
    if fold:  # the folded, transposed weight has a generated name the state dict lacks
        with pytest.raises(SourceFormatError, match=r"'onnx::MatMul_\d+'.*do_constant_folding"):
            db.import_model(weights, name="seq", graph=path)
        return
    db.import_model(path, name="whole")
    db.import_model(weights, name="seq", graph=path)
    x = np.random.default_rng(4).standard_normal((5, 3, 40)).astype(np.float32)
    (got,), (want,) = db.predict("seq", x).values(), db.predict("whole", x).values()
    assert np.array_equal(got, want)
