"""A deterministic corpus of >= 500 strings for the tokenizer tests, and the reference-disagreement list.

``python -m tests.tokenizer_corpus`` regenerates the disagreement table in ``docs/tokenizer.md``
(strings where OpenAI's ``clip.tokenize`` and transformers' ``CLIPTokenizerFast`` give different ids);
``tests/test_tokenizer.py`` checks that the table in the doc is current.
"""
from __future__ import annotations

import random
from typing import Dict, List, Tuple

CLASSES = ["cat", "dog", "tabby kitten", "golden retriever", "airplane", "Ferrari 458", "sunflower", "T-shirt",
           "hot-air balloon", "lawn mower", "Persian cat", "Dalmatian", "jack-o'-lantern", "Yorkshire terrier",
           "espresso", "ice cream", "école", "crème brûlée"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "A PHOTO OF THE {}!", "itap of my {}",
             "a {} in a video game.",
             "art of the {}", "a sketch of a {}...", "a low resolution photo of the {}", "the origami {}.",
             "a close-up photo of a {}"]
SCRIPTS = ["Ελληνικά γράμματα", "русский текст", "中文字符测试", "日本語のテキスト", "한국어 텍스트", "العربية نص",
           "עברית טקסט", "हिन्दी पाठ", "ภาษาไทย", "ქართული", "Ꭰ Ꭱ Ꭲ cherokee", "ΣΊΣΥΦΟΣ ſ ß ẞ", "İstanbul ıi",
           "Ǆ ǅ ǆ titlecase", "ǈungla", "Ωmega Ω", "ﬁne ﬂower ﬀ ligatures", "ＡＢＣ ｆｕｌｌｗｉｄｔｈ １２３",
           "ｶﾀｶﾅ halfwidth", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math", "𝐁𝐨𝐥𝐝", "Ⓐⓑⓒ circled", "x²+y³=z⁴", "½ ¼ ¾ ⅓", "Ⅻ Ⅳ ⅷ roman",
           "٣٤٥ arabic digits", "१२३ devanagari digits", "ℕ ℤ ℚ ℝ", "µ micro Å angstrom K kelvin"]
MARKS = ["e\u0301", "cafe\u0301", "n\u0303o", "\u0301", "\u0301\u0301\u0301", "a\u0308\u0304", "\u0345", "ι\u0345",
         "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "क्षि", "ไม้", "\u200d", "a\u200db", "\u200bzero width", "\ufeffbom",
         "\u202eright to left\u202c", "\u0300a", "ñ vs n\u0303", "Å vs A\u030a", "ǖ"]
EMOJI = ["😀", "👍🏽", "👩‍👩‍👧‍👦", "🇫🇷🇩🇪", "1️⃣", "❤️", "🏳️‍🌈", "🤖 robot", "a😀b", "😀😀😀", "🫠", "☕️ coffee",
         "🐱 cat emoji", "🎉🎉 party!!", "🧑🏿‍🚀", "✨sparkles✨"]
HTML = ["&amp;", "&amp;amp;", "&amp;amp;amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "<b>bold</b> &amp; tags",
        "&quot;quoted&quot;",
        "&#39;s", "it&#39;s", "&#x27;ll", "&nbsp;space", "&copy; 2024", "&AMP;", "&eacute;", "tom &amp jerry",
        "&unknown;", "&#128512;", "&#0;", "&#xD800;", "a &amp; b &lt; c", "&amp;lt;", "R&D", "AT&T", "&"]
APOSTROPHES = ["it's", "IT'S", "we'll", "WE'LL", "they're", "I've", "I'm", "you'd", "don't", "'s", "''s", "'sa",
               "'ll'll", "it’s", "we’ll", "‘single’", "“double”", "„low”", "«guillemets»", "dog's ball's",
               "o'clock", "rock 'n' roll", "'tis", "cats'", "'", "''", "'''", "`backtick`", "it´s", "it′s"]
DIGITS = ["0", "1234567890", "3.14159", "1,000,000", "2024-01-01", "10:30pm", "v1.2.3", "#1", "100%", "$9.99",
          "0x1F", "1e-5", "-42", "007", "4k 8k 16k", "a1b2c3"]
PUNCT = ["!!!", "...", "?!?!", "---", "#$%^&*", "()[]{}", "<<>>", "!!!???...", "~`|\\", "_-_-_", ".", ",", "!",
         "?", "-", "…", "—–", "。、", "¡¿", "@user #tag", "a.b.c", "!<|endoftext|>", "x<|endoftext|>y",
         "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "<|startoftext|>hi<|endoftext|>", "<|endoftext", "|>"]
SPACES = ["a\nb", "a\tb", "a\r\nb", "a\rb", "a\x0bb", "a\x0cb", "a\u0085b", "\u0085", "a\u00a0b", "a\u2028b",
          "a\u2029b", "a\u3000b", "a\u1680b", "a\u2009b", "a\u202fb", "a\x1cb", "a\x1fb", "  lead", "trail  ",
          "\n\n\n", "\t", " ", "many     spaces", "a \n\t b", "tab\tseparated\tvalues", "line1\nline2\nline3"]
CONTROL = ["a\x00b", "\x1b[31mred\x1b[0m", "a\x7fb", "a\x08b", "\x01\x02\x03", "a\u0080b", "a\u009cb", "\u206abc",
           "\ufffc", "\ufffd", "a\ufff9b"]
MOJIBAKE = ["cafÃ©", "â€œquotedâ€\x9d", "donâ€™t", "Ã¼ber", "naÃ¯ve", "â€\x94 dash", "SchrÃ¶dinger", "Ã\xa0 la",
            "ãƒ¡ã‚¤ãƒ³", "Ã©Ã©Ã©"]

_POOL = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?'\"-_()&#\n\t"
         "éüñçßøåÆŒ’‘“”…—–€£¥©®°±×÷αβγδΩжщЯ中文日本語한국ไทยअआ\u0301\u0308😀👍🏽🎉❤️\u0085\u00a0\u200b\u3000")


def _long_strings(rng: random.Random) -> List[str]:
    words = [w for t in TEMPLATES for w in t.format("x").split()] + CLASSES
    out = [("a photo of a cat " * 60)[:1000], "a" * 1000, "!" * 1000, "1" * 1000, "😀" * 1000, "é" * 1000,
           " ".join(rng.choice(words) for _ in range(400))[:1000], "&amp;" * 200, ("it's " * 200)[:1000],
           "".join(rng.choice(_POOL) for _ in range(1000))]
    return out


def _random_strings(rng: random.Random, count: int) -> List[str]:
    return ["".join(rng.choice(_POOL) for _ in range(rng.randint(1, 60))) for _ in range(count)]


def build_corpus(seed: int = 0) -> List[str]:
    """The deterministic test corpus (unique strings, >= 500, including the empty string)."""
    rng = random.Random(seed)
    prompts = [t.format(c) for t in TEMPLATES for c in CLASSES]  # 180 realistic prompts
    mixed = [f"{rng.choice(TEMPLATES).format(rng.choice(CLASSES))} {rng.choice(SCRIPTS + EMOJI + HTML + MARKS)}"
             for _ in range(60)]
    groups = [[""], prompts, SCRIPTS, MARKS, EMOJI, HTML, APOSTROPHES, DIGITS, PUNCT, SPACES, CONTROL, MOJIBAKE,
              mixed, _long_strings(rng), _random_strings(rng, 150)]
    corpus = list(dict.fromkeys(s for group in groups for s in group))
    assert len(corpus) >= 500, len(corpus)
    return corpus


def openai_sequences(texts: List[str], context_length: int = 77) -> List[List[int]]:
    """OpenAI's token lists (with SOT/EOT, truncated like ``clip.tokenize(truncate=True)``), unpadded."""
    from clip.clip import _tokenizer

    sot, eot = _tokenizer.encoder["<|startoftext|>"], _tokenizer.encoder["<|endoftext|>"]
    out = []
    for text in texts:
        seq = [sot] + _tokenizer.encode(text) + [eot]
        out.append(seq if len(seq) <= context_length else seq[:context_length - 1] + [eot])
    return out


def disagreements(hf_tokenizer, texts: List[str]) -> List[Tuple[str, List[int], List[int]]]:
    """(text, OpenAI ids, CLIPTokenizerFast ids) for every text where the two references differ."""
    hf = hf_tokenizer(texts, truncation=True, max_length=77)["input_ids"]
    return [(t, o, h) for t, o, h in zip(texts, openai_sequences(texts), hf) if o != h]


BEGIN, END = "<!-- disagreements:begin -->", "<!-- disagreements:end -->"


def cause(text: str) -> str:
    """Which step of OpenAI's cleaning (that CLIPTokenizerFast lacks) changes ``text``."""
    import html

    import ftfy

    causes = [name for name, changed in [("ftfy", ftfy.fix_text(text) != text),
                                          ("html", html.unescape(text) != text),
                                          ("special-token text", "<|" in text)] if changed]
    return " + ".join(causes) or "other"


def disagreement_table(rows: List[Tuple[str, List[int], List[int]]]) -> str:
    """The markdown block listing the disagreements (generated, never hand-typed)."""
    lines = [BEGIN, "", f"{len(rows)} of the corpus strings differ between the references "
             "(`tokenize` follows OpenAI, the HF-style call follows `CLIPTokenizerFast`):", "",
             "| # | text (Python repr, first 50 chars) | cause | first differing position | OpenAI ids from there "
             "| CLIPTokenizerFast ids from there |",
             "|---|---|---|---|---|---|"]
    for i, (text, ours, theirs) in enumerate(rows):
        shown = repr(text[:50]).replace("|", "\\|").replace("`", "'")
        k = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        lines.append(f"| {i} | `{shown}` | {cause(text)} | {k} | {ours[k:k + 5]} | {theirs[k:k + 5]} |")
    return "\n".join(lines + ["", END])


def hf_files_from_bundled(directory: str) -> Dict[str, str]:
    """vocab.json / merges.txt built from the bundled .gz the way transformers' conversion does."""
    import gzip
    import json
    import os

    from clip.simple_tokenizer import bytes_to_unicode

    from clip_core.tokenizer import BUNDLED_BPE

    lines = gzip.open(BUNDLED_BPE).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    paths = {"vocab_file": os.path.join(directory, "vocab.json"), "merges_file": os.path.join(directory, "merges.txt")}
    with open(paths["vocab_file"], "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(paths["merges_file"], "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return paths


def main() -> None:
    """Regenerate the disagreement table in docs/tokenizer.md."""
    import os
    import tempfile

    import torchvision  # noqa: F401  (before anything that may import tensorflow)
    from transformers import CLIPTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        hf = CLIPTokenizerFast(**hf_files_from_bundled(tmp), model_max_length=77)
        table = disagreement_table(disagreements(hf, build_corpus()))
    doc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "tokenizer.md")
    text = open(doc, encoding="utf-8").read()
    head, rest = text.split(BEGIN, 1)
    with open(doc, "w", encoding="utf-8") as f:
        f.write(head + table + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
