"""`python .ci/compare_classify.py A.json B.json`: two `clip-zoo classify --json` outputs agree.

Same images in the same order, the same ranking of labels for each, probabilities within 1e-4.
Exits 1 with the first difference otherwise (CI: the ONNX engine in an onnx-only venv against torch).
"""
import json
import sys


def main(a_path: str, b_path: str) -> int:
    a, b = (json.load(open(p, encoding="utf-8")) for p in (a_path, b_path))
    if [r["image"] for r in a] != [r["image"] for r in b]:
        print(f"different images: {a_path} vs {b_path}", file=sys.stderr)
        return 1
    worst = 0.0
    for ra, rb in zip(a, b):
        la, lb = [p["label"] for p in ra["predictions"]], [p["label"] for p in rb["predictions"]]
        if la[0] != lb[0]:
            print(f"{ra['image']}: top label {la[0]!r} vs {lb[0]!r}", file=sys.stderr)
            return 1
        pa = {p["label"]: p["probability"] for p in ra["predictions"]}
        pb = {p["label"]: p["probability"] for p in rb["predictions"]}
        worst = max([worst] + [abs(pa[k] - pb[k]) for k in pa.keys() & pb.keys()])
    print(f"{len(a)} images: same top labels, max probability difference {worst:.2e}")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
