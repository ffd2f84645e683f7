"""`python -m benchmarks.report [all.json]`: docs/performance.md and PNG plots from the JSON.

Every number in the report comes from ``benchmarks/results/all.json``; nothing is hand-typed.
:data:`TARGETS` reads each target figure from its benchmark's result; each becomes a met /
not met line. Every ``{"median", "min", "max"}`` timing found in a result (always in seconds) is
tabulated and plotted, in milliseconds, or in seconds for a table whose slowest median is
:data:`SECONDS_FROM` seconds or more (the column headers name the unit). A table with no rows is
never written: a section with nothing to tabulate says why in one line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

from .common import RESULTS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def missing_matplotlib(prog: str) -> str | None:
    """The one-line error for ``prog`` when matplotlib (the ``bench`` extra) cannot be imported, else None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"{prog}: error: the plots need matplotlib, install it with: pip install 'clip-zoo[bench]'"
    return None


def _timings(node: Any, prefix: str = "") -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        if {"median", "min", "max"} <= node.keys():
            yield prefix, node
            return
        if {"median_s", "min_s", "max_s"} <= node.keys():  # bench_torch's spelling
            yield prefix, {k: node[f"{k}_s"] for k in ("median", "min", "max")}
            return
        for key, value in node.items():
            if key not in ("environment", "targets"):
                yield from _timings(value, f"{prefix}/{key}" if prefix else str(key))


def _precision_targets(case: str, what: str) -> list[tuple]:
    """The precision rows of one case: each backend's bf16 (and the int8 of torch and of TensorFlow's LiteRT
    export) against its own fp32, and against the runtime at the same precision (ONNX Runtime int8; OpenVINO
    bf16, as ONNX Runtime has no bfloat16 CPU path). A row whose ratio the run lacks is left out."""
    rows = []
    for backend, precision, target in (("torch", "bf16", 1.8), ("torch", "int8", 2.5), ("tf", "bf16", 1.8),
                                       ("tf", "int8", 2.5), ("flax", "bf16", 1.8)):
        own = "torch_fp32" if backend == "torch" else f"{backend}_fp32"
        key = f"{case}_{backend}_{precision}_vs_{own}"
        rows.append(("precision", f"{backend} {precision} {what} vs our {backend} fp32",
                     lambda r, k=key: r["ratios"][k], ">=", target))
        ref = "onnxruntime" if precision == "int8" else "openvino"
        key = f"{case}_{backend}_{precision}_vs_{ref}_{precision}"
        rows.append(("precision", f"{backend} {precision} {what} vs {'ONNX Runtime' if ref == 'onnxruntime' else 'OpenVINO'} "
                     f"{precision}", lambda r, k=key: r["ratios"][k], ">=", 1.0))
    return rows


# (benchmark, what, how to read the figure from its result, op, target) — the project's performance targets.
TARGETS = [
    ("tokenizer", "tokenize vs OpenAI clip.tokenize", lambda r: r["ratios"]["tokenize_vs_openai"], ">=", 20.0),
    ("tokenizer", "HF-style call vs CLIPTokenizerFast", lambda r: r["ratios"]["hf_call_vs_CLIPTokenizerFast"], ">=", 1.0),
    ("preprocess", "hf mode vs transformers CLIPImageProcessor", lambda r: r["ratios"]["clip_core[hf] / transformers"], ">=", 3.0),
    ("preprocess", "openai mode vs OpenAI transform (1 torch thread)",
     lambda r: r["ratios"]["clip_core[openai] / openai[1 torch thread]"], ">=", 1.5),
    ("torch", "ViT-B/32 image b16 vs best transformers path", lambda r: r["ratios"]["image_b16_vs_hf_best"], ">=", 1.0),
    ("torch", "ViT-B/32 image b16 vs open_clip", lambda r: r["ratios"]["image_b16_vs_open_clip"], ">=", 1.0),
    ("torch", "ViT-B/32 image b16 share of matmul GFLOP/s",
     lambda r: r["image_share_of_matmul_peak"]["image_b16"]["share_of_matmul"], ">=", 0.85),
    ("torch", "ViT-B/32 image b16 vs OpenAI clip", lambda r: r["ratios"]["image_b16_vs_openai"], ">=", 1.0),
    ("torch", "RN50 image b16 vs best of open_clip / OpenAI clip",
     lambda r: r["ratios"]["rn50_image_b16_vs_best_reference"], ">=", 1.0),
    ("torch", "RN50 image b16 share of matmul GFLOP/s",
     lambda r: r["image_share_of_matmul_peak"]["rn50_image_b16"]["share_of_matmul"], ">=", 0.85),
    ("torch", "text b64 (77-padded) vs best transformers path", lambda r: r["ratios"]["text_b64_vs_hf_best"], ">=", 4.0),
    ("torch", "text b64 (77-padded) vs open_clip", lambda r: r["ratios"]["text_b64_vs_open_clip"], ">=", 4.0),
    ("torch", "text b64 (77-padded) vs OpenAI clip", lambda r: r["ratios"]["text_b64_vs_openai"], ">=", 4.0),
    ("torch", "ViT-B/32 load time vs transformers from_pretrained", lambda r: r["ratios"]["load_time_vs_hf"], "<=", 0.5),
    ("tf", "ViT-B/32 image b16 vs transformers TF", lambda r: r["ratios"]["image_b16"]["clip_tf_speedup_vs_hf_tf"], ">=", 1.0),
    ("tf", "ViT-B/32 image b16 vs clip_torch", lambda r: r["ratios"]["image_b16"]["clip_tf_speedup_vs_clip_torch"], ">=", 0.8),
    ("tf", "RN50 image b16 vs clip_torch", lambda r: r["ratios"]["rn50_image_b16"]["clip_tf_speedup_vs_clip_torch"],
     ">=", 0.8),
    ("tf", "text b64 vs transformers TF", lambda r: r["ratios"]["text_b64"]["clip_tf_speedup_vs_hf_tf"], ">=", 4.0),
    ("flax", "ViT-B/32 image b16 vs transformers Flax", lambda r: r["speed_ratios"]["image_b16: clip_flax vs hf_flax"], ">=", 1.0),
    ("flax", "ViT-B/32 image b16 vs clip_torch", lambda r: r["speed_ratios"]["image_b16: clip_flax vs clip_torch"], ">=", 0.8),
    ("flax", "RN50 image b16 vs clip_torch", lambda r: r["speed_ratios"]["rn50_image_b16: clip_flax vs clip_torch"],
     ">=", 0.8),
    ("flax", "text b64 vs transformers Flax", lambda r: r["speed_ratios"]["text_b64: clip_flax vs hf_flax"], ">=", 4.0),
    ("e2e", "clip-zoo embed (500 JPEGs) vs transformers batched loop",
     lambda r: r["ratios"]["clip_zoo_vs_hf_batched"], ">=", 1.5),
    ("e2e", "clip-zoo embed --precision bf16 (500 JPEGs) vs transformers batched loop (fp32)",
     lambda r: r["ratios"]["clip_zoo_bf16_vs_hf_batched"], ">=", 2.5),
    *(("e2e", f"clip-zoo embed {p} wall / bare {p} forward of the same images",
       lambda r, p=p: r["ratios"][f"wall_over_bare_forward_{p}"], "<=", 1.10) for p in ("fp32", "bf16", "int8")),
    ("conversion", "conversion time vs plain copy", lambda r: r["time_ratio"], "<=", 1.5),
    ("conversion", "peak RSS vs checkpoint size", lambda r: r["rss_ratio"], "<=", 1.3),
    ("serve", "throughput under 64 clients vs offline embed", lambda r: r["ratios"]["serve_vs_offline_embed"], ">=", 0.8),
    *(row for case, what in (("image", "image b16"), ("text", "text b64")) for row in _precision_targets(case, what)),
]


def _ratios(node: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Every number stored under a key that names a ratio (``ratios``, ``speed_ratios``, ``time_ratio`` ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("environment", "targets", "timings"):
                continue
            path = f"{prefix}/{key}" if prefix else str(key)
            if "ratio" in key and isinstance(value, (int, float)) and not isinstance(value, bool):
                yield path, float(value)
            elif "ratio" in key and isinstance(value, dict):
                yield from ((f"{path}/{k}", float(v)) for k, v in _flat_numbers(value))
            else:
                yield from _ratios(value, path)


def _flat_numbers(node: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    for key, value in node.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _flat_numbers(value, path)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path, float(value)


def _targets(runs: dict) -> Iterator[tuple[str, dict]]:
    for name, what, read, op, target in TARGETS:
        result = (runs.get(name) or {}).get("result")
        if not result:
            continue
        try:
            value = float(read(result))
        except (KeyError, TypeError):
            continue
        yield name, {"name": what, "value": value, "target": target, "op": op, "unit": "×"}


def _met(t: dict) -> bool:
    return t["value"] >= t["target"] if t.get("op", ">=") == ">=" else t["value"] <= t["target"]


# A timing table switches from milliseconds to seconds when its slowest median reaches this many seconds.
SECONDS_FROM = 10.0
UNITS = {"ms": (1e3, "{:.2f}", "milliseconds"), "s": (1.0, "{:.3f}", "seconds")}


def timing_unit(rows: list[tuple[str, dict]]) -> str:
    """``"ms"`` or ``"s"``: the unit one timing table is written in (its rows' values are seconds)."""
    return "s" if max(v["median"] for _, v in rows) >= SECONDS_FROM else "ms"


def timing_table(rows: list[tuple[str, dict]]) -> list[str]:
    """Markdown lines of one timing table, values converted from seconds to the unit its headers name."""
    unit = timing_unit(rows)
    scale, fmt, _ = UNITS[unit]
    f = lambda x: fmt.format(x * scale)  # noqa: E731
    return [f"| measurement | median {unit} | min–max {unit} |", "|---|---|---|"] + [
        f"| {k} | {f(v['median'])} | {f(v['min'])}–{f(v['max'])} |" for k, v in rows]


def _why_empty(run: dict) -> str:
    """One line saying why a benchmark's section has no table."""
    status = str(run.get("status", "?"))
    if status == "skipped":
        return f"No tables: skipped ({run.get('reason', 'not installed')})."
    if not run.get("result"):
        return ("No tables: the run failed and wrote no result." if status not in ("ok", "reused")
                else "No tables: the run wrote no result.")
    return "No tables: this result records no ratios or timings."


def _plot(name: str, rows: list[tuple[str, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, _, unit_name = UNITS[timing_unit(rows)]
    labels = [r[0] for r in rows]
    med = [r[1]["median"] * scale for r in rows]
    err = [[m - r[1]["min"] * scale for m, r in zip(med, rows)], [r[1]["max"] * scale - m for m, r in zip(med, rows)]]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh(range(len(rows)), med, xerr=err, color="#4c72b0", ecolor="#333333", capsize=3)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit_name} (median, min-max)")
    ax.set_title(f"{name}")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _machine(env: dict) -> str:
    """``CPU name (N cores; ISA flags)`` of an ``environment()`` record: the header's machine, and a section's
    when it differs (a ``--reuse`` or ``--only`` run keeps sections measured earlier, maybe elsewhere; records
    older than the ISA field name only the CPU)."""
    isa = f"; {', '.join(env['isa'])}" if env.get("isa") else ""
    return f"{env['cpu']} ({env.get('cpus', '?')} cores{isa})"


def generate(path: Path = RESULTS / "all.json", docs: Path = DOCS) -> Path:
    """Write ``docs/performance.md`` and ``docs/perf_<name>.png`` from ``path``; returns the Markdown path."""
    data = json.loads(Path(path).read_text())
    docs = Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    env = data["environment"]
    lines = ["# Performance", "",
             "Generated by `python -m benchmarks` (full run) — or `python -m benchmarks.report` from an existing",
             "`benchmarks/results/all.json` — never edited by hand. Ratios compare implementations measured",
             "interleaved in the same run on the same machine.", "",
             f"- mode: {'quick' if data.get('quick') else 'full'}; CPU: {_machine(env)}; collected {env['time']}"
             + ("; some results reused from earlier runs (`--reuse`): each section gives its own time"
                if any(r.get("status") == "reused" for r in data["runs"].values()) else ""),
             f"- plain fp32 matmul (numpy, 2048³): {data['matmul_gflops']:.0f} GFLOP/s",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), ""]
    targets = list(_targets(data["runs"]))
    lines += ["## Targets", ""]
    if targets:
        lines += ["| benchmark | what | measured | target | verdict |", "|---|---|---|---|---|"]
    else:
        lines.append("No targets: none of the benchmarks that define one has a result in this run.")
    for name, t in targets:
        unit = t.get("unit", "×")
        lines.append(f"| {name} | {t['name']} | {t['value']:.2f}{unit} | {t['op']} {t['target']}{unit} | "
                     f"{'met' if _met(t) else '**not met**'} |")
    lines.append("")
    for name, run in data["runs"].items():
        measured = (run.get("result") or {}).get("environment") or {}
        where = _machine(measured) if measured.get("cpu") else ""
        lines += [f"## {name}", "", f"status: {run['status']}" + (f", {run['seconds']} s" if "seconds" in run else "")
                  + f"; measured {measured.get('time', '?')}"
                  + (f" on {where}" if where and where != _machine(env) else ""), ""]
        result = run.get("result") or {}
        ratios = list(_ratios(result))
        rows = list(_timings(result))
        if not ratios and not rows:
            lines += [_why_empty(run), ""]
        if ratios:
            meaning = result.get("ratio_meaning")
            lines += [f"Ratios here: {meaning}.", ""] if isinstance(meaning, str) else []
            lines += ["| ratio (speed-up of ours unless named otherwise) | value |", "|---|---|"]
            lines += [f"| {k} | {v:.3g} |" for k, v in ratios]
            lines.append("")
        if rows:
            lines += timing_table(rows)
            png = docs / f"perf_{name}.png"
            _plot(name, rows, png)
            lines += ["", f"![{name}]({png.name})", ""]
    out = docs / "performance.md"
    out.write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    error = missing_matplotlib("python -m benchmarks.report")
    if error:
        sys.exit(error)
    print(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "all.json"))
