"""Make a fresh machine able to run the benchmark, installing as little as possible.

* torch must already be installed (never installed here: an unpinned torch can pull a
  multi-GB build for the wrong CUDA); without it the run stops with instructions.
* fastclip: used from this checkout.  If ``import fastclip`` fails (or finds another copy), try
  ``pip install --no-deps --no-build-isolation -e .``; if pip can't (no network, no setuptools),
  stage the package (``fastclip/`` plus ``kernels/`` as ``fastclip/kernels``) in a temporary
  folder and put it on ``PYTHONPATH``.
* pytest, pytest-benchmark, matplotlib (and numpy < 2.4, which triton 3.6's interpreter needs)
  are installed with pip only when missing and installing is allowed; without them the run falls
  back to the plain runner / a report without plot.

    python bench/bootstrap.py            # report what is present, install what is missing
    python bench/bootstrap.py --stage D  # only stage fastclip in D (prints the PYTHONPATH entry)
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = {"pytest": "pytest", "pytest_benchmark": "pytest-benchmark", "matplotlib": "matplotlib",
            "numpy": "numpy<2.4"}


def have(module: str) -> bool:
    importlib.invalidate_caches()
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def pip_install(requirements: list[str], extra: list[str] = (), timeout: int = 300) -> bool:
    cmd = [sys.executable, "-m", "pip", "install", "--retries", "0", "--timeout", "15", *extra, *requirements]
    print("[setup] " + " ".join(cmd[2:]), flush=True)
    try:
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"[setup] pip failed: {exc}", flush=True)
        return False
    if res.returncode != 0:
        print("[setup] pip failed: " + (res.stderr.strip().splitlines() or ["?"])[-1], flush=True)
    return res.returncode == 0


def _fastclip_location(env: dict | None = None) -> str | None:
    """Where a fresh interpreter imports fastclip (and its kernels) from; None if it can't."""
    code = "import fastclip, fastclip.kernels.launch_settings as k; print(fastclip.__file__)"
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             cwd=tempfile.gettempdir(), env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def stage(dest: str) -> str:
    """Copy fastclip/ and kernels/ (as fastclip/kernels) under ``dest``; returns the path entry."""
    pkg = os.path.join(dest, "fastclip")
    shutil.rmtree(pkg, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(REPO, "fastclip"), pkg, ignore=ignore)
    shutil.copytree(os.path.join(REPO, "kernels"), os.path.join(pkg, "kernels"), ignore=ignore)
    return dest


def _ours(location: str | None) -> bool:
    """fastclip comes from this checkout (or from a copy of it staged by gpu_check.sh)."""
    roots = [REPO] + ([os.environ["FASTCLIP_STAGED"]] if os.environ.get("FASTCLIP_STAGED") else [])
    return bool(location) and any(os.path.realpath(location).startswith(os.path.realpath(r) + os.sep) for r in roots)


def ensure_fastclip(allow_install: bool) -> str | None:
    """Make this checkout's fastclip importable; returns a PYTHONPATH entry to add, or None."""
    loc = _fastclip_location()
    if _ours(loc):
        return None
    if loc is None and allow_install:
        pip_install(["-e", "."], extra=["--no-deps", "--no-build-isolation"], timeout=180)
        if _ours(_fastclip_location()):
            return None
    path = stage(tempfile.mkdtemp(prefix="fastclip-stage-"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])))
    where = _fastclip_location(env)
    print(f"[setup] fastclip staged on PYTHONPATH: {path}" + ("" if where else " (still not importable!)")
          + (f" (another fastclip was installed at {loc})" if loc else ""), flush=True)
    return path


def ensure(allow_install: bool = True) -> dict:
    """Check (and if allowed install) everything; returns {'pythonpath': ..., module: bool, ...}."""
    if not have("torch"):
        sys.exit("torch is not installed. Install the torch build for your machine first, e.g.\n"
                 "  pip install torch --index-url https://download.pytorch.org/whl/cpu     (CPU)\n"
                 "  pip install torch                                                       (CUDA 12, Linux)\n"
                 "then rerun. (The benchmark never installs torch itself.)")
    status = {"pythonpath": ensure_fastclip(allow_install)}
    missing = [spec for mod, spec in OPTIONAL.items() if not have(mod)]
    if missing and allow_install:
        pip_install(missing)
    for mod in OPTIONAL:
        status[mod] = have(mod)
    status["triton"] = have("triton")
    absent = [m for m in (*OPTIONAL, "triton") if not status[m]]
    if absent:
        print(f"[setup] not available: {', '.join(absent)}", flush=True)
    return status


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", help="only stage fastclip into this folder and print it")
    ap.add_argument("--no-install", action="store_true")
    args = ap.parse_args()
    if args.stage:
        print(stage(os.path.abspath(args.stage)))
    else:
        print(ensure(not args.no_install))
