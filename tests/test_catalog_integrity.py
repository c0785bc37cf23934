"""One changed value in the catalog rows a model is read through is an error, never wrong
weights: on predict and export, in verify (naming model and tensor), and before any writer
would rewrite the damaged rows."""

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import weightdb
from weightdb.errors import CatalogCorruptError, WeightDBError
from weightdb.storage import verify
from weightdb.storage.catalog import CATALOG_VERSION, Catalog
from weightdb.storage.settings import Settings

SMALL = Settings(block_rows=16, block_cols=8, page_size=8192)

TAMPERING = {
    "tensor dtype": "UPDATE tensors SET dtype = 'int32' WHERE name = 'w'",
    "tensor shape": "UPDATE tensors SET shape = '[20, 30]' WHERE name = 'w'",
    "block id + 1": "UPDATE tensor_blocks SET block_id = block_id + 1 WHERE block_row = 1 "
    "AND block_col = 0 AND tensor_id = (SELECT tensor_id FROM tensors WHERE name = 'w')",
    "block position": "UPDATE tensor_blocks SET block_row = 99 WHERE block_row = 1 "
    "AND block_col = 0 AND tensor_id = (SELECT tensor_id FROM tensors WHERE name = 'w')",
    "block slot": "UPDATE blocks SET slot = slot + 1 WHERE block_id = "
    "(SELECT MIN(block_id) FROM tensor_blocks JOIN tensors USING (tensor_id) WHERE name = 'w')",
    "block digest": "UPDATE blocks SET digest = zeroblob(32) WHERE block_id = "
    "(SELECT MIN(block_id) FROM tensor_blocks JOIN tensors USING (tensor_id) WHERE name = 'w')",
    "digest row deleted": "DELETE FROM tensor_digests WHERE tensor_id = "
    "(SELECT tensor_id FROM tensors WHERE name = 'w')",
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    rng = np.random.default_rng(7)
    with weightdb.connect(path, settings=SMALL) as db:
        db.import_arrays("m", {"w": rng.standard_normal((30, 20)).astype(np.float32)})
        db.import_arrays("other", {"v": np.arange(64, dtype=np.float32)})
    return path


def tamper(db_path: Path, statement: str) -> None:
    with sqlite3.connect(db_path / "catalog.sqlite") as conn:
        assert conn.execute(statement).rowcount == 1


@pytest.mark.parametrize("label", TAMPERING)
def test_a_changed_catalog_row_is_reported_by_model_and_tensor(db_path, tmp_path, label):
    tamper(db_path, TAMPERING[label])
    with weightdb.connect(db_path, create=False) as db:
        with pytest.raises(CatalogCorruptError, match="model 'm' tensor 'w' do not match"):
            db.export_model("m", tmp_path / "m.safetensors")
        with pytest.raises(CatalogCorruptError, match=r"digests for model 'm' tensor 'w':"):
            db.verify()
        assert db.tensors("other")["v"].read().tolist() == list(range(64))
        with pytest.raises(CatalogCorruptError, match="so nothing was changed"):
            db.pack()
    assert not (tmp_path / "m.safetensors").exists()


def test_a_changed_model_row_is_reported_before_its_graph_is_used(db_path):
    tamper(db_path, "UPDATE models SET metadata = '{\"x\": 1}' WHERE name = 'm'")
    with weightdb.connect(db_path, create=False) as db:
        with pytest.raises(CatalogCorruptError, match="rows of model 'm' do not match"):
            db.graph("m")
        with pytest.raises(CatalogCorruptError, match=r"digests for model 'm':"):
            db.verify()


def test_block_bytes_that_disagree_with_their_digest_are_reported_by_verify(db_path, monkeypatch):
    """A page rewritten with a valid checksum but other bytes: only the digest can tell."""
    monkeypatch.setattr(verify, "block_digest", lambda *block: bytes(32))
    with (
        weightdb.connect(db_path, create=False) as db,
        pytest.raises(CatalogCorruptError, match=r"block 1 on page 1 .* model 'm' tensor"),
    ):
        db.verify()


def test_every_writer_keeps_the_digests_right(db_path, tmp_path):
    with weightdb.connect(db_path, create=False) as db:
        db.import_arrays("third", {"u": np.ones((40, 9), np.float32)})
        db.pack()
        db.remove_model("other")
        assert db.verify() == db.stats()["pages"]
        db.export_model("m", tmp_path / "m.npz")


def test_a_version_1_catalog_gains_digests_when_first_opened(db_path):
    with sqlite3.connect(db_path / "catalog.sqlite") as conn:
        conn.execute("DROP TABLE tensor_digests")
        conn.execute("DROP TABLE model_digests")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'catalog_version'")
    with weightdb.connect(db_path, create=False) as db:
        assert db.store.catalog.get_meta("catalog_version") == str(CATALOG_VERSION)
        assert db.verify() == db.stats()["pages"]
    tamper(db_path, TAMPERING["tensor dtype"])
    with (
        weightdb.connect(db_path, create=False) as db,
        pytest.raises(CatalogCorruptError, match="tensor 'w'"),
    ):
        db.tensors("m")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("page", [0, 1, 2, 3])
def test_a_damaged_catalog_file_is_one_line_saying_what_to_do(db_path, page):
    """A flipped byte in a b-tree page header: SQLite calls the file malformed."""
    with sqlite3.connect(db_path / "catalog.sqlite") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    flip_byte(db_path / "catalog.sqlite", page * page_size + (100 if page == 0 else 0))
    with (
        pytest.raises(CatalogCorruptError, match="restore it from a backup") as caught,
        weightdb.connect(db_path, create=False) as db,
    ):
        db.verify()
    assert "\n" not in str(caught.value)


def test_a_damaged_config_file_is_one_line_saying_what_to_do(db_path):
    flip_byte(db_path / "config.toml", 3)
    with pytest.raises(
        WeightDBError, match=r"config\.toml are damaged; restore the file"
    ) as caught:
        weightdb.connect(db_path, create=False)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("page_size", "1e9", "page_size = 1000000000.0 is not of type int"),
        ("block_rows", '"8"', "block_rows = '8' is not of type int"),
        ("page_size", str(2**64), "over the 1073741824 bytes"),
        ("segment_bytes", str(2**50), "at most 1099511627776 bytes"),
    ],
)
def test_config_values_of_the_wrong_type_or_size_are_refused(db_path, key, value, message):
    config = db_path / "config.toml"
    text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", config.read_text())
    config.write_text(text)
    with pytest.raises(WeightDBError, match=re.escape(message)):
        weightdb.connect(db_path, create=False)


def test_weights_are_read_from_the_rows_a_second_look_found_intact(db_path, monkeypatch):
    """Readers run outside transactions: a writer may commit between two looks at the rows.
    Damage the second look does not confirm is not reported, and the block places come from
    the rows that look checked, not from the damaged ones."""
    original = np.random.default_rng(7).standard_normal((30, 20)).astype(np.float32)
    tamper(db_path, TAMPERING["block position"])
    moved_back = TAMPERING["block position"].replace(
        "block_row = 99 WHERE block_row = 1", "block_row = 1 WHERE block_row = 99"
    )
    real, looks = Catalog._mapped_tensors, []

    def mend_after_first_look(catalog, model_id):
        found = real(catalog, model_id)
        looks.append(model_id)
        if len(looks) == 1:
            tamper(db_path, moved_back)  # a writer's commit between the looks
        return found

    with weightdb.connect(db_path, create=False) as db:
        monkeypatch.setattr(Catalog, "_mapped_tensors", mend_after_first_look)
        assert np.array_equal(db.tensors("m")["w"].read(), original)
    assert len(looks) == 2
