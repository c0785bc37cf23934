"""`weightdb sql`: a statement over a tiny database the test builds, printed as JSON or a table,
and a bad statement as a one-line error with a non-zero exit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich_tables import table_rows

import weightdb


def weightdb_sql(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weightdb", "--db", str(db), "sql", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model, y = W x + b with W = [[1, 0, 0], [0, 1, 1]] and b = [0.5, -1]."""
    path = tmp_path_factory.mktemp("cli-sql") / "db"
    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        linear.bias.copy_(torch.tensor([0.5, -1.0]))
    with weightdb.connect(path) as database:
        database.from_torch(linear, (torch.zeros(1, 3),), name="lin", input_names=["x"])
    return path


def test_sql_prints_predictions_as_json(db: Path):
    query = (
        "SELECT id, predict('lin', f) AS y, predict_label('lin', f) AS label "
        "FROM (VALUES (1, [1.0, 2.0, 3.0]), (2, [4.0, 0.0, -1.0])) AS t(id, f) ORDER BY id"
    )
    result = weightdb_sql(db, query, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"id": 1, "y": [1.5, 4.0], "label": 1},
        {"id": 2, "y": [4.5, -2.0], "label": 0},
    ]


def test_sql_prints_a_table_with_long_lists_shortened(db: Path):
    query = "SELECT name, predict('lin', [1.0, 2.0, 3.0]) AS y, range(10) AS r FROM weightdb.models"
    result = weightdb_sql(db, query)
    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout) == [
        ["lin", "[1.5, 4.0]", "[0, 1, 2, 3, 4, 5, 6, 7, ... (10 values)]"]
    ]


def test_a_bad_statement_is_a_one_line_error(db: Path):
    result = weightdb_sql(db, "SELECT * FROM missing_table")
    assert result.returncode != 0
    assert "missing_table" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
