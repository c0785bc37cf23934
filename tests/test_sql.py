"""SQL over feature tables: predictions equal db.predict; bad calls fail with clear errors."""

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import weightdb
from weightdb.sql.session import SQLError

ROWS = 10_000


@pytest.fixture(scope="module")
def sql_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("sql") / "db"
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.Tanh(), torch.nn.Linear(64, 5))
    other = torch.nn.Sequential(torch.nn.Linear(30, 5))
    with weightdb.connect(path, settings=weightdb.Settings(16, 16, 16384)) as db:
        for name, module in (("mlp", mlp), ("linear", other)):
            db.from_torch(module, (torch.zeros(1, 30),), name=name, input_names=["x"])
        features = np.random.default_rng(0).standard_normal((ROWS, 30)).astype(np.float32)
        db.load_table(
            "customers",
            pa.table({"id": np.arange(ROWS), "features": pa.array(list(features))}),
        )
        yield db, features


def column(table: pa.Table, name: str) -> np.ndarray:
    return np.array(table[name].to_pylist())


def test_predict_over_10000_rows_equals_db_predict(sql_db):
    db, features = sql_db
    result = db.sql("SELECT id, predict('mlp', features) AS y FROM customers ORDER BY id")
    expected = db.predict("mlp", {"x": features})["output_0"]
    assert np.array_equal(column(result, "y").astype(np.float32), expected)


def test_predict_label_is_the_argmax(sql_db):
    db, features = sql_db
    result = db.sql("SELECT predict_label('mlp', features) AS label FROM customers ORDER BY id")
    expected = db.predict("mlp", {"x": features})["output_0"].argmax(axis=1)
    assert np.array_equal(column(result, "label"), expected)


def test_the_model_can_be_a_column(sql_db):
    db, features = sql_db
    result = db.sql(
        "SELECT id, CASE WHEN id % 2 = 0 THEN 'mlp' ELSE 'linear' END AS model, "
        "predict(model, features) AS y FROM customers ORDER BY id"
    )
    y = column(result, "y").astype(np.float32)
    assert np.array_equal(y[0::2], db.predict("mlp", {"x": features[0::2]})["output_0"])
    assert np.array_equal(y[1::2], db.predict("linear", {"x": features[1::2]})["output_0"])


def test_features_from_parquet_and_csv(sql_db, tmp_path: Path):
    db, features = sql_db
    pq.write_table(pa.table({"f": pa.array(list(features[:50]))}), tmp_path / "f.parquet")
    from_parquet = db.sql(
        "SELECT predict('mlp', f) AS y FROM read_parquet(?)", [str(tmp_path / "f.parquet")]
    )
    expected = db.predict("mlp", {"x": features[:50]})["output_0"]
    assert np.array_equal(column(from_parquet, "y").astype(np.float32), expected)
    header = ",".join(f"c{k}" for k in range(30))
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in features[:20])
    (tmp_path / "f.csv").write_text(header + "\n" + rows + "\n")
    columns = ", ".join(f"c{k}" for k in range(30))
    from_csv = db.sql(
        f"SELECT predict('mlp', [{columns}]) AS y FROM read_csv(?)", [str(tmp_path / "f.csv")]
    )
    # repr() round-trips each float32 through the CSV exactly, so the rows are the same rows.
    assert np.array_equal(column(from_csv, "y").astype(np.float32), expected[:20])


def test_catalog_and_cache_tables(sql_db):
    db, _ = sql_db
    models = db.sql("SELECT name, has_graph FROM weightdb.models ORDER BY name").to_pylist()
    assert models == [{"name": "linear", "has_graph": True}, {"name": "mlp", "has_graph": True}]
    assert all(type(m["has_graph"]) is bool for m in models)  # not SQLite's 1
    pages = db.sql("SELECT count(*) AS n, sum(blocks) AS blocks FROM weightdb.pages").to_pylist()[0]
    stats = db.stats()
    assert (pages["n"], pages["blocks"]) == (stats["pages"], stats["distinct_blocks"])
    db.predict("mlp", {"x": np.zeros((1, 30), np.float32)})
    cache = db.sql("SELECT hits + misses AS requests FROM weightdb.cache").to_pylist()[0]
    assert cache["requests"] == db.pool.stats().hits + db.pool.stats().misses


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT predict('nope', features) FROM customers", "no model named 'nope'"),
        ("SELECT predict('mlp', [1.0, 2.0])", "expects features of shape [30]"),
        ("SELECT predict('mlp', NULL::DOUBLE[])", "features is NULL"),
        ("SELECT predict(NULL, [1.0])", "model name is NULL"),
        ("SELECT predict('mlp', 'abc')", "can't be cast"),
        ("SELECT predict('mlp')", "predict"),
        ("SELECT * FROM missing_table", "missing_table"),
    ],
)
def test_bad_calls_raise_clear_sql_errors(sql_db, query, message):
    db, _ = sql_db
    with pytest.raises(SQLError, match=re.escape(message)):
        db.sql(query)


def test_table_names_are_quoted_not_spliced(sql_db):
    db, _ = sql_db
    name = 'x"; DROP TABLE customers; --'
    db.load_table(name, pa.table({"a": [1, 2]}))
    assert db.sql("SELECT count(*) AS n FROM customers").to_pylist() == [{"n": ROWS}]
    assert db.sql('SELECT sum(a) AS s FROM "x""; DROP TABLE customers; --"').to_pylist() == [
        {"s": 3}
    ]
