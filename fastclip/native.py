r"""The optional native helper: gradients and their cache key read in C++, and the CPU math.

fastclip runs without it.  With it:

* the host cost of a cached Triton call falls from ~0.5 us to ~0.06-0.08 us per tensor (measured
  on a busy 2-core VM, kernels stubbed: 2 000 tensors ~1.0-1.7 ms -> 0.16-0.23 ms, 20 000
  tensors ~10-18 ms -> 1.4-1.8 ms), because reading ``.grad``, address, size, dtype and layout of
  every tensor from Python is the part of a call that grows with the model
  (``fastclip/csrc/grad_key.cpp``);
* the CPU path reduces and scales in one pass over the memory, bf16/fp16 without an upcast copy,
  and on Linux runs large calls in torch's own OpenMP team (it is linked against the libgomp
  torch loaded), so it uses the threads torch's ops leave spinning instead of competing with
  them (``fastclip/csrc/cpu_math.cpp``; see ``fastclip._torch_backend``).

Build it once per environment (needs a C++ compiler and ninja, takes about a minute)::

    python -m fastclip.native            # build, load and check it; prints where it lives

It is compiled against the installed torch and stored under ``$FASTCLIP_NATIVE_DIR`` (default
``~/.cache/fastclip/native``) in a folder named after the sources, the compiler flags, torch and
Python versions, so a torch upgrade simply doesn't find it (fastclip falls back to Python) until
it is rebuilt.  Nothing is ever compiled implicitly.

``FASTCLIP_NATIVE`` (read once, at the first call): ``auto`` (default: use it when built) or
``off`` (never load it).

The helper makes the same decisions the Python path makes, from the same fields: the key of a
gradient list changes whenever any gradient's address, element count, dtype, device, contiguity
or flat-span layout changes.  Anything unusual (a tensor subclass such as DTensor, a sparse or
nested gradient, a non-tensor item, a strided view for the math) is left to the Python path,
which validates it and reports the problem.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import sys
import warnings

import torch

__all__ = ["module", "available", "build", "location"]

_CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
_SOURCES = [os.path.join(_CSRC, name) for name in ("module.cpp", "grad_key.cpp", "cpu_math.cpp", "team_choice.cpp")]
_HEADERS = [os.path.join(_CSRC, "team_choice.h")]  # part of the build's tag, not compiled on their own
_UNSET = object()
_module = _UNSET


def _vector_flags() -> list[str]:
    """Compiler flags for the vector instructions of the CPU that builds (and so runs) the helper.

    -mavx2 -mfma -mf16c, where the CPU has them (x86-64 Linux): AVX2 doubles the fp32 lanes that
    SSE2 gives, F16C converts fp16 8 at a time.  Not -march=native: a build folder shared by
    machines of one flag set (a cluster's home directory) must not hold instructions that only
    the building CPU has; the flags are part of the build's tag, so a CPU without them never
    finds this build and builds its own.
    """
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64"):
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        if {"avx2", "fma", "f16c"} <= set(flags):
            return ["-mavx2", "-mfma", "-mf16c"]
    return []


def _torch_libgomp() -> str | None:
    """The file of the libgomp that torch has loaded into this process (Linux), or None.

    The helper's large calls run in torch's own OpenMP team (fastclip/csrc/cpu_math.cpp), so it
    must be linked against this very runtime: a second libgomp would bring a second set of
    threads that compete with torch's for the cores.  Linking the file torch loaded puts its
    soname (``libgomp.so.1``, or a wheel's renamed ``libgomp-<hash>.so.1``) in the helper, and the
    loader then reuses the copy that is already loaded.  Another runtime (Intel's, LLVM's) or
    none: None, and the helper is built without OpenMP (fastclip's Python workers parallelise).
    """
    if not sys.platform.startswith("linux") or not torch.backends.openmp.is_available():
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = {line.split(None, 5)[5].strip() for line in f if line.count(" ") >= 5 and "/libgomp" in line}
    except OSError:
        return None
    paths = {p for p in paths if os.path.exists(p)}
    return paths.pop() if len(paths) == 1 else None


def _flags(openmp: bool) -> tuple[list[str], list[str]]:
    """(compiler flags, linker flags) of a build, with torch's OpenMP runtime or without."""
    # -O3: the lane loops of cpu_math.cpp are vectorised at -O3 only; never -ffast-math (it would
    # reorder the sums and flush subnormals, which torch's own ops keep)
    cflags, ldflags = ["-O3", *_vector_flags()], []
    libgomp = _torch_libgomp() if openmp else None
    if libgomp is not None:
        cflags.append("-fopenmp")
        ldflags.append(libgomp)
    return cflags, ldflags


def _tag(openmp: bool) -> str:
    """What the compiled file depends on: the sources, the flags, torch's build, Python's ABI."""
    h = hashlib.sha256()
    for source in _SOURCES + _HEADERS:
        with open(source, "rb") as f:
            h.update(f.read())
    cflags, ldflags = _flags(openmp)
    for part in (*cflags, *ldflags, torch.__version__, str(torch.version.git_version), sys.version, sys.platform,
                 str(torch._C._GLIBCXX_USE_CXX11_ABI) if hasattr(torch._C, "_GLIBCXX_USE_CXX11_ABI") else ""):
        h.update(part.encode())
    return h.hexdigest()[:16]


def location(openmp: bool = True) -> tuple[str, str]:
    """Where the helper for this source, torch and Python lives.

    Args:
        openmp (bool, optional): the build that runs in torch's OpenMP team (where torch has
            libgomp loaded; elsewhere both builds are the same), or the one without, which
            ``build`` falls back to when the compiler can't do OpenMP. Default: True

    Returns:
        tuple[str, str]: (build folder, module name); the module file is ``<name>.so`` in it.
    """
    root = os.environ.get("FASTCLIP_NATIVE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastclip", "native")
    tag = _tag(openmp)
    return os.path.join(root, tag), f"fastclip_native_{tag}"


def _places() -> list:
    """The (folder, name) of the OpenMP build and of the one without, in the order to try them
    (one place where torch has no libgomp: both builds are the same there)."""
    return list(dict.fromkeys([location(True), location(False)]))


def _load_built(places: list):
    """The first helper of ``places`` that loads and passes its check, or None."""
    if not all(os.path.exists(source) for source in _SOURCES + _HEADERS):
        return None
    for place in places:
        mod = _load_file(*place)
        if mod is not None:
            return mod
    return None


def _load_file(folder: str, name: str):
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
    """The loaded helper finds the gradients, notices a changed one, and gets a norm and a scaling
    right (guards a bad build)."""
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
    x = torch.tensor([3.0, -4.0], dtype=torch.bfloat16)
    if mod.power_sum([x, torch.ones(1)], 2.0) != 26.0 or not mod.scale_([x], 0.5) or x.tolist() != [1.5, -2.0]:
        raise RuntimeError("native helper's CPU math is wrong")


def module():
    """The loaded helper, loading it on the first call.

    Returns:
        module or None: None when it isn't built for this torch and Python, is disabled with
        ``FASTCLIP_NATIVE=off``, or fails its load-time check.
    """
    global _module
    if _module is _UNSET:
        _module = None
        if os.environ.get("FASTCLIP_NATIVE", "auto").strip().lower() not in ("off", "0", "false", "no"):
            places = _places()
            _module = _load_built(places)
            if _module is None:
                _warn_if_built_for_another_version(places)
    return _module


def _warn_if_built_for_another_version(places: list) -> None:
    """A helper built for other sources, torch or Python is never loaded; say so once, since
    the Python path it leaves is several times slower on the CPU (an upgrade of fastclip or
    torch is the usual cause).  ``places``: this version's own build folders."""
    own = {folder for folder, _ in places}
    root = os.path.dirname(places[0][0])
    try:
        others = [entry for entry in os.scandir(root) if entry.path not in own and entry.is_dir() and any(
            name.startswith("fastclip_native_") and name.endswith((".so", ".pyd")) for name in os.listdir(entry.path))]
    except OSError:
        return
    if others:
        warnings.warn(f"fastclip: the native helper in {root} was built for another version of fastclip, torch "
                      "or Python, so the slower Python path serves; rebuild it with: python -m fastclip.native",
                      RuntimeWarning, stacklevel=3)


def available() -> bool:
    """Whether fastclip uses the native helper in this process.

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

    Where torch runs on libgomp it first builds the helper with OpenMP (large CPU calls in torch's
    own team); if that fails (a compiler without OpenMP support), it says so on stderr and builds
    it without.

    Raises:
        RuntimeError (or the compiler's error): the build failed, or the built module failed its
        check; fastclip keeps using the Python path.
    """
    global _module
    try:
        mod = _compile(openmp=True, verbose=verbose)
    except Exception as error:  # e.g. a compiler without OpenMP support: the helper still helps
        if _torch_libgomp() is None:
            raise
        print(f"fastclip: building the native helper with OpenMP failed ({type(error).__name__}); "
              "building it without (large CPU calls then use fastclip's worker threads)", file=sys.stderr)
        mod = _compile(openmp=False, verbose=verbose)
    _module = mod
    return mod.__file__


def _compile(openmp: bool, verbose: bool):
    from torch.utils import cpp_extension

    folder, name = location(openmp)
    os.makedirs(folder, exist_ok=True)
    cflags, ldflags = _flags(openmp)
    mod = cpp_extension.load(name, _SOURCES, build_directory=folder, extra_cflags=cflags, extra_ldflags=ldflags,
                             verbose=verbose)
    _self_check(mod)
    return mod


def _main() -> int:
    path = build(verbose="-v" in sys.argv[1:])
    print(f"fastclip native helper built and checked: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
