"""examples/train_gpt.py: trains with fastclip every step, logs, plots, compiles, runs under FSDP2.

The spec (issue 4, part 6), as smoke tests of a few steps each: the full run (``python
examples/train_gpt.py``, 15 s to 2 minutes on a 2-core CPU) is left to the README command.
"""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import fastclip.api

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
WIRED = hasattr(fastclip.api, "_custom_op")  # fastclip.clip_ routes through the custom op when compiling


def _load_example():
    spec = importlib.util.spec_from_file_location("train_gpt", EXAMPLES / "train_gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def train_gpt(monkeypatch):
    monkeypatch.setenv("FASTCLIP_BACKEND", "torch")  # what a CPU user runs (not the kernel interpreter)
    return _load_example()


def _args(**overrides) -> list:
    """A small, fast configuration; keyword arguments override it (steps=30 -> --steps 30)."""
    options = dict(steps=6, log_every=3, batch_size=8, block_size=32, dim=32, eval_batches=2, device="cpu", plot="")
    options.update(overrides)
    return [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def test_the_corpus_ships_with_the_repo_and_is_regenerated_identically(tmp_path):
    shipped = (EXAMPLES / "fables.txt").read_text(encoding="utf-8")
    assert 200_000 < len(shipped) < 1_000_000
    subprocess.run([sys.executable, str(EXAMPLES / "make_fables.py"), "--out", str(tmp_path / "f.txt")],
                   check=True, capture_output=True)
    assert (tmp_path / "f.txt").read_text(encoding="utf-8") == shipped


def test_train_gpt_clips_every_step_logs_and_writes_the_plot(train_gpt, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    history, val_loss = train_gpt.main(_args(max_norm=0.05, plot=plot))

    assert len(history["loss"]) == len(history["grad_norm"]) == len(history["clip_coef"]) == 6
    assert all(math.isfinite(v) for v in history["loss"]) and math.isfinite(val_loss)
    # max_norm far below the norms: every step is clipped, by torch's coefficient
    for norm, coef in zip(history["grad_norm"], history["clip_coef"]):
        assert norm > 0.05 and coef == pytest.approx(0.05 / (norm + 1e-6))
    out = capsys.readouterr().out
    assert "grad norm" in out and "clip coef" in out and "clipped on 6/6 steps" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_gpt_loss_goes_down(train_gpt):
    history, _ = train_gpt.main(_args(steps=25, log_every=25))
    first, last = sum(history["loss"][:5]) / 5, sum(history["loss"][-5:]) / 5
    assert last < first - 0.3, (first, last)


@pytest.mark.xfail(not WIRED, reason="fastclip.api does not route through fastclip.custom_op under "
                                      "torch.compile yet: the fullgraph clip step breaks")
def test_train_gpt_compiled_matches_eager(train_gpt):
    args = _args(steps=3)
    eager, _ = train_gpt.main(args)
    torch._dynamo.reset()
    compiled, _ = train_gpt.main(args + ["--compile", "--compile-backend", "aot_eager"])
    for key in ("loss", "grad_norm"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4), key


def test_train_gpt_fsdp2_under_torchrun(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = dict(os.environ, FASTCLIP_BACKEND="torch", OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    plot = tmp_path / "fsdp.png"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(EXAMPLES / "train_gpt.py"), "--fsdp",
         *_args(plot=plot)],
        capture_output=True, text=True, env=env, timeout=120)
    report = f"exit code {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 0, report
    assert "world 2 | FSDP2" in done.stdout and "done: 6 steps" in done.stdout, report
    assert plot.exists(), report


def test_train_gpt_modes_write_distinct_default_plots():
    module = _load_example()
    paths = {module.default_plot(fsdp, compile) for fsdp in (False, True) for compile in (False, True)}
    assert len(paths) == 4
    assert module.default_plot(False, False) == EXAMPLES / "out" / "train_gpt.png"
