"""Bounded fuzzing of every importer, the config and the catalog.

Valid files are mutated (truncation, bit flips, overwritten spans, hostile numbers in place of
numbers, deep nesting, wrong types, symlinks out of the source). Every outcome must be a success
or a WeightDBError with a one-line message: no traceback, no hang, and no file outside the
source read. Each test has a fixed seed and stops after a few seconds, whatever it reached.
"""

import faulthandler
import json
import os
import re
import shutil
import sqlite3
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.numpy import save_file

import weightdb
from weightdb.errors import WeightDBError
from weightdb.storage.settings import Settings

SMALL = Settings(block_rows=16, block_cols=8, page_size=8192)
CASES = 150  # per fuzzer: a fixed count, so a seed names the same cases on any machine
HANG_SECONDS = 120  # one case taking this long is a hang: dump every stack and fail the run

HOSTILE_NUMBERS = [
    b"-1",
    b"0",
    b"-9223372036854775809",
    b"18446744073709551617",
    b"1" * 400,
    b"1.5",
    b"1e308",
    b"Infinity",
    b"NaN",
    b'"8"',
    b"null",
    b"true",
    b"{}",
    b"[" * 5000 + b"]" * 5000,
]

_opened: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        _opened.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_record_opens)


@contextmanager
def opened_files() -> Iterator[list[str]]:
    """Real paths of every file opened inside the ``with`` block, symlinks resolved."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: truncation, bit flips, a random span, or a number made hostile."""
    kind = rng.integers(4)
    if kind == 0 or not data:
        return data[: rng.integers(len(data) + 1)]
    out = bytearray(data)
    if kind == 1:
        for _ in range(rng.integers(1, 9)):
            out[rng.integers(len(out))] ^= 1 << rng.integers(8)
        return bytes(out)
    if kind == 2:
        start = rng.integers(len(out))
        out[start : start + rng.integers(1, 32)] = rng.bytes(rng.integers(1, 32))
        return bytes(out)
    numbers = list(re.finditer(rb"-?\d+", data))
    if not numbers:
        return data
    match = numbers[rng.integers(len(numbers))]
    hostile = HOSTILE_NUMBERS[rng.integers(len(HOSTILE_NUMBERS))]
    return data[: match.start()] + hostile + data[match.end() :]


def fuzz(case: Callable[[int, np.random.Generator], None], seed: int) -> None:
    """Run ``CASES`` cases with a fixed seed, failing the run on a hang."""
    rng = np.random.default_rng(seed)
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        for run in range(CASES):
            case(run, rng)
    finally:
        faulthandler.cancel_dump_traceback_later()


def outcome(action: Callable[[], object]) -> str:
    """'ok', or the one-line WeightDBError message; any other exception fails the test."""
    try:
        action()
    except WeightDBError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        return message
    return "ok"


def import_and_read(db, source: Path, name: str) -> str:
    def run() -> None:
        db.import_model(source, name=name)
        for tensor in db.tensors(name).values():
            tensor.read()
        db.remove_model(name)

    return outcome(run)


def valid_weights() -> dict[str, np.ndarray]:
    return {
        "w": np.arange(600, dtype=np.float32).reshape(30, 20),
        "b": np.arange(7, dtype=np.int64),
        "e": np.zeros((3, 0), np.float16),
    }


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every source: the fuzzed importers must never open it."""
    path = tmp_path / "secret.safetensors"
    save_file({"s": np.ones(4, np.float32)}, path)
    return path


def fuzz_files(tmp_path: Path, secret: Path, seed: int, build: Callable) -> None:
    """Fuzz one importer: ``build(folder, rng)`` writes a mutated source into ``folder``
    and returns its path; each is imported into one database."""
    results, read_source = [], []
    with weightdb.connect(tmp_path / "db", settings=SMALL) as db:

        def case(run: int, rng: np.random.Generator) -> None:
            folder = tmp_path / f"case{run}"
            folder.mkdir()
            source = build(folder, rng)
            with opened_files() as opened:
                results.append(import_and_read(db, source, f"m{run}"))
            assert str(secret) not in opened
            read_source.append(any(path.startswith(str(folder.resolve())) for path in opened))
            shutil.rmtree(folder)

        fuzz(case, seed)
        assert db.models() == []
        assert db.verify() == db.stats()["pages"]
    assert any(read_source)  # the audit hook sees the importers' reads
    assert "ok" in results and len(set(results)) > 2, results[:5]


def test_fuzz_safetensors(tmp_path, secret):
    save_file(valid_weights(), tmp_path / "valid.safetensors")
    valid = (tmp_path / "valid.safetensors").read_bytes()

    def build(folder: Path, rng: np.random.Generator) -> Path:
        data = valid if rng.random() < 0.1 else mutate(valid, rng)
        (folder / "m.safetensors").write_bytes(data)
        return folder / "m.safetensors"

    fuzz_files(tmp_path, secret, 1, build)


def test_fuzz_safetensors_header_structure(tmp_path, secret):
    """Well-formed JSON of the wrong shape: each value of each record swapped for another."""
    header = {
        "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "__metadata__": {"format": "np"},
    }
    values = [None, True, -1, 2**63, 2**64, 1.5, "F32", "8", [], [[]], {}, [1] * 40, [-1, 2]]

    def build(folder: Path, rng: np.random.Generator) -> Path:
        record = json.loads(json.dumps(header))
        target = record["w"] if rng.random() < 0.8 else record
        key = list(target)[rng.integers(len(target))]
        target[key] = values[rng.integers(len(values))]
        raw = json.dumps(record).encode()
        data = len(raw).to_bytes(8, "little") + raw + bytes(24)
        (folder / "m.safetensors").write_bytes(data)
        return folder / "m.safetensors"

    fuzz_files(tmp_path, secret, 2, build)


def test_fuzz_npz(tmp_path, secret):
    np.savez(tmp_path / "valid.npz", **valid_weights())
    with zipfile.ZipFile(tmp_path / "valid.npz") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    valid = (tmp_path / "valid.npz").read_bytes()

    def build(folder: Path, rng: np.random.Generator) -> Path:
        path = folder / "m.npz"
        if rng.random() < 0.3:
            path.write_bytes(mutate(valid, rng))
            return path
        with zipfile.ZipFile(path, "w") as archive:  # damage inside a member, CRC still right
            for name, data in members.items():
                archive.writestr(name, mutate(data, rng) if rng.random() < 0.5 else data)
        return path

    fuzz_files(tmp_path, secret, 3, build)


def onnx_model(external: bool) -> onnx.ModelProto:
    weights = onnx.numpy_helper.from_array(np.ones((40, 40), np.float32), "w")
    if external:
        weights.ClearField("raw_data")
        weights.data_location = onnx.TensorProto.EXTERNAL
        for key, value in {"location": "w.bin", "offset": "0", "length": "6400"}.items():
            entry = weights.external_data.add()
            entry.key, entry.value = key, value
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [40, 40])],
        initializer=[weights],
    )
    return onnx.helper.make_model(graph)


def test_fuzz_onnx(tmp_path, secret):
    inline = onnx_model(external=False).SerializeToString()
    external = onnx_model(external=True).SerializeToString()
    weights = np.ones((40, 40), np.float32).tobytes()

    def build(folder: Path, rng: np.random.Generator) -> Path:
        model = external if rng.random() < 0.5 else inline
        (folder / "m.onnx").write_bytes(mutate(model, rng))
        if rng.random() < 0.2:
            (folder / "w.bin").symlink_to(secret)
        else:
            (folder / "w.bin").write_bytes(mutate(weights, rng) if rng.random() < 0.3 else weights)
        return folder / "m.onnx"

    fuzz_files(tmp_path, secret, 4, build)


def test_fuzz_pytorch(tmp_path, secret):
    torch.save({k: torch.from_numpy(v) for k, v in valid_weights().items()}, tmp_path / "v.pt")
    valid = (tmp_path / "v.pt").read_bytes()

    def build(folder: Path, rng: np.random.Generator) -> Path:
        (folder / "m.pt").write_bytes(mutate(valid, rng) if rng.random() < 0.9 else valid)
        return folder / "m.pt"

    fuzz_files(tmp_path, secret, 5, build)


def test_fuzz_hugging_face_folder(tmp_path, secret):
    weights = valid_weights()
    shards = {"a.safetensors": {"w": weights["w"]}, "b.safetensors": {"b": weights["b"]}}
    for shard, tensors in shards.items():
        save_file(tensors, tmp_path / shard)
    index = json.dumps({"weight_map": {"w": "a.safetensors", "b": "b.safetensors"}}).encode()
    files = {
        "model.safetensors.index.json": index,
        "config.json": b'{"hidden_size": 20}',
        **{shard: (tmp_path / shard).read_bytes() for shard in shards},
    }

    def build(folder: Path, rng: np.random.Generator) -> Path:
        damaged = list(files)[rng.integers(len(files))]
        for name, data in files.items():
            if name != damaged:
                (folder / name).write_bytes(data)
            elif rng.random() < 0.25:
                (folder / name).symlink_to(secret)
            else:
                (folder / name).write_bytes(mutate(data, rng))
        return folder

    fuzz_files(tmp_path, secret, 6, build)


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    path = tmp_path / "healthy"
    with weightdb.connect(path, settings=SMALL) as db:
        db.import_arrays("a", valid_weights())
        db.import_model(_onnx_file(tmp_path), name="g")
    with sqlite3.connect(path / "catalog.sqlite") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def _onnx_file(tmp_path: Path) -> Path:
    onnx.save(onnx_model(external=False), tmp_path / "g.onnx")
    return tmp_path / "g.onnx"


def use_database(path: Path, tmp_path: Path) -> list[str]:
    """Everything a user might do first with a database: each a success or a WeightDBError."""
    results = []

    def session() -> None:
        with weightdb.connect(path, create=False) as db:
            actions = [
                db.models,
                db.stats,
                lambda: db.export_model("a", tmp_path / "a.npz"),
                lambda: db.export_model("g", tmp_path / "g.onnx"),
                lambda: db.predict("g", {}),
                lambda: db.import_arrays("new", {"x": np.ones((5, 5))}),
                db.verify,
            ]
            results.extend(outcome(action) for action in actions)

    results.append(outcome(session))
    return results


def fuzz_database_file(tmp_path: Path, healthy: Path, file: str, seed: int) -> None:
    results = []
    valid = (healthy / file).read_bytes()

    def case(run: int, rng: np.random.Generator) -> None:
        copy = tmp_path / f"case{run}"
        shutil.copytree(healthy, copy)
        (copy / file).write_bytes(mutate(valid, rng))
        results.extend(use_database(copy, tmp_path))
        shutil.rmtree(copy)

    fuzz(case, seed)
    assert "ok" in results and len(set(results)) > 2, results[:5]


def test_fuzz_catalog(tmp_path, healthy):
    fuzz_database_file(tmp_path, healthy, "catalog.sqlite", 7)


def test_fuzz_config(tmp_path, healthy):
    fuzz_database_file(tmp_path, healthy, "config.toml", 8)
