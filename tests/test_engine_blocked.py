"""Blockwise kernels of the convolution and the embedding bag against plain numpy, bit for bit,
whichever way storage hands the blocks over."""

import numpy as np
import pytest
import threadpoolctl
from engine_fakes import CountingWeight, PinLedger

from weightdb.engine import InMemoryWeight, threads
from weightdb.engine.blocked import gather_mean, gather_rows, kernel_operand
from weightdb.storage.blocking import layout_for


def _weights(table: np.ndarray, block_shape: tuple[int, int]) -> dict[str, object]:
    memory = InMemoryWeight("table", table, layout_for(table.shape, block_shape))
    return {
        "in memory": memory,
        "blocks": CountingWeight(memory, PinLedger()),
    }


TABLES = {"uniform blocks": (50, 12), "clipped last block": (50, 10)}


@pytest.mark.parametrize("table_shape", TABLES.values(), ids=TABLES)
@pytest.mark.parametrize("axes", [(1,), (2,), (1, 2), (-2,)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_embedding_bag_is_numpys_mean_of_the_gathered_rows(table_shape, axes, keepdims):
    rng = np.random.default_rng(3)
    table = rng.standard_normal(table_shape, dtype=np.float32)
    ids = rng.integers(-50, 50, (5, 3, 4))
    ids[0, 0, :2] = 49, -1  # the last block row is shorter than the others
    want = np.mean(table[ids], axis=axes, keepdims=bool(keepdims))

    for how, weight in _weights(table, (7, 4)).items():
        got = gather_mean(weight, ids, axes=axes, keepdims=keepdims)
        assert got.shape == want.shape, how
        assert got.tobytes() == want.tobytes(), how
        assert gather_rows(weight, ids).tobytes() == table[ids].tobytes(), how


def test_a_bag_gets_the_same_bits_in_any_batch():
    rng = np.random.default_rng(4)
    table = rng.standard_normal((300, 16), dtype=np.float32)
    ids = rng.integers(0, 300, (40, 9))
    for how, weight in _weights(table, (32, 8)).items():
        whole = gather_mean(weight, ids, axes=(1,), keepdims=0)
        alone = [gather_mean(weight, ids[k : k + 1], axes=(1,), keepdims=0) for k in range(40)]
        assert np.concatenate(alone).tobytes() == whole.tobytes(), how


def test_a_bag_shared_among_workers_gets_the_same_bits():
    """Bags large enough to be gathered by two workers (``threads.worth_gathering``) are
    split between them, never within a bag, so every bag sums its rows in the same order."""
    rng = np.random.default_rng(5)
    table = rng.standard_normal((1000, 512), dtype=np.float32)
    ids = rng.integers(0, 1000, (130, 33))
    assert ids.size * table.shape[1] >= threads.MIN_PARALLEL_ELEMENTS
    weight = InMemoryWeight("table", table, layout_for(table.shape, (64, 64)))
    with threadpoolctl.threadpool_limits(1):
        alone = gather_mean(weight, ids, axes=(1,), keepdims=0)
    with threadpoolctl.threadpool_limits(2), threads.engine_threads():
        assert threads.workers() == 2
        shared = gather_mean(weight, ids, axes=(1,), keepdims=0)
    assert shared.tobytes() == alone.tobytes()
    assert alone.tobytes() == np.mean(table[ids], axis=1).tobytes()


@pytest.mark.parametrize("first, end", [(0, 20), (3, 17), (8, 16)])
def test_kernel_operand_is_the_transposed_rows_however_blocks_are_read(first, end):
    matrix = np.random.default_rng(5).standard_normal((20, 27), dtype=np.float32)
    memory = InMemoryWeight("kernel", matrix.reshape(20, 3, 3, 3), layout_for((20, 27), (8, 8)))
    want = matrix[first:end].T
    for weight in (memory, CountingWeight(memory, PinLedger())):
        got = kernel_operand(weight, first, end, np.float32)
        assert got.flags.c_contiguous
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()
