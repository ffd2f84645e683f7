"""The documentation is true and self-contained.

- No file shipped or documented here points at documents outside the repository.
- docs/performance.md has no empty table, and every timing column holds the unit its header names,
  consistent with the JSON it was generated from; ``python -m benchmarks`` names the ``bench`` extra
  when matplotlib is missing.
- LICENSE names the license pyproject.toml declares.
- README.md keeps its two set-up commands first, says where the default model lives and what the
  test extra installs, and every ``make`` target and relative link in the docs exists.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PACKAGES = ("clip_core", "clip_torch", "clip_tf", "clip_flax", "conversion", "clip_zoo", "benchmarks")

# References to documents that are not in the repository (the design notes it was built from).
OUTSIDE = re.compile(r"DESIGN §|DESIGN\.md|\.\./shared|shared/seeds|\b[Tt]he contract\b|\b[Ii]ssues? #?\d+\b")


# ---------------------------------------------------------------------------------------- helpers

def _sources() -> list[Path]:
    """README, docs/*.md and the .py files of the shipped packages, the tests and the scripts."""
    files = [README, *DOCS]
    for folder in (*PACKAGES, "tests", "scripts"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.resolve() != Path(__file__).resolve()]


def outside_references(files) -> list[str]:
    hits = []
    for path in files:
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else path}:"
                            f"{number}: {line.strip()}")
    return hits


def tables(markdown: str) -> list[dict]:
    """Every pipe table: ``{"line", "header": [cells], "rows": [[cells]]}`` (a row is a line after the rule)."""
    lines = markdown.splitlines()
    found, i, fence = [], 0, False
    while i < len(lines):
        if lines[i].startswith("```"):
            fence = not fence
        if (not fence and lines[i].lstrip().startswith("|") and i + 1 < len(lines)
                and re.match(r"^\s*\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1])):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            cells = lambda line: [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]  # noqa: E731
            found.append({"line": i + 1, "header": cells(lines[i]), "rows": [cells(r) for r in lines[i + 2:j]]})
            i = j
        else:
            i += 1
    return found


def sections(markdown: str) -> dict[str, str]:
    """``## name`` -> the text up to the next ``## ``."""
    parts = re.split(r"^## (.+)$", markdown, flags=re.M)
    return {parts[k].strip(): parts[k + 1] for k in range(1, len(parts), 2)}


def timings(node, prefix: str = "") -> dict[str, float]:
    """``{path: median seconds}`` of every ``{"median", "min", "max"}`` timing in a benchmark result."""
    out = {}
    if isinstance(node, dict):
        for spelling in ("", "_s"):
            if {f"median{spelling}", f"min{spelling}", f"max{spelling}"} <= node.keys():
                return {prefix: (node[f"median{spelling}"], node[f"min{spelling}"], node[f"max{spelling}"])}
        for key, value in node.items():
            if key not in ("environment", "targets"):
                out.update(timings(value, f"{prefix}/{key}" if prefix else str(key)))
    return out


SCALE = {"ms": 1e3, "s": 1.0}


def check_timing_tables(markdown: str, runs: dict) -> int:
    """Every column headed ``... ms`` / ``... s`` holds that result's seconds in that unit; returns cells checked."""
    checked = 0
    for name, text in sections(markdown).items():
        result = (runs.get(name) or {}).get("result") or {}
        expected = timings(result)
        for table in tables(text):
            units = [re.search(r"\b(ms|s)\s*$", h) for h in table["header"]]
            if not any(units):
                continue
            for row in table["rows"]:
                assert row[0] in expected, f"## {name}: row {row[0]!r} is not a timing of its result"
                median, low, high = expected[row[0]]
                for cell, unit in zip(row[1:], units[1:]):
                    if unit is None:
                        continue
                    scale = SCALE[unit.group(1)]
                    values = [float(v) for v in cell.split("–")]
                    want = [median] if len(values) == 1 else [low, high]
                    for got, seconds in zip(values, want):
                        # formatted to 2 (ms) or 3 (s) decimals
                        assert abs(got - seconds * scale) <= 0.0051 + 1e-9 * abs(got), (
                            f"## {name} {row[0]}: {got} {unit.group(1)} but the result says {seconds} s")
                        checked += 1
                if units[1] and units[1].group(1) == "ms":
                    # milliseconds that are plausible as such: a timing of 10 s or more is written in seconds
                    assert float(row[1]) < 10_000, f"## {name} {row[0]}: {row[1]} ms should be in seconds"
    return checked


# ---------------------------------------------------------------------- 1. no outside documents

def test_no_references_to_documents_outside_the_repository():
    hits = outside_references(_sources())
    assert not hits, "references to documents outside the repository:\n" + "\n".join(hits)


def test_outside_reference_scan_finds_them(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text("fine\nbounds are DESIGN §5\nsee ../shared/DESIGN.md\nas issue 8 asks\nsee docs/design.md\n")
    assert [h.split(":")[1] for h in outside_references([bad])] == ["2", "3", "4"]


# ------------------------------------------------------------------------- 2. performance.md

def test_performance_md_has_no_empty_table_and_true_units():
    markdown = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    found = tables(markdown)
    assert found, "docs/performance.md has no table"
    empty = [t for t in found if not t["rows"]]
    assert not empty, f"tables with a header and no rows at lines {[t['line'] for t in empty]}"
    runs = json.loads((ROOT / "benchmarks" / "results" / "all.json").read_text())["runs"]
    assert check_timing_tables(markdown, runs) > 0, "no timing column found in docs/performance.md"


def test_performance_md_is_what_the_generator_makes(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.report import generate

    out = generate(ROOT / "benchmarks" / "results" / "all.json", tmp_path)
    assert out.read_text(encoding="utf-8") == (ROOT / "docs" / "performance.md").read_text(encoding="utf-8"), (
        "docs/performance.md differs from `python -m benchmarks.report` on benchmarks/results/all.json: regenerate it")


def _fake_summary() -> dict:
    env = {"cpu": "test CPU", "cpus": 2, "time": "2026-01-01T00:00:00Z", "versions": {"numpy": "2"}}
    fast = {"environment": env, "ratios": {"x_vs_y": 2.0},
            "timings": {"a": {"median": 0.0123, "min": 0.011, "max": 0.0151, "runs": [0.0123]}}}
    slow = {"environment": {**env, "cpu": "older CPU", "isa": ["avx2"]},
            "seconds": {"ours": {"median": 46.768, "min": 45.97, "max": 47.56}},
            "torch_spelling": {"median_s": 12.5, "min_s": 12.0, "max_s": 13.0}}
    return {"quick": True, "environment": env, "matmul_gflops": 100.0, "runs": {
        "fast": {"status": "ok", "seconds": 1.0, "result": fast},
        "slow": {"status": "reused", "result": slow},
        "gone": {"status": "skipped", "reason": "benchmarks.bench_gone or ('gone',) not installed"},
        "broken": {"status": "exit 1", "seconds": 2.0},
        "bare": {"status": "ok", "result": {"environment": env, "note": "nothing to tabulate"}},
    }}


def test_report_units_and_empty_sections_on_a_fake_result(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks.report import generate, timing_table

    # the conversion alone: seconds in, the header's unit out
    assert timing_table([("a", {"median": 0.0123, "min": 0.011, "max": 0.0151})])[2] == "| a | 12.30 | 11.00–15.10 |"
    assert timing_table([("a", {"median": 0.0123, "min": 0.011, "max": 0.0151})])[0].count("ms") == 2
    slow = timing_table([("b", {"median": 46.768, "min": 45.97, "max": 47.56})])
    assert slow[0] == "| measurement | median s | min–max s |" and slow[2] == "| b | 46.768 | 45.970–47.560 |"

    summary = _fake_summary()
    path = tmp_path / "all.json"
    path.write_text(json.dumps(summary))
    markdown = generate(path, tmp_path / "docs").read_text(encoding="utf-8")
    found = tables(markdown)
    assert found and all(t["rows"] for t in found), markdown
    assert check_timing_tables(markdown, summary["runs"]) == 3 + 3 * 2
    parts = sections(markdown)
    assert "| timings/a | 12.30 | 11.00–15.10 |" in parts["fast"]
    assert "median s" in parts["slow"] and "| seconds/ours | 46.768 |" in parts["slow"]
    assert "CPU: test CPU (2 cores);" in markdown  # the header's machine; a section from another names its own
    assert "on older CPU (2 cores; avx2)" in parts["slow"] and " on " not in parts["fast"].splitlines()[2]
    assert "| torch_spelling | 12.500 |" in parts["slow"]
    assert not tables(parts["Targets"]) and "No targets" in parts["Targets"]
    assert "No tables: skipped (benchmarks.bench_gone" in parts["gone"] and not tables(parts["gone"])
    assert "No tables: the run failed" in parts["broken"] and not tables(parts["broken"])
    assert "No tables: this result records no ratios or timings." in parts["bare"]
    assert (tmp_path / "docs" / "perf_fast.png").exists() and (tmp_path / "docs" / "perf_slow.png").exists()


def test_benchmarks_without_matplotlib_names_the_bench_extra(tmp_path):
    # A copy of the package, so that nothing is written to the repository even if the check were missing.
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "benchmarks" / "results").glob("*.json")}
    shim = ("import sys; sys.modules['matplotlib'] = None; import runpy, benchmarks; "
            f"assert benchmarks.__file__.startswith({str(tmp_path)!r}), benchmarks.__file__; "
            "sys.argv = ['benchmarks', '--reuse']; runpy.run_module('benchmarks', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", shim], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == ["python -m benchmarks: error: the plots need matplotlib, install it with: "
                                        "pip install 'clip-zoo[bench]'"], proc.stderr
    assert proc.stdout == "", "something ran before the matplotlib check"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "benchmarks" / "results").glob("*.json")} == before


# --------------------------------------------------------------------------------- 3. LICENSE

def test_license_file_names_the_pyproject_license():
    license_file = ROOT / "LICENSE"
    assert license_file.is_file(), "no LICENSE at the repository root"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    declared = declared["text"] if isinstance(declared, dict) else declared
    text = license_file.read_text(encoding="utf-8")
    first = text.splitlines()[0].strip()
    assert first.split()[0] == declared.split()[0], f"LICENSE is {first!r}, pyproject.toml says {declared!r}"
    assert re.search(r"^Copyright \(c\) \d{4} ", text, flags=re.M), "LICENSE has no copyright line"


# ---------------------------------------------------------------------------------- 4. README

def _fences(markdown: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.S | re.M)


def test_readme_starts_with_the_two_setup_commands():
    readme = README.read_text(encoding="utf-8")
    fences = _fences(readme)
    assert len(fences) >= 2
    (lang1, first), (lang2, second) = fences[:2]
    assert lang1 == lang2 == "bash"
    assert first.startswith('pip install -e ".[torch]" && clip-zoo classify examples/*.png --labels "'), first[:80]
    assert second == "make test\n"
    # both under the set-up heading, and the only bash blocks there (.ci/readme_commands.py reads them)
    setup = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert [f for f in _fences(setup) if f[0] == "bash"] == fences[:2]
    assert readme.index("## Set up on a fresh machine") < readme.index("```")
    # every label the first command's examples are named by is among its labels
    labels = set(re.search(r'--labels "([^"]+)"', first).group(1).split(","))
    examples = {p.stem.replace("_", " ") for p in (ROOT / "examples").glob("*.png")}
    assert examples and {e for e in examples if e in labels} == examples, examples - labels


def test_readme_states_the_facts():
    readme = README.read_text(encoding="utf-8")
    for fact in ("clip_core/data/default", "torch 2.14.1", "torchvision 0.29.1", "make test-fast", "clip-zoo models",
                 "default_model_path", ".ci/run"):
        assert fact in readme, f"README.md does not mention {fact}"
    # the default model is where the README says
    from clip_core import default_model_path

    assert default_model_path() == ROOT / "clip_core" / "data" / "default"
    assert (ROOT / "clip_core" / "data" / "default" / "model.safetensors").is_file()
    # the pins it states are the test extra's
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "torch==2.14.1" in extras["test"] and "torchvision==0.29.1" in extras["test"]
    assert "torch==2.13.0" in extras["torch"] and "torch 2.13.0" in readme
    # every extra is documented, and every documented extra exists
    named = set(re.findall(r"`\[([\w-]+)\]`", readme))
    assert set(extras) <= named, f"extras missing from README.md: {set(extras) - named}"
    assert named <= set(extras), f"README.md names extras pyproject.toml lacks: {named - set(extras)}"


def _code(markdown: str) -> str:
    return "\n".join([body for _, body in _fences(markdown)] + re.findall(r"`([^`\n]+)`", markdown))


def test_every_make_target_mentioned_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, flags=re.M))
    mentioned = {}
    for doc in (README, *DOCS):
        for target in re.findall(r"(?:^|[\s;&|(])make\s+([A-Za-z][\w.-]*)", _code(doc.read_text(encoding="utf-8"))):
            mentioned.setdefault(target, doc.name)
    assert {"test", "test-fast"} <= set(mentioned), mentioned
    missing = {t: doc for t, doc in mentioned.items() if t not in targets}
    assert not missing, f"make targets the docs name but the Makefile lacks: {missing}"


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def broken_links(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # links in code blocks are not links
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # absolute URL or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            bad.append(f"{doc.name}: {target}")
    return bad


def test_every_relative_link_points_to_a_file(tmp_path):
    bad = [b for doc in (README, *DOCS) for b in broken_links(doc)]
    assert not bad, f"relative links to missing files: {bad}"
    # the checker finds one
    probe = tmp_path / "probe.md"
    probe.write_text("[ok](probe.md) [gone](nowhere.md#x) ![img](missing.png) [web](https://x.org) [a](#b)\n")
    assert broken_links(probe) == ["probe.md: nowhere.md#x", "probe.md: missing.png"]
