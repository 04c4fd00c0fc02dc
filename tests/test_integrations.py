"""fastclip's clippers as trainer callbacks: Lightning's and transformers' Trainer.

The spec (issue 10, part 3): a callback runs any clipper once per optimizer step, with the
trainer's own clipping off, after the AMP unscale and before the optimizer's step, and logs the
step's norm, threshold and clipped flag through the trainer's logger without a host sync per
step.  The oracle is a plain PyTorch loop over the very batches the trainer used (same model,
SGD, a clipper of the same configuration stepped by hand): every step's norm, threshold and flag,
the clipper's final state and the final parameters agree (fp32: within 1e-6).  "No sync" is
checked by running each per-step hook under a dispatch mode that fails on any host read of a
tensor value (``aten::_local_scalar_dense``), and by counting the reads the logging path makes.

The trainers are optional test dependencies: without them these tests skip, naming the pip
command, except under FASTCLIP_REQUIRE_TRAINERS=1 (CI), where a missing trainer fails.
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

import fastclip
from fastclip.integrations import _step_log
from oracles import require_triton_on_cpu, spy_calls
from test_adaptive import FailOnHostRead
from trainer_fixtures import LR, TinyRegressor, cpu_backend  # noqa: F401  (cpu_backend: a fixture)
from trainer_fixtures import hf_trainer_run, lightning, lightning_run, require

STEPS = 6
FP32 = dict(rtol=1e-6, atol=1e-7)

#: clipper configurations: each clips some steps of the tiny regression (asserted below)
CLIPPERS = {
    "mean": lambda: fastclip.MeanClipper(2, factor=0.5),
    "zclip": lambda: fastclip.ZClipper(warmup_steps=2, z_thresh=0.5, max_grad_norm=8.0),
}


def plain_loop(batches, clipper):
    """The oracle: the tiny model trained by hand on ``batches``, ``clipper`` between backward and step."""
    model = TinyRegressor(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    results = []
    for x, y in batches:
        optimizer.zero_grad()
        model(x, y)["loss"].backward()
        results.append(clipper.step(model))
        optimizer.step()
    return results, {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_same_steps(logged: list[dict], expected: list, every: int = 1, prefix="clip/"):
    """The logs written every ``every`` steps hold the values of the step that wrote them: norm,
    threshold, clipped, and the count of clipped steps so far."""
    assert len(logged) == len(expected) // every
    for i, got in enumerate(logged):
        step = (i + 1) * every - 1
        want = expected[step]
        assert got[prefix + "clipped"] == float(want.clipped)
        assert got[prefix + "clipped_steps"] == sum(bool(r.clipped) for r in expected[: step + 1])
        for field in ("norm", "threshold"):
            value = torch.tensor(got[prefix + field], dtype=torch.float64)
            torch.testing.assert_close(value, getattr(want, field).double(), **FP32, msg=field)
    assert any(bool(r.clipped) for r in expected), "the test must really clip"


def assert_same_state(ours, theirs):
    mine, other = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert mine.keys() == other.keys()
    for k in mine:
        torch.testing.assert_close(mine[k], other[k], **FP32, msg=k)


def assert_same_params(ours: dict, theirs: dict):
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], **FP32, msg=name)


class HostReadsOutsidePlanning(FailOnHostRead):
    """FailOnHostRead, except while fastclip builds a launch plan: the trainers zero gradients with
    ``set_to_none``, so on the CPU a step's gradients may be new memory and the plan is rebuilt
    from host-side tables (CPU tensors, also on CUDA: no device sync)."""

    planning = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if HostReadsOutsidePlanning.planning:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


def host_read_free(callback, hook: str, monkeypatch) -> list:
    """Run ``callback.<hook>`` under HostReadsOutsidePlanning, on the Triton path (the
    interpreter: the CPU torch backend reads CPU tensors by design); returns the list of its calls."""
    require_triton_on_cpu()
    monkeypatch.setenv("FASTCLIP_BACKEND", "triton")
    import fastclip._triton_backend

    real_build = fastclip._triton_backend.build_plan

    def build_plan(*args, **kwargs):
        HostReadsOutsidePlanning.planning = True
        try:
            return real_build(*args, **kwargs)
        finally:
            HostReadsOutsidePlanning.planning = False

    monkeypatch.setattr(fastclip._triton_backend, "build_plan", build_plan)
    real, calls = getattr(callback, hook), []

    def guarded(*args, **kwargs):
        calls.append(hook)
        with HostReadsOutsidePlanning():
            return real(*args, **kwargs)

    setattr(callback, hook, guarded)
    return calls


# ---------------------------------------------------------------------------------------------
# transformers' Trainer

def hf_callback(clipper):
    require("transformers")
    from fastclip.integrations.hf import ClipperCallback

    return ClipperCallback(clipper)


def _hf_logs(callback, tmp_path, **kwargs):
    """(run, the training logs of trainer.state.log_history, the reads of the logging path)."""
    history = []

    class KeepHistory(importlib.import_module("transformers").TrainerCallback):
        def on_train_end(self, args, state, control, **kw):
            history.extend(h for h in state.log_history if "loss" in h)

    run = hf_trainer_run(tmp_path, max_grad_norm=0, steps=STEPS, callbacks=[callback, KeepHistory()], **kwargs)
    return run, history


def test_hf_callback_reads_the_device_only_when_the_trainer_logs(tmp_path, monkeypatch):
    callback = hf_callback(fastclip.ZClipper(warmup_steps=2, z_thresh=0.5, max_grad_norm=8.0))
    steps = host_read_free(callback, "on_pre_optimizer_step", monkeypatch)
    reads = spy_calls(monkeypatch, _step_log.StepLog, ("read",))
    run, logs = _hf_logs(callback, tmp_path, logging_steps=3)
    assert len(steps) == STEPS
    assert reads == ["read"] * (STEPS // 3) and len(logs) == STEPS // 3
    expected, _ = plain_loop(run.batches, fastclip.ZClipper(warmup_steps=2, z_thresh=0.5, max_grad_norm=8.0))
    assert_same_steps(logs, expected, every=3)  # steps 3 and 6: the values of the step that logs


def test_hf_callback_refuses_to_clip_after_the_trainer_clipped(tmp_path):
    callback = hf_callback(fastclip.FixedClipper(1.0))
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        hf_trainer_run(tmp_path, max_grad_norm=1.0, steps=1, callbacks=[callback])


def test_hf_attach_puts_the_values_before_the_reporting_callbacks(tmp_path):
    """Reporters (TensorBoard, W&B, ...) come before user callbacks; attach() puts ours first."""
    transformers = require("transformers")
    seen = []

    class Reporter(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    callback = hf_callback(fastclip.FixedClipper(1.0))
    original = transformers.Trainer.__init__

    def init_then_attach(self, *args, **kwargs):
        original(self, *args, **kwargs)
        callback.attach(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.Trainer, "__init__", init_then_attach)
        hf_trainer_run(tmp_path, max_grad_norm=0, steps=2, callbacks=[Reporter()])
    assert [("clip/norm" in s, "clip/threshold" in s) for s in seen if "loss" in s] == [(True, True)] * 2


def test_hf_callback_clips_unscaled_gradients():
    """fp16 training: if no one unscaled the gradients this step, the callback does, once."""
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    accelerated = type("AcceleratedOptimizer", (), {"scaler": scaler, "optimizer": optimizer})()
    from fastclip.integrations.hf import unscale_if_needed

    scaler.scale(model(torch.ones(2, 3)).sum()).backward()
    unscale_if_needed(accelerated)
    unscale_if_needed(accelerated)  # already unscaled: a second unscale_ would raise
    torch.testing.assert_close(model.weight.grad, torch.full((1, 3), 2.0))


# ---------------------------------------------------------------------------------------------
# Lightning

def lightning_callback(clipper, **kwargs):
    lightning()
    from fastclip.integrations.lightning import ClipperCallback

    return ClipperCallback(clipper, **kwargs)


def memory_logger():
    """A Lightning logger that keeps what it is asked to write."""
    pl = lightning()

    class MemoryLogger(pl.loggers.Logger):
        def __init__(self):
            super().__init__()
            self.metrics: list[dict] = []

        name = "memory"
        version = 0

        def log_metrics(self, metrics, step=None):
            self.metrics.append(dict(metrics))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    return MemoryLogger()


def _lightning_logs(callback, tmp_path, every=1, **kwargs):
    logger = memory_logger()
    run = lightning_run(tmp_path, gradient_clip_val=None, steps=STEPS, callbacks=[callback], logger=logger,
                        log_every_n_steps=every, **kwargs)
    return run, [m for m in logger.metrics if "clip/norm" in m]


def test_lightning_callback_never_reads_the_device_itself(tmp_path, monkeypatch):
    """The hook hands Lightning device tensors; Lightning reads them when its logger writes."""
    make = CLIPPERS["zclip"]
    callback = lightning_callback(make())
    steps = host_read_free(callback, "on_before_optimizer_step", monkeypatch)
    reads = spy_calls(monkeypatch, _step_log.StepLog, ("read",))
    run, logs = _lightning_logs(callback, tmp_path, every=3)
    assert len(steps) == STEPS
    assert reads == [] and len(logs) == STEPS // 3
    expected, _ = plain_loop(run.batches, make())
    assert_same_steps(logs, expected, every=3)


def test_lightning_callback_clips_after_the_amp_unscale(tmp_path):
    """16-mixed with a GradScaler (on the CPU: fp16 autocast, a CPU GradScaler): the clipper sees
    the unscaled gradients, as in the plain AMP loop (scale, backward, unscale_, clip, step)."""
    plugin_cls = importlib.import_module(lightning().__name__ + ".plugins.precision").MixedPrecision
    make, scale = (lambda: fastclip.MeanClipper(2, factor=0.5)), 2.0 ** 12
    callback = lightning_callback(make())
    plugin = plugin_cls("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=scale))
    run, logs = _lightning_logs(callback, tmp_path, precision=None, plugins=[plugin])

    model = TinyRegressor(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    scaler, clipper, expected = torch.amp.GradScaler("cpu", init_scale=scale), make(), []
    for x, y in run.batches:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x, y)["loss"]
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        expected.append(clipper.step(model))
        scaler.step(optimizer)
        scaler.update()
    assert all(float(r.norm) < scale for r in expected)  # unscaled norms (the scaled ones are ~4096x)
    assert_same_steps(logs, expected)


def test_lightning_callback_refuses_to_clip_after_the_trainer_clipped(tmp_path):
    callback = lightning_callback(fastclip.FixedClipper(1.0))
    with pytest.raises(ValueError, match="gradient_clip_val=None"):
        lightning_run(tmp_path, gradient_clip_val=0.5, steps=1, callbacks=[callback])


def test_lightning_checkpoint_keeps_the_clipper_state(tmp_path):
    callback = lightning_callback(CLIPPERS["zclip"]())
    lightning_run(tmp_path, gradient_clip_val=None, steps=3, callbacks=[callback])
    resumed = lightning_callback(CLIPPERS["zclip"]())
    resumed.load_state_dict(callback.state_dict())
    assert_same_state(resumed.clipper, callback.clipper)
    assert int(resumed.clipper.state_dict()["state"]["count"]) == 3


# ---------------------------------------------------------------------------------------------
# both trainers

@pytest.mark.parametrize("trainer", ["hf", "lightning"])
@pytest.mark.parametrize("policy", CLIPPERS)
def test_callback_clips_each_step_as_a_plain_loop_and_logs_every_step(trainer, policy, cpu_backend, tmp_path):
    if trainer == "hf":
        callback = hf_callback(CLIPPERS[policy]())
        run, logs = _hf_logs(callback, tmp_path)
    else:
        callback = lightning_callback(CLIPPERS[policy]())
        run, logs = _lightning_logs(callback, tmp_path)
    reference = CLIPPERS[policy]()
    expected, params = plain_loop(run.batches, reference)
    assert len(run.batches) == STEPS
    assert_same_steps(logs, expected)
    assert_same_state(callback.clipper, reference)
    assert_same_params(run.params, params)


# ---------------------------------------------------------------------------------------------
# without the trainers

@pytest.mark.parametrize("module, package", [("hf", "transformers"), ("lightning", "lightning")])
def test_integrations_import_without_their_trainer_and_say_what_to_install(module, package, monkeypatch):
    for name in ("transformers", "lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, f"fastclip.integrations.{module}", raising=False)
    integration = importlib.import_module(f"fastclip.integrations.{module}")
    with pytest.raises(ImportError, match=f"pip install {package}"):
        integration.ClipperCallback
    monkeypatch.delitem(sys.modules, f"fastclip.integrations.{module}")  # don't keep the crippled module
