"""Render the export matrix of docs/export.md from the records tests/test_export.py writes.

    CLIP_ZOO_EXPORT_RESULTS=build/export_results python -m pytest -q -p no:cacheprovider tests/test_export.py
    python scripts/export_matrix.py build/export_results      # rewrites the matrix in docs/export.md

``--run`` runs that pytest command first (every cell, the slow ones included). Each record is
``{"format", "framework", "arch", "int8", "verification"}`` with the verification report that
``clip-zoo export`` writes into ``model.json``; the table goes between the two ``matrix`` markers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- matrix:start -->", "<!-- matrix:end -->"
FORMATS = ("onnx", "litert", "stablehlo", "pt2", "savedmodel")
FRAMEWORKS = ("torch", "tf", "flax")
ARCHS = {"default": "bundled ViT", "vit": "tiny ViT", "resnet": "tiny ResNet"}


def load(folder: Path) -> list[dict]:
    """Every record in ``folder``, in matrix order (format, framework, architecture, fp32 before int8)."""
    records = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]

    def key(r):
        return (FORMATS.index(r["format"]), FRAMEWORKS.index(r["framework"]), list(ARCHS).index(r["arch"]),
                r["int8"], r.get("dtype", "fp32"))

    return sorted(records, key=key)


def _cell(part: dict, metric: str) -> str:
    value = f"{part['worst']:.2g}" if metric == "max_abs_diff" else f"cos ≥ {part['worst']:.5f}"
    return f"{'✅' if part['ok'] else '❌'} {value}"


def table(records: list[dict]) -> str:
    """The markdown matrix: one row per format x framework x architecture (x int8)."""
    rows = ["| format | framework | model | text: worst diff | image: worst diff | text MB | image MB | "
            "load s (text / image) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in records:
        v, parts = r["verification"], r["verification"]["parts"]
        text, image = parts.get("text"), parts.get("image")
        fmt = r["format"] + (" int8" if r["int8"] else "" if r.get("dtype", "fp32") == "fp32" else f" {r['dtype']}")
        size = [f"{p['size_bytes'] / 1e6:.2f}" if p else "" for p in (text, image)]
        load_s = " / ".join(f"{p['load_seconds']:.2f}" for p in (text, image) if p)
        rows.append(f"| {fmt} | {r['framework']} | {ARCHS[r['arch']]} | "
                    f"{_cell(text, v['metric']) if text else ''} | {_cell(image, v['metric']) if image else ''} | "
                    f"{size[0]} | {size[1]} | {load_s} |")
    return "\n".join(rows)


def render(doc: str, records: list[dict]) -> str:
    """``doc`` with the text between the matrix markers replaced by the table of ``records``."""
    if START not in doc or END not in doc:
        raise ValueError(f"the page has no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(records)}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the folder of records (CLIP_ZOO_EXPORT_RESULTS of the test run)")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "export.md"), help="the page to update")
    parser.add_argument("--run", action="store_true", help="run tests/test_export.py first (every cell)")
    args = parser.parse_args(argv)
    if args.run:
        env = {**os.environ, "CLIP_ZOO_EXPORT_RESULTS": str(Path(args.results).resolve())}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "tests/test_export.py",
               "-k", "cell or int8 or half"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    records = load(Path(args.results))
    if not records:
        print(f"no records in {args.results}", file=sys.stderr)
        return 1
    doc = Path(args.doc)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(render(doc.read_text(encoding="utf-8"), records), encoding="utf-8")
    tmp.replace(doc)
    print(f"wrote {len(records)} rows into {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
