"""torch.profiler check: one fastclip.clip_ call on CUDA issues exactly the two fastclip kernels.

For several gradient lists (GPT-2 shapes fp32 clipping / not clipping, 2 000 tiny bf16 tensors,
1 000 tensors of mixed fp32/bf16/fp16, one large tensor, a 0-d CUDA tensor as max_norm) this
warms up (kernel compilation, plan), then profiles one call with CUDA activity and lists every
device activity.  It passes when the kernels are exactly ``_norm_partials_kernel`` then
``_scale_kernel`` and there is no other kernel, memcpy or memset (a cached plan copies nothing
to the device).  torch.nn.utils.clip_grad_norm_ is profiled on the same gradients for scale.

    python bench/profile_check.py --out DIR     # writes DIR/profile.json; exit 1 if a case fails

Without CUDA it prints that there is nothing to check and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

EXPECTED = ("_norm_partials_kernel", "_scale_kernel")


def _grads(kind: str, device) -> list:
    import grad_sets

    if kind in ("gpt2", "tiny2000"):
        return grad_sets.make_grads(kind, "bf16" if kind == "tiny2000" else "fp32", device, preset="gpu")
    if kind == "mixed":
        params = []
        dtypes = (torch.float32, torch.bfloat16, torch.float16)
        for i in range(1000):
            p = torch.nn.Parameter(torch.zeros((), device=device, dtype=dtypes[i % 3]).expand(257 + 31 * i))
            p.grad = torch.randn(257 + 31 * i, device=device).to(dtypes[i % 3])
            params.append(p)
        return params
    if kind == "single":
        p = torch.nn.Parameter(torch.zeros((), device=device).expand(50_000_017))
        p.grad = torch.randn(50_000_017, device=device)
        return [p]
    raise ValueError(kind)


CASES = (  # (name, gradient list, max_norm as a multiple of the true norm, max_norm as a tensor)
    ("gpt2-fp32-clip", "gpt2", 0.5, False),
    ("gpt2-fp32-noclip", "gpt2", 2.0, False),
    ("tiny2000-bf16-clip", "tiny2000", 0.5, False),
    ("mixed-dtypes-clip", "mixed", 0.5, False),
    ("single-tensor-clip", "single", 0.5, False),
    ("gpt2-fp32-tensor-max-norm", "gpt2", 0.5, True),
)


def device_activities(fn) -> list[str]:
    """Names of the device-side activities (kernels, memcpy, memset) of one ``fn()`` call."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: e.time_range.start)
    return [e.name for e in events]


def check_case(name: str, kind: str, factor: float, as_tensor: bool, device) -> dict:
    import fastclip

    params = _grads(kind, device)
    grads = [p.grad for p in params]
    norm = float(torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads])))
    max_norm = factor * norm
    if as_tensor:
        max_norm = torch.tensor(max_norm, device=device)
    for _ in range(2):  # compile every variant used, build and cache the plan
        fastclip.clip_(params, max_norm)
    torch.cuda.synchronize()
    ours = device_activities(lambda: fastclip.clip_(params, max_norm))
    theirs = device_activities(lambda: torch.nn.utils.clip_grad_norm_(params, max_norm))
    kernels = [n for n in ours if not n.startswith(("Memcpy", "Memset"))]
    matches = len(kernels) == 2 and all(k.startswith(e) for k, e in zip(kernels, EXPECTED))
    ok = matches and len(ours) == 2
    return {"case": name, "ok": ok, "fastclip_device_activities": ours, "n_tensors": len(grads),
            "torch_device_activities": len(theirs), "torch_kernel_names": sorted(set(theirs))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="folder for profile.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_check: no CUDA device, nothing to check")
        return 0
    os.environ.pop("FASTCLIP_BACKEND", None)
    device = torch.device("cuda")
    results = []
    for case in CASES:
        try:
            r = check_case(*case, device)
        except Exception as exc:  # keep checking the other cases
            r = {"case": case[0], "ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
        results.append(r)
        detail = r.get("fastclip_device_activities", r.get("error"))
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['case']:<28s} fastclip: {detail}"
              + (f"   torch: {r['torch_device_activities']} device activities" if "torch_device_activities" in r else ""),
              flush=True)
        torch.cuda.empty_cache()
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "profile.json"), "w", encoding="utf-8") as f:
            json.dump({"expected": EXPECTED, "cases": results}, f, indent=1)
    failed = [r["case"] for r in results if not r["ok"]]
    print("profile_check: " + (f"FAILED {failed}" if failed else "every call issued exactly the two fastclip kernels"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
