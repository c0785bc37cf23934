"""Rows gathered straight from pages (``StoredTensor.take_rows``) are the stored rows, whatever
the blocks' order on the page, the clipped edges of the block grid, the pages the blocks lie on
and the budget."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import weightdb

SETTINGS = weightdb.Settings(block_rows=16, block_cols=8, page_size=8192)


def _product_model(path: Path, weight: np.ndarray, transposed: bool) -> Path:
    """x @ W.T as a Gemm with transB (column-major blocks), or x @ W as a MatMul (row-major)."""
    inner, outer = weight.shape[::-1] if transposed else weight.shape
    if transposed:
        node = helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)
    else:
        node = helper.make_node("MatMul", ["x", "W"], ["y"])
    graph = helper.make_graph(
        [node],
        "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outer])],
        [numpy_helper.from_array(weight, "W")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("transposed", [False, True], ids=["row-major", "column-major"])
@pytest.mark.parametrize("budget", [None, 3 * 8192], ids=["unbounded", "three pages"])
def test_taken_rows_are_the_stored_rows(tmp_path, transposed, budget):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 30), dtype=np.float32)  # 16x8 blocks, both edges clipped
    tuned = base.copy()
    tuned[16:40, 8:16] += 1  # a fine-tune: its changed blocks lie on pages of their own
    with weightdb.connect(tmp_path / "db", settings=SETTINGS) as db:
        db.import_model(_product_model(tmp_path / "base.onnx", base, transposed), "base")
        db.import_model(_product_model(tmp_path / "tuned.onnx", tuned, transposed), "tuned")
    ids = rng.integers(0, 50, 200)
    with weightdb.connect(tmp_path / "db", budget=budget) as db:
        for name, matrix in (("base", base), ("tuned", tuned)):
            (weight,) = db.store.tensors(name).values()
            assert weight.take_rows(ids).tobytes() == matrix[ids].tobytes()
            assert weight.take_rows(ids[:0]).shape == (0, 30)
            assert db.pool.stats().pinned_pages == 0
