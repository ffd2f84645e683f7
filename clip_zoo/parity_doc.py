"""Generate ``docs/parity.md`` from a real run: the parity command on tiny checkpoints + the test matrices.

    python -m clip_zoo.parity_doc --run-matrix   # runs the CLIP and SigLIP matrix files first (~15 min)
    python -m clip_zoo.parity_doc                # reuses tests/.parity_results.json

Every number in the page comes from those runs; nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "tests" / ".parity_results.json"
OUTPUT = REPO / "docs" / "parity.md"
COMMAND = "python -m clip_zoo.parity_doc --run-matrix"
KINDS = ("embeds", "logits", "other")
# family -> the test file whose cells (``"family"`` in the results JSON; CLIP cells predate the key) it records
MATRIX_FILES = {"clip": "tests/test_parity_matrix.py", "siglip": "tests/test_siglip_parity_matrix.py"}
FAMILY_NAMES = {"clip": "CLIP", "siglip": "SigLIP"}


def run_matrix() -> None:
    """Run both matrix files (full-size cells included); they write ``tests/.parity_results.json``."""
    proc = subprocess.run([sys.executable, "-m", "pytest", *MATRIX_FILES.values(), "-q", "-p", "no:warnings"],
                          cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"the parity matrix failed (exit {proc.returncode}); docs/parity.md not regenerated")


def run_command_on_tiny() -> dict[str, dict[str, Any]]:
    """``python -m clip_zoo.parity CKPT --json`` on tiny ViT, ResNet and SigLIP canonical checkpoints."""
    import conversion
    from clip_core.testing import random_weights, tiny_resnet_config, tiny_siglip_config, tiny_vit_config

    reports = {}
    with tempfile.TemporaryDirectory(prefix="parity_doc_") as tmp:
        for name, config in (("tiny ViT", tiny_vit_config()), ("tiny ResNet", tiny_resnet_config()),
                             ("tiny SigLIP", tiny_siglip_config())):
            path = Path(tmp) / name.replace(" ", "_")
            conversion.save_checkpoint(path, config, random_weights(config, seed=0))
            proc = subprocess.run([sys.executable, "-m", "clip_zoo.parity", str(path), "--json"], cwd=REPO,
                                  capture_output=True, text=True)
            if proc.returncode not in (0, 1):
                raise SystemExit(f"clip_zoo.parity failed on the {name} checkpoint: {proc.stderr.strip()}")
            reports[name] = json.loads(proc.stdout)
    return reports


def _kind(field: str) -> str:
    from clip_zoo.parity import BOUNDS, _bound_for

    return _bound_for(field, BOUNDS["fp32"])[0]


def command_section(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = ["## `clip-zoo parity` on tiny checkpoints", "",
             "Max abs difference per pair of backends, maximum over the fields of each kind "
             "(both battery cases, every hidden state).", "",
             "| checkpoint | pair | embeds | logits | other (hidden states, pooled) | fields | verdict |",
             "|---|---|---|---|---|---|---|"]
    for name, report in reports.items():
        pairs: dict[str, dict[str, float]] = {}
        counts: dict[str, int] = {}
        for row in report["comparisons"]:
            key = " vs ".join(row["pair"])
            worst = pairs.setdefault(key, dict.fromkeys(KINDS, 0.0))
            worst[_kind(row["field"])] = max(worst[_kind(row["field"])], row["max_abs"])
            counts[key] = counts.get(key, 0) + 1
        for key, worst in pairs.items():
            lines.append(f"| {name} | {key} | {worst['embeds']:.2e} | {worst['logits']:.2e} | {worst['other']:.2e} "
                         f"| {counts[key]} | {'passed' if report['passed'] else 'FAILED'} |")
    return lines + [""]


MATRIX_INTROS = {
    "clip": "Each cell: the checkpoint written by the reference in its own format, loaded by one clip-zoo backend, "
            "compared on every output field the reference returns (transformers: every field incl. hidden states; "
            "OpenAI `clip` / open_clip: normalized embeddings and logits).",
    "siglip": "Each cell: the same random weights pushed into transformers' `SiglipModel`, which writes the "
              "Hugging Face formats (`hf-safetensors`, `hf-bin`); `canonical`, `big_vision-npz` and `open_clip` are "
              "written by clip-zoo's conversion writers. The file is loaded by one clip-zoo backend and compared "
              "with transformers' outputs on the same weights: every field incl. every hidden state (taken "
              "through `SiglipTextModel` / `SiglipVisionModel`, as 4.57's `SiglipModel` drops them). Archs: "
              "`tiny` (odd widths, 2 layers), `B/16x1` (B/16 widths, 224 px, 1 layer per tower, vocab 1000), "
              "`B/16` (full size).",
}


def _family(cell: Mapping[str, Any]) -> str:
    return cell.get("family", "clip")


def matrix_section(cells: Mapping[str, Mapping[str, Any]], family: str = "clip") -> list[str]:
    cells = {k: c for k, c in cells.items() if _family(c) == family}
    if not cells:
        return []
    title = "The matrix" if family == "clip" else f"The {FAMILY_NAMES[family]} matrix"
    lines = [f"## {title} (`{MATRIX_FILES[family]}`)", "", MATRIX_INTROS[family] + " Max abs differences:", "",
             "| format | arch | backend | reference | dtype | embeds | logits | other | fields | ok |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(cells, key=lambda k: (cells[k]["dtype"] != "fp32", k)):
        c, m = cells[key], cells[key]["max_abs"]
        vals = [f"{m[k]:.2e}" if k in m else "–" for k in KINDS]
        lines.append(f"| {c['format']} | {c['arch']} | {c['backend']} | {c['reference']} | {c['dtype']} | "
                     f"{' | '.join(vals)} | {c['fields']} | {'yes' if c['passed'] else 'NO'} |")
    return lines + [""]


def summary_section(cells: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Measured maxima per dtype (and per backend) next to the asserted bounds."""
    from clip_zoo.parity import BOUNDS

    lines = ["## Measured maxima vs bounds", "",
             "| family | dtype | backend | embeds (bound) | logits (bound) | other (bound, x max(1, max abs ref)) "
             "| cells |", "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, str], list] = {}
    for c in cells.values():
        groups.setdefault((_family(c), c["dtype"], c["backend"]), []).append(c)
    for (family, dtype, backend), group in sorted(groups.items()):
        worst = {k: max(c["max_abs"].get(k, 0.0) for c in group) for k in KINDS}
        b = BOUNDS[dtype]
        lines.append(f"| {FAMILY_NAMES.get(family, family)} | {dtype} | {backend} | "
                     + " | ".join(f"{worst[k]:.2e} ({b[k]:g})" for k in KINDS)
                     + f" | {len(group)} |")
    return lines + [""]


def environment_section(env: Mapping[str, Any]) -> list[str]:
    from clip_core.cpu import cpu_name

    cpu = cpu_name()
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("machine", "cpus"))
    return ["## Machine", "", f"- CPU: {cpu} ({env.get('cpus')} cores, {env.get('machine')})",
            f"- Versions: {versions}", ""]


def render(reports: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    from clip_zoo.parity import BOUNDS

    head = ["# Cross-framework parity (measured)", "",
            f"Generated by `{COMMAND}` — do not edit by hand; rerun it to refresh every number.", "",
            "Bounds (max abs; `other` is relative to max(1, max abs of the reference field)):", "",
            "| dtype | normalized embeddings | logits (x100 scale) | other |", "|---|---|---|---|"]
    head += [f"| {d} | {b['embeds']:g} | {b['logits']:g} | {b['other']:g} |" for d, b in BOUNDS.items()]
    head += ["", "fp32 bounds: every backend pair, every reference. fp16 / bf16: `clip_zoo.parity.BOUNDS`; the maxima "
             "measured below (half-precision backend vs the fp32 reference) show the margin.", ""]
    cells = results.get("cells", {})
    body = (environment_section(results.get("environment", {})) + summary_section(cells)
            + command_section(reports) + [line for family in MATRIX_FILES for line in matrix_section(cells, family)])
    return "\n".join(head + body)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clip_zoo.parity_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--run-matrix", action="store_true", help="run the CLIP and SigLIP matrix test files first")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.run_matrix:
        run_matrix()
    if not RESULTS.exists():
        print(f"error: {RESULTS} is missing; run with --run-matrix", file=sys.stderr)
        return 2
    text = render(run_command_on_tiny(), json.loads(RESULTS.read_text()))
    args.output.write_text(text + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
