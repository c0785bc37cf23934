"""The Python API's messages where a newcomer goes wrong, and what ``block`` returns."""

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fakes import export

import weightdb
from weightdb.engine import InvalidInputError
from weightdb.errors import WeightDBError


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)

    def forward(self, a, b):
        return self.linear(a + b)


def test_predict_takes_a_bare_array_for_a_single_input_model(db, exported_models):
    db.import_model(exported_models["mlp"], name="net")
    x = np.random.default_rng(0).standard_normal((5, 100)).astype(np.float32)
    assert np.array_equal(db.predict("net", x)["output"], db.predict("net", {"x": x})["output"])


def test_predict_with_a_bare_array_for_two_inputs_says_what_to_pass(db, tmp_path: Path):
    example = (torch.randn(2, 6), torch.randn(2, 6))
    batch = {"a": {0: "batch"}, "b": {0: "batch"}}
    db.import_model(export(TwoInputs(), example, tmp_path / "two.onnx", ["a", "b"], batch), "two")
    with pytest.raises(InvalidInputError) as error:
        db.predict("two", np.zeros((2, 6), np.float32))
    assert str(error.value) == (
        "model 'two' has 2 inputs ['a', 'b'], so one array cannot say which it is; pass a dict "
        "of input name -> array: {'a': ..., 'b': ...}"
    )


def test_predict_without_a_graph_says_how_to_add_one(db):
    db.import_arrays("w", {"w": np.ones((3, 3), np.float32)})
    with pytest.raises(WeightDBError) as error:
        db.predict("w", np.ones((1, 3), np.float32))
    assert str(error.value) == (
        "model 'w' has weights but no graph, so it cannot predict; import it with its ONNX "
        "graph (`weightdb import WEIGHTS --graph MODEL.onnx`)"
    )


@pytest.fixture
def default_db(tmp_path: Path):
    """The default block shape (128x128), as the README's example assumes."""
    with weightdb.connect(tmp_path / "db") as database:
        yield database


def test_block_out_of_range_names_the_grid(default_db):
    default_db.import_arrays("m", {"fc.weight": np.zeros((256, 64), np.float32)})
    tensor = default_db.tensors("m")["fc.weight"]
    with pytest.raises(IndexError) as error, tensor.block(1, 0):
        pass
    assert str(error.value) == (
        "block (1, 0) is outside tensor 'fc.weight': its 256x64 matrix view is a grid of 1 x 1 "
        "blocks of 256x64, so i < 1 and j < 1"
    )
    with pytest.raises(IndexError, match=r"block \(0, -1\) is outside"), tensor.block(0, -1):
        pass


def test_a_narrow_weight_is_one_taller_block_as_the_readme_says(default_db):
    """A [256, 64] weight is one 256x64 block (about 128*128 elements), not a 128x128 one."""
    rng = np.random.default_rng(1)
    narrow, square = rng.standard_normal((256, 64)), rng.standard_normal((256, 256))
    default_db.import_arrays("m", {"narrow": narrow, "square": square})
    tensors = default_db.tensors("m")
    with tensors["narrow"].block(0, 0) as block:
        assert np.array_equal(block, narrow)
    assert tensors["square"].layout.grid == (2, 2)
    with tensors["square"].block(1, 0) as block:
        assert np.array_equal(block, square[128:, :128])
