r"""The optional native helper: reads the gradients of a parameter list and their cache key in C++.

fastclip runs without it.  With it, the host cost of a cached Triton call falls from ~0.5 us to
~0.06-0.08 us per tensor (measured on a busy 2-core VM, kernels stubbed: 2 000 tensors ~1.0-1.7 ms
-> 0.16-0.23 ms, 20 000 tensors ~10-18 ms -> 1.4-1.8 ms), because reading ``.grad``, address,
size, dtype and layout of every tensor from Python is the part of a call that grows with the
model.  Build it once per environment (needs a C++ compiler and ninja,
takes about a minute)::

    python -m fastclip.native            # build, load and check it; prints where it lives

It is compiled against the installed torch and stored under ``$FASTCLIP_NATIVE_DIR`` (default
``~/.cache/fastclip/native``) in a folder named after the source, torch and Python versions, so
a torch upgrade simply doesn't find it (fastclip falls back to Python) until it is rebuilt.
Nothing is ever compiled implicitly.

``FASTCLIP_NATIVE`` (read once, at the first call): ``auto`` (default: use it when built) or
``off`` (never load it).

The helper (``fastclip/csrc/grad_key.cpp``) makes the same decision the Python path makes, from
the same fields: the key of a gradient list changes whenever any gradient's address, element
count, dtype, device, contiguity or flat-span layout changes.  Anything unusual (a tensor
subclass such as DTensor, a sparse or nested gradient, a non-tensor item) is left to the Python
path, which validates it and reports the problem.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys

import torch

__all__ = ["module", "available", "build", "location"]

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "grad_key.cpp")
_UNSET = object()
_module = _UNSET


def _tag() -> str:
    """What the compiled file depends on: the source, torch's build, Python's ABI."""
    h = hashlib.sha256()
    with open(_SOURCE, "rb") as f:
        h.update(f.read())
    for part in (torch.__version__, str(torch.version.git_version), sys.version, sys.platform,
                 str(torch._C._GLIBCXX_USE_CXX11_ABI) if hasattr(torch._C, "_GLIBCXX_USE_CXX11_ABI") else ""):
        h.update(part.encode())
    return h.hexdigest()[:16]


def location() -> tuple[str, str]:
    """Where the helper for this source, torch and Python lives.

    Returns:
        tuple[str, str]: (build folder, module name); the module file is ``<name>.so`` in it.
    """
    root = os.environ.get("FASTCLIP_NATIVE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastclip", "native")
    tag = _tag()
    return os.path.join(root, tag), f"fastclip_native_{tag}"


def _load_built():
    """The built helper, or None if it isn't built for this torch/Python (or fails its check)."""
    if not os.path.exists(_SOURCE):
        return None
    folder, name = location()
    # the names torch.utils.cpp_extension.load gives the module it builds
    path = next((p for p in (os.path.join(folder, name + ext) for ext in (".so", ".pyd")) if os.path.exists(p)), None)
    if path is None:
        return None
    try:
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
        _self_check(mod)
    except Exception:  # a broken or foreign build: the Python path serves
        return None
    return mod


def _self_check(mod) -> None:
    """The loaded helper finds the gradients and notices a changed one (guards a bad build)."""
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    grads, key = mod.collect([a, b], True, ())
    if len(grads) != 2 or grads[0] is not a.grad or grads[1] is not b.grad:
        raise RuntimeError("native helper returned the wrong gradients")
    if mod.collect([a, b], True, (key,))[1] is not key:
        raise RuntimeError("native helper does not recognise an unchanged key")
    b.grad = torch.ones(2)  # new memory
    if mod.collect([a, b], True, (key,))[1] == key:
        raise RuntimeError("native helper missed a changed gradient")


def module():
    """The loaded helper, loading it on the first call.

    Returns:
        module or None: None when it isn't built for this torch and Python, is disabled with
        ``FASTCLIP_NATIVE=off``, or fails its load-time check.
    """
    global _module
    if _module is _UNSET:
        setting = os.environ.get("FASTCLIP_NATIVE", "auto").strip().lower()
        _module = None if setting in ("off", "0", "false", "no") else _load_built()
    return _module


def available() -> bool:
    """Whether fastclip reads gradients with the native helper in this process.

    Returns:
        bool: True when :func:`module` found a working build.

    Example::

        >>> import fastclip.native
        >>> fastclip.native.available() in (True, False)
        True
    """
    return module() is not None


def build(verbose: bool = False) -> str:
    """Compile the helper against the installed torch (a C++ compiler and ninja are needed, about
    a minute) and load it for the rest of this process.  ``python -m fastclip.native`` calls this.

    Args:
        verbose (bool, optional): show the compiler's commands and output. Default: False

    Returns:
        str: the path of the built module.

    Raises:
        RuntimeError (or the compiler's error): the build failed, or the built module failed its
        check; fastclip keeps using the Python path.
    """
    global _module
    from torch.utils import cpp_extension

    folder, name = location()
    os.makedirs(folder, exist_ok=True)
    mod = cpp_extension.load(name, [_SOURCE], build_directory=folder, extra_cflags=["-O2"], verbose=verbose)
    _self_check(mod)
    _module = mod
    return mod.__file__


def _main() -> int:
    path = build(verbose="-v" in sys.argv[1:])
    print(f"fastclip native helper built and checked: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
