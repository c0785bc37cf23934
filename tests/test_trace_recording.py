"""Traces recorded from real predictions replay in the simulator with the same requests."""

import json

import numpy as np
import torch

import weightdb
from weightdb.caching.simulate import Budget, simulate
from weightdb.caching.trace import read_trace


def test_recorded_trace_replays_under_every_policy(tmp_path):
    settings = weightdb.Settings(block_rows=16, block_cols=16, page_size=4096)
    budget = 4096 + 64 + 48 * 64  # one page, below one model: weights must stream
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    tuned = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    tuned.load_state_dict(base.state_dict())
    torch.nn.init.normal_(tuned[2].weight)
    with weightdb.connect(tmp_path / "db", settings=settings) as db:
        for name, module in (("base", base), ("tuned", tuned)):
            db.from_torch(module, (torch.zeros(1, 40),), name=name, input_names=["x"])
    x = np.ones((2, 40), np.float32)
    trace_path = tmp_path / "trace.json"
    with weightdb.connect(tmp_path / "db", budget=budget, policy="lru") as db:
        with db.record_trace(trace_path):
            for name in ["base", "tuned", "base", "base"]:
                db.predict(name, {"x": x})
            db.prepared.get("tuned").run({"x": x})  # as the server runs a batch: no predict()
        live = db.pool.stats()
    raw = json.loads(trace_path.read_text())
    assert len(raw["requests"]) == live.hits + live.misses
    assert {r["query"] for r in raw["requests"]} == {1, 2, 3, 4, 5}
    shared = [p for p in raw["pages"].values() if p["models"] == ["base", "tuned"]]
    assert shared, "the first layer's pages are shared by both models"
    trace = read_trace(trace_path)
    replay = simulate(trace, "lru", Budget(bytes=budget))
    assert (replay.hits, replay.misses) == (live.hits, live.misses)
    optimum = simulate(trace, "opt", Budget(bytes=budget))
    assert optimum.misses <= replay.misses
