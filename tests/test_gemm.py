"""Row tiling of products (engine.gemm): a row's bits do not depend on the batch around it,
for operand shapes that meet every kernel OpenBLAS picks (matrix-vector, small-matrix, tails
of unrolled groups, packed)."""

import numpy as np
import pytest
import threadpoolctl

from weightdb.engine import gemm, threads

SHAPES = [(1024, 128), (2048, 128), (1024, 10), (288, 8), (54, 2), (9, 32), (384, 4)]
SIZES = (1, 2, 3, 5, 8, 9, 16, 17, 100, 511, 513, 700)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_batch_size_gives_a_row_the_same_bits(shape):
    rng = np.random.default_rng(7)
    operand = rng.standard_normal(shape, dtype=np.float32)
    x = rng.standard_normal((max(SIZES), shape[0]), dtype=np.float32)
    whole = gemm.product(x, operand)
    for size in SIZES:
        for start in range(0, max(SIZES) - size + 1, max(size, 97)):
            part = gemm.product(x[start : start + size], operand)
            assert part.tobytes() == whole[start : start + size].tobytes(), (size, start)


def test_a_tiling_pads_small_batches_to_one_call_and_large_ones_to_whole_steps():
    flexible = gemm.Tiling(min_rows=8, max_rows=512, step=16)
    assert [flexible.padded_rows(r) for r in (1, 8, 9, 16, 17, 600)] == [8, 8, 16, 16, 32, 608]
    fixed = gemm.Tiling(8, 8, 8)
    assert [fixed.padded_rows(r) for r in (1, 8, 9, 20)] == [8, 8, 16, 24]


def test_large_batches_are_cut_into_near_equal_calls_of_whole_steps(monkeypatch):
    calls = []
    real = np.matmul

    def counting(a, b, out=None):
        calls.append(a.shape[0])
        return real(a, b, out=out)

    monkeypatch.setattr(gemm.np, "matmul", counting)
    cut = gemm.Tiling(min_rows=8, max_rows=512, step=16)
    x = np.ones((1040, 4), np.float32)
    gemm.multiply(x, np.ones((4, 3), np.float32), np.empty((1040, 3), np.float32), cut)
    assert calls == [336, 352, 352]


@pytest.mark.parametrize(
    "shape", [(1024, 128), (256, 64), (288, 32)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_products_shared_among_workers_give_the_same_bits(shape):
    """Calls cut finer for two workers stay within the tiling, so the bits do not change; so
    do stacks of matrices cut along their first axis."""
    rng = np.random.default_rng(8)
    operand = rng.standard_normal(shape, dtype=np.float32)
    x = rng.standard_normal((3000, shape[0]), dtype=np.float32)
    a = rng.standard_normal((6, 4, 300, 32), dtype=np.float32)
    b = rng.standard_normal((6, 4, 32, 300), dtype=np.float32)
    with threadpoolctl.threadpool_limits(1):
        alone, stacked = gemm.product(x, operand), gemm.matmul(a, b)
    with threadpoolctl.threadpool_limits(2), threads.engine_threads():
        assert threads.workers() == 2
        assert gemm.product(x, operand).tobytes() == alone.tobytes()
        assert gemm.matmul(a, b).tobytes() == stacked.tobytes()
