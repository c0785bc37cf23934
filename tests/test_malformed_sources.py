"""Hostile or damaged source files end in one WeightDBError naming the file, never a traceback,
and declared sizes are checked before any work: an empty tensor costs nothing."""

import errno
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from weightdb.errors import SourceFormatError, StorageFullError, UnsupportedDTypeError
from weightdb.storage.block_writer import BlockWriter
from weightdb.storage.blocking import BlockLayout


def safetensors_bytes(header: str | bytes, data: bytes = b"") -> bytes:
    raw = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def record(shape: object, offsets: object = (0, 0), dtype: str = "F32") -> str:
    return json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}})


SAFETENSORS = {
    "int64 wrap 16x(2**60+1)": (record([16, 2**60 + 1], (0, 64)), "larger than any file"),
    "int64 wrap 2**32 x 2**32": (record([2**32, 2**32], (0, 0)), "larger than any file"),
    "2**70": (record([2**70]), "a number of 22 digits"),
    "Infinity offset": (record([1], (0, 1)).replace("1]}", "Infinity]}"), "Infinity"),
    "5000-digit offset": (record([1], (0, 1)).replace("1]}", "9" * 5000 + "]}"), "5000 digits"),
    "200k-deep JSON": ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    "100 dimensions": (record([1] * 100, (0, 4)), "100 dimensions"),
    "fractional dimension": (record([1.9, 2], (0, 8)), "1.9, not a whole number"),
    "string dimension": (record(["8", "16"], (0, 512)), "'8', not a whole number"),
    "negative offset": (record([1], (-4, 0)), r"-4, outside"),
    "shape not a list": (record(7), "shape 7"),
}


@pytest.mark.parametrize("label", SAFETENSORS)
def test_hostile_safetensors_headers_are_one_line_errors(db, tmp_path, label):
    header, message = SAFETENSORS[label]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(64)))
    with pytest.raises(SourceFormatError, match=message) as caught:
        db.import_model(path, name="bad")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert db.models() == []


def block_visits(monkeypatch) -> list[None]:
    """One entry per block position import or export visits (each asks the layout for bounds)."""
    visits: list[None] = []
    bounds = BlockLayout.bounds
    monkeypatch.setattr(BlockLayout, "bounds", lambda *a: (visits.append(None), bounds(*a))[1])
    return visits


def test_empty_tensor_with_huge_dimensions_costs_nothing(db, tmp_path, monkeypatch):
    """The 81-byte file of the probe: [2**50, 0] used to loop over 2**36 block rows."""
    path = tmp_path / "empty.safetensors"
    path.write_bytes(safetensors_bytes(record([2**50, 0])))
    visits = block_visits(monkeypatch)
    db.import_model(path, name="empty")
    db.export_model("empty", tmp_path / "back.safetensors")
    assert len(visits) <= 4
    exported = (tmp_path / "back.safetensors").read_bytes()
    assert json.loads(exported[8:]) == json.loads(record([2**50, 0]))
    assert db.stats()["distinct_blocks"] == 0


def test_an_empty_tensor_stored_with_a_tall_grid_exports_without_a_loop(db, tmp_path, monkeypatch):
    """Earlier builds cut [2**27, 0] into 2**24 empty block rows, and export looped over them."""
    path = tmp_path / "empty.safetensors"
    path.write_bytes(safetensors_bytes(record([2**27, 0])))
    db.import_model(path, name="empty")
    with db.store.catalog.transaction() as conn:  # the rows such a build wrote, digests recorded
        conn.execute("UPDATE tensors SET block_rows = 8, block_cols = 1")
        db.store.catalog.record_digests([db.store.catalog.model_id("empty")])
    visits = block_visits(monkeypatch)
    db.export_model("empty", tmp_path / "back.npz")
    assert len(visits) <= 4
    assert np.load(tmp_path / "back.npz")["w"].shape == (2**27, 0)


def npz_with(tmp_path: Path, members: dict[str, bytes]) -> Path:
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def npy_bytes(header: str, data: bytes = b"") -> bytes:
    text = header.ljust(117) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode() + data


NPZ = {
    "bad .npy header": ({"w.npy": npy_bytes("{'descr': '<f4', 'shape': (2,")}, "w.npy"),
    "not a .npy member": ({"notes.txt": b"hi"}, "notes.txt"),
    "shape larger than the member": (
        {"w.npy": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2000000,), }")},
        "needs 8000000 bytes",
    ),
    "negative dimension": (
        {"w.npy": npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }")},
        "w.npy",
    ),
}


@pytest.mark.parametrize("label", NPZ)
def test_malformed_npz_members_are_one_line_errors(db, tmp_path, label):
    members, message = NPZ[label]
    path = npz_with(tmp_path, members)
    with pytest.raises(SourceFormatError, match=message) as caught:
        db.import_model(path, name="bad")
    assert str(path) in str(caught.value)


def external_onnx(folder: Path, **fields: str) -> Path:
    weights = onnx.numpy_helper.from_array(np.ones((40, 40), np.float32), "w")
    weights.ClearField("raw_data")
    weights.data_location = onnx.TensorProto.EXTERNAL
    for key, value in {"location": "w.bin", **fields}.items():
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    (folder / "w.bin").write_bytes(bytes(6400))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [40, 40])],
        initializer=[weights],
    )
    onnx.save(onnx.helper.make_model(graph), folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"offset": "-8"}, "offset '-8', not a byte count"), ({"length": "1e3"}, "length '1e3'")],
)
def test_onnx_external_data_with_bad_numbers(db, tmp_path, fields, message):
    with pytest.raises(SourceFormatError, match=message):
        db.import_model(external_onnx(tmp_path, **fields), name="bad")


@pytest.mark.parametrize(
    ("tensor", "error", "message"),
    [
        (torch.ones(4, 4).to(torch.float8_e4m3fn), UnsupportedDTypeError, "float8_e4m3fn"),
        (torch.eye(4).to_sparse(), SourceFormatError, "sparse_coo"),
    ],
)
def test_pytorch_tensors_weightdb_cannot_store(db, tmp_path, tensor, error, message):
    path = tmp_path / "m.pt"
    torch.save({"w": tensor}, path)
    with pytest.raises(error, match=message) as caught:
        db.import_model(path, name="bad")
    assert str(path) in str(caught.value)


def hf_folder(tmp_path: Path) -> Path:
    from safetensors.numpy import save_file

    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"w": np.ones((4, 4), np.float32)}, folder / "part.safetensors")
    return folder


def test_hugging_face_index_that_is_a_list(db, tmp_path):
    folder = hf_folder(tmp_path)
    (folder / "model.safetensors.index.json").write_text("[1, 2]")
    with pytest.raises(SourceFormatError, match="needs an object with a weight_map"):
        db.import_model(folder, name="bad")


@pytest.mark.parametrize("link", ["part.safetensors", "config.json"])
def test_hugging_face_links_out_of_the_folder_are_refused(db, tmp_path, link):
    folder = hf_folder(tmp_path)
    outside = tmp_path / "secret"
    outside.write_bytes((folder / "part.safetensors").read_bytes())
    (folder / link).unlink(missing_ok=True)
    (folder / link).symlink_to(outside)
    with pytest.raises(SourceFormatError, match=f"'{link}' in .* links outside the folder"):
        db.import_model(folder, name="bad")


def test_pytorch_tensor_of_too_many_dimensions(db, tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones([1] * 40)}, path)
    with pytest.raises(SourceFormatError, match="has 40 dimensions, more than the 32"):
        db.import_model(path, name="bad")


def test_an_error_during_import_is_not_hidden_by_closing_the_mapped_file(db, tmp_path, monkeypatch):
    """The probe saw a BufferError from closing the mmap replace the real error."""
    from safetensors.numpy import save_file

    save_file({"w": np.ones((64, 64), np.float32)}, tmp_path / "m.safetensors")

    def disk_full(*block: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlockWriter, "add", disk_full)
    with pytest.raises(StorageFullError, match="is full; nothing of 'm' was imported"):
        db.import_model(tmp_path / "m.safetensors", name="m")
