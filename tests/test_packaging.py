"""setup.py installs every subpackage and the native helper's source (a non-editable install
only gets what setup.py lists; the editable install used in development would hide a gap)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_kwargs() -> dict:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def _subpackages(folder: str, prefix: str) -> set:
    found = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        if "__init__.py" in files:
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            found.add(prefix if rel == "." else prefix + "." + rel.replace(os.sep, "."))
    return found


def test_every_subpackage_is_installed():
    listed = set(ast.literal_eval(_setup_kwargs()["packages"]))
    on_disk = _subpackages("fastclip", "fastclip") | _subpackages("kernels", "fastclip.kernels")
    assert on_disk - listed == set(), f"setup.py packages= misses {sorted(on_disk - listed)}"


def test_native_helper_source_is_package_data():
    data = ast.literal_eval(_setup_kwargs()["package_data"])
    sources = [f for f in os.listdir(os.path.join(ROOT, "fastclip", "csrc")) if f.endswith(".cpp")]
    assert sources and "csrc/*.cpp" in data["fastclip"]
    headers = [f for f in os.listdir(os.path.join(ROOT, "fastclip", "csrc")) if f.endswith(".h")]
    assert not headers or "csrc/*.h" in data["fastclip"]  # an installed helper must build from them too
