"""Which machine a benchmark ran on: device choice, a folder-safe device name, versions.

``device_slug()`` names the results folder ``bench/results/<slug>/``: the GPU's marketing name
(``nvidia-h100-80gb-hbm3``) or ``cpu-<model>-<N>cores``.  ``environment()`` collects what a
reader needs to trust a number: device, python / torch / triton / numpy versions, CUDA runtime
and driver, the git commit, the date.  Run as a script it prints that as JSON.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_device():
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device=None) -> str:
    import torch

    device = torch.device(device or bench_device())
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({os.cpu_count()} cores)"


def slugify(text: str) -> str:
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:60] or "unknown"


def device_slug(device=None) -> str:
    import torch

    device = torch.device(device or bench_device())
    if device.type == "cuda":
        return slugify(torch.cuda.get_device_name(device))
    return slugify(f"cpu {_cpu_model()} {os.cpu_count()}cores")


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device=None) -> dict:
    """Device, versions and provenance of a run (never fails: unknown fields are empty)."""
    import torch

    device = torch.device(device or bench_device())
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_type": device.type,
        "device": device_name(device),
        "slug": device_slug(device),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "git_commit": _run(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])),
    }
    for mod in ("triton", "numpy", "pytest", "pytest_benchmark", "matplotlib"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # missing, or broken install
            env[mod] = ""
    try:
        import fastclip

        env["fastclip"] = fastclip.__version__
        from fastclip import native

        helper = native.module()
        env["native_helper"] = "" if helper is None else "openmp" if helper.openmp() else "serial"
    except Exception as exc:
        env["fastclip"] = f"import failed: {exc}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "cuda_runtime": torch.version.cuda,
            "sm_count": props.multi_processor_count,
            "capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
            "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()[0:1],
        })
        env["driver"] = env["driver"][0] if env["driver"] else ""
    return env


if __name__ == "__main__":
    json.dump(environment(), sys.stdout, indent=1)
    print()
