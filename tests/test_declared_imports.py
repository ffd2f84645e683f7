"""Every third-party import in the repository is declared by pyproject.toml, at the right layer.

Walks the source of every package, the benchmarks, the scripts and the tests with ``ast`` (no code is
imported), maps each top-level import to the distribution that provides it, and fails on an import
that the install a user of that code makes does not declare: ``clip_core`` and ``conversion`` may
use only the base dependencies, ``clip_torch`` the base plus ``[torch]``, and so on (table below).
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ({"clip_core", "clip_torch", "clip_tf", "clip_flax", "conversion", "clip_zoo", "benchmarks",
                "tests", "scripts"}
               | {p.stem for folder in ("tests", "scripts") for p in (ROOT / folder).glob("*.py")})

# Imports inside a function that run only when the caller asks for that framework's objects
# (``return_tensors="pt"|"tf"|"jax"``): the caller has that framework, so any extra may declare it.
CALLER_CHOSEN = {"clip_core/tensors.py": {"torch", "tensorflow", "jax"}}

# source tree -> the extras a user of that code has installed ("" = base dependencies only)
LAYERS = {
    "clip_core": ("",),
    "conversion": ("", "tf-files"),  # h5py / msgpack: lazily, behind a one-line error naming [tf-files]
    "clip_torch": ("", "torch", "export"),  # export.py: onnx / onnxscript / tf2onnx / jax2onnx, lazily
    "clip_tf": ("", "tf", "export"),  # export.py: onnx / onnxscript / tf2onnx / jax2onnx, lazily
    "clip_flax": ("", "flax", "export"),  # export.py: onnx / onnxscript / tf2onnx / jax2onnx, lazily
    "clip_zoo": ("", "all"),
    "benchmarks": ("", "bench", "test"),  # measured against the references of the test extra
    "scripts": ("", "all"),
    "tests": ("", "test"),
}

# import names whose distribution is not found by packages_distributions() in some environments
KNOWN = {"PIL": "pillow", "clip": "clip-anytorch", "open_clip": "open-clip-torch", "yaml": "pyyaml",
         "jaxlib": "jaxlib", "xdist": "pytest-xdist"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0])


@lru_cache(maxsize=None)
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared(extra: str) -> set[str]:
    """Distribution names installed by ``pip install clip-zoo[extra]`` (self-references expanded)."""
    project = _project()
    reqs = project["dependencies"] if extra == "" else project["optional-dependencies"][extra]
    names: set[str] = set()
    for req in reqs:
        match = re.match(r"clip-zoo\[([^\]]+)\]", req.replace(" ", ""))
        if match:
            for sub in match.group(1).split(","):
                names |= declared(sub)
        else:
            names.add(_req_name(req))
    return names


def third_party_imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in ``path`` (absolute imports, not first-party)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in FIRST_PARTY and m not in sys.stdlib_module_names and m != "__future__"}


@lru_cache(maxsize=None)
def _providers() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions_of(module: str) -> set[str]:
    dists = {_norm(d) for d in _providers().get(module, [])}
    if module in KNOWN:
        dists.add(KNOWN[module])
    return dists


def _sources(layer: str) -> list[Path]:
    return sorted(p for p in (ROOT / layer).rglob("*.py") if "results" not in p.parts)


def undeclared(layer: str) -> list[str]:
    allowed = set().union(*(declared(extra) for extra in LAYERS[layer]))
    problems = []
    for path in _sources(layer):
        exempt = CALLER_CHOSEN.get(path.relative_to(ROOT).as_posix(), set())
        for module in sorted(third_party_imports(path) - exempt):
            dists = distributions_of(module)
            if not dists:
                problems.append(f"{path.relative_to(ROOT)}: imports {module!r}, which no installed distribution provides")
            elif not dists & allowed:
                problems.append(f"{path.relative_to(ROOT)}: imports {module!r} (from {sorted(dists)}), which "
                                f"{' + '.join(repr(e or 'base') for e in LAYERS[layer])} do not declare")
    return problems


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_import_is_declared(layer):
    assert _sources(layer), f"no sources under {layer}/"
    assert undeclared(layer) == []


def test_detects_an_undeclared_import(tmp_path, monkeypatch):
    """The check itself can fail: an h5py import in clip_core (base only) and an unknown module are caught."""
    (tmp_path / "clip_core").mkdir()
    (tmp_path / "clip_core" / "bad.py").write_text("import h5py\nfrom not_a_real_module_xyz import thing\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = undeclared("clip_core")
    assert len(problems) == 2 and "'h5py'" in problems[0] and "not_a_real_module_xyz" in problems[1]


def test_extras_expand_self_references():
    assert {"tensorflow", "jax", "flax", "h5py", "msgpack", "torch"} <= declared("all")
    assert "matplotlib" in declared("test") and "jsonschema" in declared("test")
    assert "h5py" not in declared("") and "torch" not in declared("")


# first-party layering: dependencies point one way, clip_zoo -> backends -> conversion -> clip_core
MAY_IMPORT = {
    "clip_core": {"clip_core"},
    "conversion": {"clip_core", "conversion"},
    "clip_torch": {"clip_core", "conversion", "clip_torch"},
    "clip_tf": {"clip_core", "conversion", "clip_tf"},
    "clip_flax": {"clip_core", "conversion", "clip_flax"},
}
PACKAGES = {"clip_core", "conversion", "clip_torch", "clip_tf", "clip_flax", "clip_zoo", "benchmarks"}


def first_party_imports(path: Path, package: str) -> set[str]:
    """First-party packages ``path`` imports (a relative import stays inside ``package``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else (node.module or "").split(".")[0])
    return found & PACKAGES


def layering_violations(package: str) -> list[str]:
    return [f"{path.relative_to(ROOT)} imports {sorted(bad)}" for path in _sources(package)
            if (bad := first_party_imports(path, package) - MAY_IMPORT[package])]


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_dependencies_point_one_way(package):
    assert layering_violations(package) == []


def test_layering_check_can_fail(tmp_path, monkeypatch):
    (tmp_path / "clip_core").mkdir()
    (tmp_path / "clip_core" / "bad.py").write_text("def f():\n    import conversion\n    from clip_torch import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert layering_violations("clip_core") == ["clip_core/bad.py imports ['clip_torch', 'conversion']"]
