"""bench/tune.py, the launch-settings sweep: its smoke mode runs end to end under the Triton
interpreter, every config is checked against the float64 oracle before it is ranked, a config
with wrong results is reported and never picked, and the ranking arithmetic is right.

The GPU timing itself (CUDA events, L2 sweep, spin kernel) needs a GPU: bench/gpu_check.sh runs it.
"""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import tune  # noqa: E402
from fastclip.kernels import launch_settings  # noqa: E402
from oracles import require_triton_on_cpu  # noqa: E402



@pytest.fixture
def _interpreter():
    """conftest.py switches the interpreter on wherever there is no GPU (CI); a GPU box runs the real
    sweep.  Without triton the smoke sweep skips (fails under FASTCLIP_REQUIRE_TRITON=1)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the smoke sweep runs fastclip's kernels under the Triton interpreter")
    require_triton_on_cpu()


needs_interpreter = pytest.mark.usefixtures("_interpreter")


def _doc(out) -> dict:
    with open(os.path.join(out, "tune.json"), encoding="utf-8") as f:
        return json.load(f)


@needs_interpreter
def test_smoke_sweep_checks_times_and_ranks_every_config(tmp_path, capsys):
    assert tune.main(["--smoke", "--out", str(tmp_path)]) == 0
    doc = _doc(tmp_path)
    assert doc["configs_run"] == doc["configs"] and len(doc["configs"]) == len(tune.SMOKE_CONFIGS)
    cases = {(s, d, r) for s in tune.SETS for d in tune.DTYPES for r in tune.REGIMES}
    assert len(doc["rows"]) == len(doc["configs"]) * len(cases)
    for row in doc["rows"]:
        assert row["ok"], row.get("error")
        assert row["norm_err_fp64"] <= 2e-5  # checked against the float64 oracle
        assert row["median_ms"] > 0 and row["rounds"] >= 1
    best = doc["ranking"]["best"]
    assert {(b["set"], b["dtype"], b["regime"]) for b in best} == cases
    assert doc["ranking"]["pick"] in doc["configs"]
    assert "overall pick: LaunchSettings(" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "tune.md")


@needs_interpreter
def test_sweep_leaves_settings_and_backend_as_it_found_them(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCLIP_BACKEND", raising=False)
    tune.main(["--smoke", "--out", str(tmp_path), "--sets", "tiny2000", "--dtypes", "fp32"])
    assert launch_settings.settings_for(torch.device("cpu")) == launch_settings.INTERPRETER_SETTINGS
    assert "FASTCLIP_BACKEND" not in os.environ


@needs_interpreter
def test_config_with_wrong_results_is_reported_and_never_picked(tmp_path, monkeypatch):
    import fastclip

    real = fastclip.clip_
    bad_chunk = tune.SMOKE_CONFIGS[1][0]

    def wrong_for_one_config(params, max_norm, *args, **kwargs):
        norm = real(params, max_norm, *args, **kwargs)
        if launch_settings.settings_for(torch.device("cpu")).chunk == bad_chunk:
            return norm * (1 + 1e-4)  # 5x the norm tolerance
        return norm

    monkeypatch.setattr(fastclip, "clip_", wrong_for_one_config)
    rc = tune.main(["--smoke", "--out", str(tmp_path), "--sets", "tiny2000", "--dtypes", "fp32"])
    doc = _doc(tmp_path)
    bad = next(c for c in doc["configs"] if c.startswith(f"{bad_chunk}/"))
    assert rc == 1
    assert doc["ranking"]["failed_configs"] == [bad]
    assert doc["ranking"]["pick"] not in (None, bad)
    assert all(b["config"] != bad for b in doc["ranking"]["best"])


def _row(config, set_name, regime, ms, ok=True):
    return {"config": config, "set": set_name, "dtype": "fp32", "regime": regime, "ok": ok,
            "median_ms": ms, "gbs": 1.0, "pct_copy": None}


def test_rank_picks_the_lowest_geometric_mean_of_time_over_best():
    rows = [
        _row("A", "gpt2", "clip", 1.0), _row("A", "tiny2000", "clip", 4.0),  # best on gpt2, 2x on tiny
        _row("B", "gpt2", "clip", 1.2), _row("B", "tiny2000", "clip", 2.0),  # 1.2x on gpt2, best on tiny
        _row("C", "gpt2", "clip", 0.5, ok=False), _row("C", "tiny2000", "clip", 1.0),  # wrong once: out
    ]
    r = tune.rank(rows, default_label="A")
    assert r["failed_configs"] == ["C"]
    assert r["scores"]["A"] == pytest.approx(2 ** 0.5)
    assert r["scores"]["B"] == pytest.approx(1.2 ** 0.5)
    assert r["pick"] == "B"
    best = {b["set"]: b for b in r["best"]}
    assert best["gpt2"]["config"] == "A" and best["tiny2000"]["config"] == "B"
    assert best["tiny2000"]["gain_vs_default"] == pytest.approx(2.0)


def test_default_grid_starts_with_the_current_settings_and_is_valid():
    grid = tune.settings_grid(tune.CHUNKS, tune.BLOCK_WARPS, tune.PROGRAMS_PER_SM, launch_settings.GPU_SETTINGS)
    assert grid[0] == launch_settings.GPU_SETTINGS
    assert len(grid) == len(set(grid)) == len(tune.CHUNKS) * len(tune.BLOCK_WARPS) * len(tune.PROGRAMS_PER_SM)
    assert all(s.chunk % s.block == 0 for s in grid)
