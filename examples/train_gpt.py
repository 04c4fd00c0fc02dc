"""Train a small character-level GPT on examples/fables.txt, clipping with fastclip every step.

Logs the loss, the gradient norm before clipping and the clip coefficient
min(max_norm / (norm + 1e-6), 1), and writes a loss / grad-norm plot. The norms stay on the device
during training (no host sync per step); they are read at log steps and at the end.

    python examples/train_gpt.py                        # CPU: 15 s to 2 min (the CPU and other load decide), or a GPU
    python examples/train_gpt.py --steps 20             # smoke test
    python examples/train_gpt.py --compile              # torch.compile (fastclip is one op node)
    torchrun --standalone --nproc_per_node 2 examples/train_gpt.py --fsdp   # FSDP2: gloo on CPU, NCCL on GPU

With ``--fsdp`` every block is sharded with ``fully_shard``; the gradients are DTensors and
``fastclip.clip_`` reduces their norm across the ranks with one all-reduce, with no extra argument.
"""
from __future__ import annotations

import argparse
import math
import os
import pathlib
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastclip

HERE = pathlib.Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# model: a GPT in the nanoGPT mould, small enough for a CPU

class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, block_size: int, dim: int, layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(block_size, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, idx, targets):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


# ---------------------------------------------------------------------------------------------
# data

def load_text(path: pathlib.Path, device):
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(data))
    return chars, data[:split].to(device), data[split:].to(device)


def batch(data, batch_size: int, block_size: int, generator):
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator).to(data.device)
    offsets = torch.arange(block_size, device=data.device)
    x = data[starts[:, None] + offsets]
    return x, data[starts[:, None] + offsets + 1]


# ---------------------------------------------------------------------------------------------
# distributed setup (torchrun)

def setup_distributed(args):
    """(rank, world, device); FSDP2 needs torchrun (RANK/WORLD_SIZE in the environment)."""
    if not args.fsdp:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return 0, 1, device
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise SystemExit("--fsdp runs under torchrun, e.g. torchrun --nproc_per_node 2 examples/train_gpt.py --fsdp")
    use_cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def shard(model: GPT, device) -> GPT:
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


# ---------------------------------------------------------------------------------------------
# training

def clip_coef(norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """torch's rule, for logging: min(max_norm / (norm + 1e-6), 1)."""
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


@torch.no_grad()
def evaluate(model, data, args, generator) -> float:
    model.eval()
    losses = [model(*batch(data, args.batch_size, args.block_size, generator)) for _ in range(args.eval_batches)]
    model.train()
    return float(torch.stack(losses).mean())


def average_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return value


def plot(history: dict, max_norm: float, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(1, len(history["loss"]) + 1)
    fig, (ax_loss, ax_norm) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax_loss.plot(steps, history["loss"], lw=1)
    ax_loss.set_ylabel("train loss (nats/char)")
    ax_loss.set_title(title)
    ax_norm.plot(steps, history["grad_norm"], lw=1, label="grad norm (before clipping)")
    ax_norm.axhline(max_norm, color="tab:red", ls="--", lw=1, label=f"max_norm = {max_norm}")
    ax_norm.set_yscale("log")
    ax_norm.set_ylabel("global grad norm")
    ax_norm.set_xlabel("step")
    clipped = sum(c < 1.0 for c in history["clip_coef"])
    ax_norm.legend(title=f"clipped on {clipped}/{len(history['clip_coef'])} steps", loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_plot(fsdp: bool, compile: bool) -> pathlib.Path:
    """examples/out/train_gpt[_fsdp][_compile].png: a --compile or --fsdp run keeps the eager run's plot."""
    return HERE / "out" / f"train_gpt{'_fsdp' if fsdp else ''}{'_compile' if compile else ''}.png"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE / "fables.txt"))
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-norm", type=float, default=0.5)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (run under torchrun)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model and the clipping step")
    ap.add_argument("--compile-backend", default="inductor", help="e.g. aot_eager for a quick check")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--plot", default=None,
                    help="where to write the loss/grad-norm plot ('' = none); default one file per mode: "
                         "examples/out/train_gpt[_fsdp][_compile].png")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.plot is None:
        args.plot = str(default_plot(args.fsdp, args.compile))

    rank, world, device = setup_distributed(args)
    log = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    chars, train, val = load_text(pathlib.Path(args.data), device)
    model = GPT(len(chars), args.block_size, args.dim, args.layers, args.heads).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    if args.fsdp:
        model = shard(model, device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))  # short warm-up

    def clip():
        return fastclip.clip_(params, args.max_norm)  # the global norm, over all ranks with --fsdp

    forward = model
    if args.compile:
        forward = torch.compile(model, backend=args.compile_backend)
        if not args.fsdp:
            # one fastclip::clip_ node, no graph break (fastclip registers a torch.library custom op);
            # DTensor grads (FSDP2) are clipped eagerly: their all-reduce is not part of the op
            clip = torch.compile(clip, backend=args.compile_backend, fullgraph=True)

    generator = torch.Generator().manual_seed(args.seed + 1000 * rank)  # each rank its own batches
    log(f"fastclip {fastclip.__version__} | torch {torch.__version__} | device {device} | world {world}"
        f"{' | FSDP2' if args.fsdp else ''}{' | compile(' + args.compile_backend + ')' if args.compile else ''}")
    log(f"{n_params / 1e3:.0f} K parameters in {len(params)} tensors, vocab {len(chars)}, "
        f"{len(train) / 1e3:.0f} K training characters")

    losses, norms = [], []  # device tensors: no host sync per step
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = batch(train, args.batch_size, args.block_size, generator)
        loss = forward(x, y)
        loss.backward()
        norm = clip()
        opt.step()
        schedule.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        norms.append(norm.detach().float().reshape(()))
        if step % args.log_every == 0 or step == args.steps:
            loss_now = float(average_over_ranks(loss.detach(), world))
            norm_now = float(norm)  # the same value on every rank
            log(f"step {step:5d} | loss {loss_now:.3f} | grad norm {norm_now:8.3f} | "
                f"clip coef {float(clip_coef(norm.float(), args.max_norm)):.3f} | "
                f"{(time.perf_counter() - t0) / step * 1e3:.0f} ms/step")
    elapsed = time.perf_counter() - t0

    val_loss = evaluate(forward, val, args, torch.Generator().manual_seed(1))
    val_loss = float(average_over_ranks(torch.tensor(val_loss, device=device), world))
    history = {
        "loss": [float(v) for v in average_over_ranks(torch.stack(losses), world)],
        "grad_norm": [float(v) for v in torch.stack(norms)],
    }
    history["clip_coef"] = [min(args.max_norm / (n + 1e-6), 1.0) for n in history["grad_norm"]]
    clipped = sum(c < 1.0 for c in history["clip_coef"])
    log(f"done: {args.steps} steps in {elapsed:.1f} s | val loss {val_loss:.3f} "
        f"({val_loss / math.log(2):.2f} bits/char) | clipped on {clipped}/{args.steps} steps")
    if rank == 0 and args.plot:
        title = f"char-level GPT on fables.txt, fastclip max_norm={args.max_norm}" + (" (FSDP2)" if args.fsdp else "")
        plot(history, args.max_norm, pathlib.Path(args.plot), title)
        log(f"plot: {args.plot}")
    if args.fsdp:
        torch.distributed.destroy_process_group()
    return history, val_loss


if __name__ == "__main__":
    main()
