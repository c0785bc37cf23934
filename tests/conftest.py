"""Shared fixtures: small databases whose block shape makes even tiny tensors span blocks, and
models exported to ONNX once per session."""

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fakes import export
from torch_models import CNN, MLP, TextClassifier, export_minilm

import weightdb
from weightdb.storage.settings import Settings

SMALL = Settings(block_rows=16, block_cols=8, page_size=8192)


@pytest.fixture
def db(tmp_path: Path):
    with weightdb.connect(tmp_path / "db", settings=SMALL) as database:
        yield database


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory) -> dict[str, Path]:
    """MLP, CNN and text classifier as ONNX files (input names x, x, ids; output "output")."""
    folder = tmp_path_factory.mktemp("engine-models")
    batch = {0: "batch"}
    return {
        "mlp": export(MLP(), (torch.randn(2, 100),), folder / "mlp.onnx", ["x"], {"x": batch}),
        "cnn": export(CNN(), (torch.randn(2, 1, 8, 8),), folder / "cnn.onnx", ["x"], {"x": batch}),
        "text": export(
            TextClassifier(),
            (torch.randint(0, 1000, (2, 7)),),
            folder / "text.onnx",
            ["ids"],
            {"ids": {0: "batch", 1: "tokens"}},
        ),
    }


@pytest.fixture(scope="session")
def minilm_onnx(tmp_path_factory) -> Path:
    """The real MiniLM-L6 encoder (inputs input_ids, attention_mask; output "output")."""
    return export_minilm(tmp_path_factory.mktemp("minilm") / "minilm.onnx")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) for every test that needs Ray, started once."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


ZOO_FAMILIES = ["digits-cnn", "text-embedding", "minilm-finetunes", "xml-mlp", "scale"]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every zoo family at its small size, built once per session (seed 0)."""
    from weightdb.zoo.build import build_family

    root = tmp_path_factory.mktemp("zoo")
    for name in ZOO_FAMILIES:
        build_family(name, root / name, "small", seed=0)
    return root
