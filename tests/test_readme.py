"""The README's by-hand session, replayed: its bash block is extracted and every command runs, in
order, in a fresh directory holding small files this test builds under the names the README
uses; each step's output is checked.

Two lines are not run: `make demo` (tests/test_demo.py runs the same tour at its small scale)
and `source .venv/bin/activate` (the commands run with this interpreter's `weightdb`). `weightdb
serve` runs in the background on a free port until it answers, then stops."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from engine_fakes import export
from onnx import numpy_helper
from safetensors.numpy import save_file
from test_server import free_port
from torch_models import MLP

from weightdb.dedup.errors import EvalSpecError

README = Path(__file__).resolve().parents[1] / "README.md"
WEIGHTDB = Path(sys.executable).with_name("weightdb")
NOT_RUN = ("make demo", "source .venv/bin/activate")
TINY_BERT = {
    "vocab_size": 50,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
}


def by_hand_commands() -> list[str]:
    """The commands of the README's bash block that starts the session by hand, comments
    dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    (session,) = [block for block in blocks if "weightdb init" in block]
    lines = [shlex.split(line, comments=True) for line in session.splitlines()]
    return [shlex.join(words) for words in lines if words]


def _write_inputs(folder: Path) -> None:
    """Small files under the names the README uses."""
    rng = np.random.default_rng(5)
    base = {
        "embed.weight": rng.standard_normal((300, 64)).astype(np.float32),
        "head.weight": rng.standard_normal((64, 10)).astype(np.float32),
    }
    save_file(base, folder / "base.safetensors")
    tuned = dict(base, **{"head.weight": base["head.weight"] + 0.01})
    save_file(tuned, folder / "finetune.safetensors")
    torch.manual_seed(3)
    export(MLP(), (torch.randn(2, 100),), folder / "classifier.onnx", ["x"], {"x": {0: "batch"}})
    stored = {
        init.name: numpy_helper.to_array(init)
        for init in onnx.load(folder / "classifier.onnx").graph.initializer
        if init.name.endswith((".weight", ".bias"))
    }
    save_file({k: v * np.float32(1.5) for k, v in stored.items()}, folder / "clf-v2.safetensors")
    _bert_folder(folder / "bert-folder")
    np.savez(folder / "rows.npz", x=rng.standard_normal((4, 100)).astype(np.float32))
    features = rng.standard_normal((20, 100)).astype(np.float32)
    pq.write_table(
        pa.table({"id": np.arange(20), "features": list(features)}), folder / "customers.parquet"
    )


def _bert_folder(folder: Path) -> None:
    import transformers

    torch.manual_seed(11)
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(folder)


def _serve(command: list[str], env: dict, cwd: Path) -> str:
    """Start the server, wait until it is ready, stop it; return what /v2/models answered."""
    port = free_port()
    command = [str(port) if word == "8080" else word for word in command]
    server = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    return httpx.get(f"http://127.0.0.1:{port}/v2/models").text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=60)


CHECKS = {
    # first words of a command -> what its standard output must contain
    "weightdb init models.wdb": ["models.wdb"],
    "weightdb init digits.wdb": ["digits.wdb"],
    "weightdb import base.safetensors": ["base"],
    "weightdb ls": ["base", "finetune", "no"],
    "weightdb stats": ["logical", "stored"],
    "weightdb verify": ["pages"],
    "weightdb pack": ["pages"],
    "weightdb import classifier.onnx": ["clf"],
    "weightdb import clf-v2.safetensors": ["clf-v2"],
    "weightdb import ./bert-folder": ["encoder"],
    "weightdb predict clf": ["output", "[4, 10]"],
    "weightdb cache compare": ["opt", "lru"],
    "weightdb zoo build": ["digits-cnn"],
    "weightdb --db digits.wdb import": ["imported", "can predict"],
    "weightdb --db digits.wdb dedup": ["stored"],
}


def test_the_readme_session_runs_as_written(tmp_path, zoo):
    _write_inputs(tmp_path)
    shutil.copytree(zoo / "digits-cnn", tmp_path / "zoo" / "digits")  # built: reused, not redone
    env = {**os.environ, "PATH": f"{WEIGHTDB.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("WEIGHTDB_DB", None)
    env["COLUMNS"] = "200"  # rich wraps lines at the terminal width
    outputs: dict[str, str] = {}
    for line in by_hand_commands():
        if line in NOT_RUN:
            continue
        words = shlex.split(line)
        if words[0] == "export":
            key, value = words[1].split("=", 1)
            env[key] = value
            continue
        if words[:2] == ["weightdb", "serve"]:
            models = json.loads(_serve(words, env, tmp_path))
            assert {"base", "finetune", "clf", "clf-v2", "encoder"} <= {
                m["name"] for m in models["models"]
            }
            continue
        result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        outputs[line] = result.stdout
        for prefix, expected in CHECKS.items():
            if line.startswith(prefix):
                for text in expected:
                    assert text in result.stdout, f"{line}: {text!r} not in\n{result.stdout}"
    ran = list(outputs)
    assert len(ran) >= 21, ran  # every command of the block but the skipped and served ones
    exported = (tmp_path / "out.safetensors").read_bytes()
    assert exported == (tmp_path / "finetune.safetensors").read_bytes()
    listing = json.loads(
        subprocess.run(
            ["weightdb", "ls", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
        ).stdout
    )
    can_predict = {m["name"]: m["can_predict"] for m in listing}
    assert "base" not in can_predict  # the session ends with `weightdb rm base`
    assert can_predict["finetune"] is False and can_predict["clf"] is True
    assert can_predict["clf-v2"] is True and can_predict["encoder"] is True


def test_dedup_refuses_a_spec_measuring_a_model_without_a_graph(db, zoo):
    """The session once crashed here: its weights-only `base` shared a name with the family's."""
    db.import_arrays("base", {"w": np.ones((4, 4), np.float32)})
    with pytest.raises(EvalSpecError, match="measures model 'base', which is stored without a"):
        db.deduplicate(eval_spec=zoo / "digits-cnn" / "family.json", max_drop=0.01)
    assert db.stats()["models"] == 1


def test_the_skipped_lines_are_the_only_ones_not_run():
    commands = by_hand_commands()
    assert [c for c in commands if c in NOT_RUN] == list(NOT_RUN)
    assert all(c.startswith(("weightdb ", "export ")) for c in commands if c not in NOT_RUN)


@pytest.mark.parametrize("line", ["weightdb init models.wdb", "weightdb rm base"])
def test_the_block_holds_the_session_from_start_to_end(line):
    assert line in by_hand_commands()
