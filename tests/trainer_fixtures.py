"""Tiny training runs in the trainers people use, for tests of fastclip inside them.

One model and one data set (a two-layer regressor whose targets are large enough that every
step's gradient norm exceeds the clipping threshold) trained for a few SGD steps on the CPU by:

* ``hf_trainer_run``: transformers' ``Trainer`` (clipping with ``max_grad_norm``, through accelerate),
* ``lightning_run``: Lightning's ``Trainer`` (clipping with ``gradient_clip_val``),

each returning a :class:`TrainingRun` (the loss of every step, what every clip call returned,
the final parameters), so a test compares a run with fastclip against the same run without it.
Both take ``callbacks=`` and accept the trainer's clipping off (``max_grad_norm=0`` /
``gradient_clip_val=None``) for tests of fastclip's own trainer callbacks.

``run_ranks`` runs a function on every rank of a gloo group (forked processes, file store) and
returns the failures; ``spy_backend`` records the calls that reach fastclip's kernels (Triton
launches) or its plain-PyTorch backend.

The packages are optional: a test that needs one calls :func:`require`, which skips with the pip
command to run, unless FASTCLIP_REQUIRE_TRAINERS=1 (CI) makes a missing package a failure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import json
import os
import sys
import traceback

import pytest
import torch

FEATURES, SAMPLES, BATCH, LR = 8, 64, 16, 0.05

# the versions CI installs (see the lead's requirements); a skip message names them
PINS = {
    "transformers": "transformers==5.24.0 accelerate==1.15.0",
    "accelerate": "transformers==5.24.0 accelerate==1.15.0",
    "pytorch_lightning": "pytorch-lightning==2.6.6",
    "torchtitan": "--no-deps torchtitan==0.3.0 spmd-types==0.2.3 tyro==1.0.17 docstring-parser==0.18.0",
}


def require(module: str):
    """Import ``module``; skip if it is missing, or fail under FASTCLIP_REQUIRE_TRAINERS=1 (CI)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        reason = f"{module} is not importable ({exc}); pip install {PINS.get(top, top)}"
        if os.environ.get("FASTCLIP_REQUIRE_TRAINERS") == "1":
            pytest.fail(f"FASTCLIP_REQUIRE_TRAINERS=1 but {reason}")
        pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# the model and the data

def regression_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) with y = 5 x w + noise: large targets, so every step's gradient gets clipped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=g)
    y = 5.0 * x @ torch.randn(FEATURES, 1, generator=g) + 0.1 * torch.randn(SAMPLES, 1, generator=g)
    return x, y


class TinyRegressor(torch.nn.Module):
    """Linear-Tanh-Linear; ``forward(x, labels)`` returns ``{'loss', 'logits'}`` as HF models do,
    and the loss and the batch of every training forward are kept in ``self.losses`` and
    ``self.batches``."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.losses: list[float] = []
        self.batches: list[tuple] = []

    def forward(self, x, labels=None):
        out = self.net(x)
        loss = None if labels is None else torch.nn.functional.mse_loss(out.float(), labels.float())
        if loss is not None and self.training:
            self.losses.append(loss.item())
            self.batches.append((x.detach().clone(), labels.detach().clone()))
        return {"loss": loss, "logits": out}


class RegressionDataset(torch.utils.data.Dataset):
    """The regression data as the dicts HF's default collator stacks."""

    def __init__(self, seed: int = 0):
        self.x, self.y = regression_data(seed)

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


# ---------------------------------------------------------------------------------------------
# what a run leaves behind

@dataclasses.dataclass
class TrainingRun:
    losses: list  # the training loss of every step
    clip_results: list  # what each torch.nn.utils clipping call returned (None for clip_grad_value_)
    params: dict  # name -> final parameter
    batches: list = dataclasses.field(default_factory=list)  # (x, labels) of every training step


@contextlib.contextmanager
def recording_clip_calls():
    """Record what every ``torch.nn.utils.clip_grad_norm_``/``clip_grad_value_`` call returns,
    on top of whatever function is installed (torch's, or fastclip's under patch_torch)."""
    results = []
    modules = (torch.nn.utils, torch.nn.utils.clip_grad)
    saved = {(m, n): getattr(m, n) for m in modules for n in ("clip_grad_norm_", "clip_grad_value_")}

    def recorder(fn):
        def record(*args, **kwargs):
            out = fn(*args, **kwargs)
            results.append(None if out is None else out.detach().clone())
            return out
        return record

    for (module, name), fn in saved.items():
        setattr(module, name, recorder(fn))
    try:
        yield results
    finally:
        for (module, name), fn in saved.items():
            setattr(module, name, fn)


def _final_params(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------------
# the trainers

def hf_trainer_run(output_dir, *, max_grad_norm=0.5, steps=4, callbacks=(), seed=0, logging_steps=1,
                   **training_args) -> TrainingRun:
    """transformers' Trainer, SGD at a constant rate, one process on the CPU, nothing saved or reported."""
    transformers = require("transformers")
    require("accelerate")
    model = TinyRegressor(seed)
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
        optim="sgd", lr_scheduler_type="constant", max_grad_norm=max_grad_norm, logging_steps=logging_steps,
        report_to="none", save_strategy="no", use_cpu=True, seed=seed, data_seed=seed,
        dataloader_num_workers=0, dataloader_pin_memory=False, disable_tqdm=True, **training_args)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=RegressionDataset(seed),
                                   callbacks=list(callbacks))
    with recording_clip_calls() as results:
        trainer.train()
    return TrainingRun(model.losses, results, _final_params(model), model.batches)


def lightning():
    """The Lightning package: ``lightning.pytorch`` or the standalone ``pytorch_lightning``."""
    try:
        return importlib.import_module("lightning.pytorch")
    except ImportError:
        return require("pytorch_lightning")


def lightning_run(root_dir, *, gradient_clip_val=0.5, gradient_clip_algorithm="norm", steps=4, callbacks=(),
                  precision="32-true", seed=0, logger=False, **trainer_args) -> TrainingRun:
    """Lightning's Trainer, SGD, one CPU process, no checkpoint or progress bar (and no logger
    unless ``logger`` is given)."""
    pl = lightning()

    class TinyModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = TinyRegressor(seed)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return self.model(x, y)["loss"]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    x, y = regression_data(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    module = TinyModule()
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, precision=precision, gradient_clip_val=gradient_clip_val,
        gradient_clip_algorithm=gradient_clip_algorithm, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(root_dir), callbacks=list(callbacks), **trainer_args)
    with recording_clip_calls() as results:
        trainer.fit(module, loader)
    return TrainingRun(module.model.losses, results, _final_params(module.model), module.model.batches)


# ---------------------------------------------------------------------------------------------
# what reached fastclip

@pytest.fixture(params=["torch", "triton"])
def cpu_backend(request, monkeypatch):
    """The trainers run on the CPU: once with fastclip's plain-PyTorch backend, once with its
    Triton kernels (in the interpreter; skipped, or failed under FASTCLIP_REQUIRE_TRITON=1,
    where Triton can't run on CPU tensors)."""
    if request.param == "triton":
        from oracles import require_triton_on_cpu

        require_triton_on_cpu()
    monkeypatch.setenv("FASTCLIP_BACKEND", request.param)
    return request.param


def spy_backend(monkeypatch, backend: str) -> list:
    """Record, in order, the calls that reach fastclip's Triton launches (``backend='triton'``)
    or its plain-PyTorch backend (``'torch'``); they still run."""
    from oracles import spy_calls

    if backend == "triton":
        from fastclip import _triton_backend

        return spy_calls(monkeypatch, _triton_backend, ("launch_norm_partials", "launch_scale", "launch_clamp"))
    from fastclip import _torch_backend

    return spy_calls(monkeypatch, _torch_backend, ("total_norm", "scale_", "clamp_"))


# ---------------------------------------------------------------------------------------------
# several ranks

def _rank_entry(rank: int, world: int, tmp: str, fn):
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # a failing rank can't hang the others forever
    failure = None
    try:
        fn(rank, world)
        dist.barrier()
    except Exception:  # noqa: BLE001  (reported to the test)
        failure = f"[rank {rank}]\n{traceback.format_exc()}"
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(failure, f)
    if failure is not None:
        os._exit(0)  # leave: the other ranks' collectives then fail (and report) instead of hanging
    dist.destroy_process_group()


def run_ranks(fn, world: int, tmp) -> list:
    """Run ``fn(rank, world)`` on ``world`` gloo ranks; returns the failures (tracebacks)."""
    import torch.multiprocessing as mp

    method = "fork" if sys.platform == "linux" and not torch.cuda.is_initialized() else "spawn"
    mp.start_processes(_rank_entry, args=(world, str(tmp), fn), nprocs=world, join=True, start_method=method)
    failures = []
    for rank in range(world):
        path = tmp / f"rank{rank}.json"
        if not path.exists():
            failures.append(f"[rank {rank}] wrote no result")
            continue
        with open(path) as f:
            failure = json.load(f)
        if failure:
            failures.append(failure)
    return failures
