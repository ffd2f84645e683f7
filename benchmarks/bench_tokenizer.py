"""Tokenizer throughput: clip_core vs transformers' CLIPTokenizerFast vs OpenAI's ``clip.tokenize``.

Run: ``python -m benchmarks.bench_tokenizer [--texts 10000] [--repeats 5] [--quick]``.

One process, one run: realistic zero-shot prompts (templates x class names, all distinct) are
tokenized by every contender, interleaved round robin, padded to 77. Outputs are checked identical
to the matching reference before timing. Prints texts/s and ratios; writes
``benchmarks/results/tokenizer.json``.

Contenders: ``clip_core.tokenize`` (OpenAI ids; its chunk cache is warm after the warm-up run, as
OpenAI's and the Rust BPE caches are), the same with the cache emptied before every run
(``cold``), the HF-style ``CLIPTokenizer()(...)`` call, ``CLIPTokenizerFast`` and ``clip.tokenize``.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from typing import Callable, Dict, List

import numpy as np

try:  # torchvision before anything that may import TensorFlow
    import torchvision  # noqa: F401
except ImportError:  # pragma: no cover
    pass

from .common import interleaved, write_result

TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "a cropped photo of a {}.", "a bright photo of the {}.",
             "a photo of my {}.", "art of the {}.", "a drawing of a {}.", "a close-up photo of the {}.",
             "a black and white photo of a {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
             "graffiti of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a plastic {}.", "a toy {}.",
             "itap of a {}.", "a sculpture of the {}.", "a photo of the large {}.", "a painting of a {}."]
ADJECTIVES = ["red", "small", "fluffy", "old", "wooden", "striped", "shiny", "broken", "giant", "sleepy", "golden",
              "rusty", "Siberian", "vintage", "electric", "tiny", "happy", "wet", "spotted", "frozen"]
NOUNS = ["cat", "dog", "tabby cat", "golden retriever", "airplane", "sports car", "sunflower", "teapot", "bicycle",
         "lighthouse", "pizza", "violin", "hot-air balloon", "owl", "espresso machine", "tree frog", "castle",
         "sailboat", "umbrella", "koala", "typewriter", "tractor", "jellyfish", "crème brûlée", "Labrador's toy"]


def make_prompts(n: int, seed: int = 0) -> List[str]:
    """``n`` distinct realistic prompts (a few with accents/apostrophes, which take the ftfy path)."""
    rng = random.Random(seed)
    out: Dict[str, None] = {}
    while len(out) < n:
        thing = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        if rng.random() < 0.3:
            thing += f" number {rng.randint(1, 999)}"
        out[rng.choice(TEMPLATES).format(thing)] = None
    return list(out)


def contenders(prompts: List[str]) -> Dict[str, Callable[[], object]]:
    """The functions timed, after checking their outputs agree with the references."""
    import clip
    from transformers import CLIPTokenizerFast

    import clip_core
    from clip_core.tokenizer import CLIPTokenizer, default_tokenizer

    ours = CLIPTokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        ours.save_pretrained(tmp)
        hf = CLIPTokenizerFast.from_pretrained(tmp)
    hf_kwargs = dict(padding="max_length", truncation=True, max_length=77, return_tensors="np")

    def cold():
        default_tokenizer()._openai_encoder()._reset()  # empty the chunk and word caches
        return clip_core.tokenize(prompts, truncate=True)

    fns = {"clip_core.tokenize": lambda: clip_core.tokenize(prompts, truncate=True),
           "clip_core.tokenize (cold cache)": cold,
           "CLIPTokenizer() HF call": lambda: ours(prompts, **hf_kwargs),
           "CLIPTokenizerFast": lambda: hf(prompts, **hf_kwargs),
           "openai clip.tokenize": lambda: clip.tokenize(prompts, truncate=True)}
    np.testing.assert_array_equal(fns["clip_core.tokenize"](), fns["openai clip.tokenize"]().numpy())
    np.testing.assert_array_equal(cold(), fns["openai clip.tokenize"]().numpy())
    a, b = fns["CLIPTokenizer() HF call"](), fns["CLIPTokenizerFast"]()
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(a["attention_mask"], b["attention_mask"])
    return fns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tokenizer", description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 texts, 3 repeats")
    args = parser.parse_args(argv)
    n, repeats = (2_000, 3) if args.quick else (args.texts, args.repeats)
    prompts = make_prompts(n)
    times = interleaved(contenders(prompts), repeats=repeats, warmup=1)
    rate = {name: n / t["median"] for name, t in times.items()}
    ratios = {
        "tokenize_vs_openai": rate["clip_core.tokenize"] / rate["openai clip.tokenize"],
        "tokenize_cold_vs_openai": rate["clip_core.tokenize (cold cache)"] / rate["openai clip.tokenize"],
        "tokenize_vs_CLIPTokenizerFast": rate["clip_core.tokenize"] / rate["CLIPTokenizerFast"],
        "hf_call_vs_CLIPTokenizerFast": rate["CLIPTokenizer() HF call"] / rate["CLIPTokenizerFast"],
        "hf_call_vs_openai": rate["CLIPTokenizer() HF call"] / rate["openai clip.tokenize"],
    }
    print(f"{n} prompts, {repeats} interleaved repeats, medians")
    for name, r in rate.items():
        print(f"  {name:34s} {r:12,.0f} texts/s  (median {times[name]['median'] * 1e3:8.1f} ms)")
    for name, r in ratios.items():
        print(f"  {name:34s} {r:8.2f}x")
    targets = {"hf_call_vs_CLIPTokenizerFast": 1.0, "tokenize_vs_CLIPTokenizerFast": 1.0, "tokenize_vs_openai": 20.0}
    met = {k: ratios[k] >= v for k, v in targets.items()}
    path = write_result("tokenizer_quick" if args.quick else "tokenizer", {"texts": n, "repeats": repeats, "texts_per_second": rate, "times": times,
                                      "ratios": ratios, "targets": targets, "targets_met": met})
    print(f"targets met: {met}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
