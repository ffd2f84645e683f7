"""OpenAI CLIP text cleaning and pre-tokenization, reproduced exactly, with a fast path.

OpenAI's ``clip.simple_tokenizer`` cleans every text with ``ftfy.fix_text``, ``html.unescape``
twice, ``strip``, a ``regex`` ``\\s+`` -> ``" "`` collapse and ``lower()``. ``ftfy`` costs ~100 us
per text, so texts it provably leaves unchanged skip it (:func:`is_fast`):

* printable ASCII (plus tab, newline, CR) without ``&``: ftfy's fixers all need non-ASCII, ``&``
  or other control characters, and ``html.unescape`` needs ``&``;
* one line of printable ASCII and Latin-1 letters (U+00C0-U+00FF) without ``&`` that ftfy's own
  mojibake detector ``ftfy.badness.is_bad`` passes: with ftfy 6, ``fix_encoding`` returns such
  text unchanged and no other fixer touches these characters (NFC already holds).

Everything else takes the reference path.
"""
from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import Any, Callable, Iterable, List, Tuple

#: OpenAI's pre-tokenization pattern (compiled with ``regex.IGNORECASE`` like the reference).
OPENAI_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                  r"""[^\s\p{L}\p{N}]+""")

# \t \n \r are the only non-printable ASCII characters the fast path accepts: ftfy maps \r to \n
# and all three collapse to one space. Other controls (\x0b, \x1b, \x1c...) go to ftfy.
_FAST_WS = str.maketrans("\t\n\r", "   ")
#: Separates texts in :func:`fast_chunks`' output; no cleaned text holds a tab (``\s`` is collapsed).
SEP_CHUNK = "\t"
_JOIN = "\x01"  # never in a fast text (not printable)
_LATIN_LINE = re.compile("[\t\x20-\x25\x27-\x7e\u00c0-\u00ff]*")  # printable ASCII but '&', tab, Latin-1 letters


@lru_cache(maxsize=None)
def _regex():
    """The third-party ``regex`` module (OpenAI's tokenizer needs \\p{L}, which ``re`` lacks)."""
    try:
        import regex
    except ImportError as exc:  # pragma: no cover - regex is a core dependency
        raise ImportError("clip_core's OpenAI tokenization needs the 'regex' package: pip install regex") from exc
    return regex


@lru_cache(maxsize=None)
def openai_pattern():
    """The compiled OpenAI pre-tokenization regex."""
    regex = _regex()
    return regex.compile(OPENAI_PATTERN, regex.IGNORECASE)


@lru_cache(maxsize=None)
def _whitespace_re():
    return _regex().compile(r"\s+")


@lru_cache(maxsize=None)
def _is_mojibake():
    """ftfy's ``is_bad`` when the Latin-1 shortcut is sound (ftfy 6, or no ftfy), else ``None``."""
    try:
        import ftfy
    except ImportError:
        return lambda text: False
    try:
        from ftfy.badness import is_bad
    except ImportError:  # pragma: no cover - another ftfy layout: no shortcut
        return None
    return is_bad if ftfy.__version__.split(".")[0] == "6" else None


@lru_cache(maxsize=None)
def _fix_text():
    """``ftfy.fix_text`` when ftfy is installed, else the identity (as documented)."""
    try:
        import ftfy
    except ImportError:
        return lambda text: text
    return ftfy.fix_text


def check_texts(texts: Any) -> List[str]:
    """Normalise ``texts`` (a string or a sequence of strings) to a list; ``TypeError`` names a bad item."""
    if isinstance(texts, str):
        return [texts]
    if texts is None:
        raise TypeError("text must be a string or a list of strings, got None")
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"text must be a string or a list of strings, got {type(texts).__name__}: {texts!r:.80}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text[{i}] must be a string, got {type(text).__name__}: {text!r:.80}")
    return texts


def clean_reference(text: str) -> str:
    """Exactly OpenAI's ``whitespace_clean(basic_clean(text)).lower()``."""
    text = _fix_text()(text)
    text = html.unescape(html.unescape(text)).strip()
    return _whitespace_re().sub(" ", text).strip().lower()


def is_plain_ascii(text: str) -> bool:
    """True when ``text`` is printable ASCII plus tab, newline and CR."""
    return text.isascii() and (text.isprintable() or text.translate(_FAST_WS).isprintable())


def is_fast(text: str) -> bool:
    """True when ftfy and ``html.unescape`` provably leave ``text`` unchanged (see the module docstring)."""
    if text.isascii():
        return "&" not in text and is_plain_ascii(text)
    is_bad = _is_mojibake()
    return is_bad is not None and _LATIN_LINE.fullmatch(text) is not None and not is_bad(text)


def clean_fast(text: str) -> str:
    """``clean_reference`` for texts where :func:`is_fast` holds."""
    return " ".join(text.split()).lower()


def split_fast(texts: List[str], check: Callable[[str], bool] = is_fast) -> Tuple[List[int], List[int]]:
    """Indices of the texts ``check`` accepts and of the others (one whole-batch check first).

    ``check`` must accept ``"\\n".join(texts)`` only if it accepts every text (true of
    :func:`is_fast` and :func:`is_plain_ascii`-based checks).
    """
    if check("\n".join(texts)):
        return list(range(len(texts))), []
    flags = [check(t) for t in texts]
    return [i for i, f in enumerate(flags) if f], [i for i, f in enumerate(flags) if not f]


def fast_chunks(texts: List[str]) -> List[str]:
    """Chunks of the cleaned fast ``texts`` (OpenAI's split never crosses a space), :data:`SEP_CHUNK` between texts.

    Whole-batch string operations equal to :func:`clean_fast` on each text followed by
    ``split(" ")``, except that empty chunks may be added (they hold no tokens).
    """
    joined = _JOIN.join(texts).lower()  # fast texts hold no \x01 and no other controls
    for space in "\t\n\r":  # str.replace, not translate: translate is slow on non-ASCII strings
        if space in joined:
            joined = joined.replace(space, " ")
    return joined.replace(_JOIN, f" {SEP_CHUNK} ").split(" ")
