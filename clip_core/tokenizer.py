"""CLIP's byte-level BPE tokenizer on the Rust ``tokenizers`` library, with two exact behaviours.

* :func:`tokenize` / :meth:`CLIPTokenizer.encode_openai` give OpenAI's ``clip.tokenize`` ids exactly
  (ftfy + html cleaning, OpenAI's ``regex`` split, zero padding, EOT kept last on truncation).
* ``CLIPTokenizer(...)(texts, padding=..., truncation=..., max_length=..., return_tensors=...)``
  gives ``transformers.CLIPTokenizerFast`` ids and attention masks exactly (its Rust pipeline:
  NFC, ``\\s+`` collapse, lower-case, no ftfy, no html unescaping).

Speed: both paths pack ids into arrays with vectorised numpy; the OpenAI path caches the ids of each
whitespace-separated chunk (OpenAI's split never crosses a space), BPE-ing new words in one Rust batch.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import threading
from functools import lru_cache
from itertools import chain
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .batch import BatchEncoding
from ._text_clean import (SEP_CHUNK, check_texts, clean_reference, fast_chunks, is_plain_ascii, openai_pattern,
                          split_fast)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
OPENAI_NUM_MERGES = 49152 - 256 - 2  # OpenAI keeps this many merges after the version line
BUNDLED_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "bpe_simple_vocab_16e6.txt.gz")
HF_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
DEFAULT_MAX_LENGTH = 77
_CACHE_LIMIT = 1_000_000  # chunk-cache entries before it is reset
_SEP_ID = -1  # id of the text-separator chunk inside the OpenAI encoder

Vocab = Dict[str, int]
Merges = List[Tuple[str, str]]


# ----------------------------------------------------------------------------- vocabulary files
@lru_cache(maxsize=None)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table (256 entries)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


def vocab_from_merges(merges: Merges) -> Vocab:
    """OpenAI's vocabulary: byte chars, byte chars + ``</w>``, merged pairs, then BOS, EOS."""
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def _parse_merges(lines: List[str], source: str) -> Merges:
    merges = []
    for n, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}: malformed BPE merge {line!r} (entry {n})")
        merges.append((parts[0], parts[1]))
    return merges


def read_openai_bpe(path: str) -> Tuple[Vocab, Merges]:
    """Vocabulary and merges from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (gzip or plain text)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    lines = raw.decode("utf-8").split("\n")[1:OPENAI_NUM_MERGES + 1]
    merges = _parse_merges([line for line in lines if line.strip()], path)
    return vocab_from_merges(merges), merges


@lru_cache(maxsize=1)
def bundled_bpe() -> Tuple[Vocab, Merges]:
    """The bundled OpenAI vocabulary (read once per process)."""
    return read_openai_bpe(BUNDLED_BPE)


def read_hf_files(vocab_file: str, merges_file: str) -> Tuple[Vocab, Merges]:
    """HF ``vocab.json`` + ``merges.txt`` (a leading ``#version`` line is skipped, as HF does)."""
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        lines = f.read().strip().split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    return vocab, _parse_merges(lines[:OPENAI_NUM_MERGES], merges_file)


def read_tokenizer_json(path: str) -> Tuple[Vocab, Merges]:
    """Vocabulary and merges of the BPE model in a ``tokenizer.json`` (either merge format)."""
    with open(path, encoding="utf-8") as f:
        model = json.load(f)["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: expected a BPE model, found {model.get('type')!r}")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


# ----------------------------------------------------------------------------- Rust pipelines
def _bpe_model(vocab: Vocab, merges: Merges):
    from tokenizers import models

    return models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                      end_of_word_suffix="</w>", fuse_unk=False, unk_token=EOS)


def build_hf_backend(vocab: Vocab, merges: Merges, pad_token: str = EOS):
    """The ``tokenizers.Tokenizer`` transformers' ``CLIPConverter`` builds (same JSON), incl. special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors

    tok = Tokenizer(_bpe_model(vocab, merges))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HF_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    # Positional on purpose: tokenizers 0.23 renamed the keyword ``cls`` to ``cls_token``; the order
    # (sep, cls, trim_offsets, add_prefix_space) is the same in every version the bounds allow.
    tok.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]), False, False)
    if pad_token not in (BOS, EOS):  # transformers registers any other pad token as a special token
        tok.add_special_tokens([AddedToken(pad_token, special=True, normalized=False)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in (BOS, EOS)])
    return tok


def _build_word_bpe(model):
    """A Rust BPE for single pre-split words: byte-level mapping, ``</w>``, no specials, no normalizer."""
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return tok


class _OpenAIEncoder:
    """OpenAI's split + BPE with a chunk cache: cleaned text -> content ids (no BOS/EOS).

    Chunks (space-separated parts of a cleaned text) map to their ids as packed int32 bytes, so a
    batch is one ``b"".join`` of cache entries; unseen chunks are split with OpenAI's regex and their
    new words BPE-d in one Rust batch.
    """

    def __init__(self, word_bpe, bos_id: int, eos_id: int):
        self._bpe = word_bpe
        self._fixed = {BOS: (bos_id,), EOS: (eos_id,)}  # OpenAI's cache maps the specials to themselves
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pieces: Dict[str, Tuple[int, ...]] = dict(self._fixed)
        self._chunks: Dict[str, bytes] = {"": b"", SEP_CHUNK: np.array([_SEP_ID], np.int32).tobytes()}

    def _fill(self, chunks: set) -> None:
        findall = openai_pattern().findall
        split = {c: findall(c) for c in chunks}
        new = list(set(chain.from_iterable(split.values())).difference(self._pieces))
        if new:
            encs = self._bpe.encode_batch([[p] for p in new], is_pretokenized=True, add_special_tokens=False)
            self._pieces.update(zip(new, (tuple(e.ids) for e in encs)))
        pieces = self._pieces
        for chunk, parts in split.items():
            ids = list(chain.from_iterable(map(pieces.__getitem__, parts)))
            self._chunks[chunk] = np.array(ids, np.int32).tobytes()

    def _lookup(self, chunks: List[str]) -> List[bytes]:
        """The packed ids of each chunk, BPE-ing unseen chunks first."""
        try:
            return list(map(self._chunks.__getitem__, chunks))
        except KeyError:
            with self._lock:  # one thread fills (or resets) the caches at a time
                if len(self._chunks) > _CACHE_LIMIT:  # bound the memory of long-running processes
                    self._reset()
                self._fill(set(chunks).difference(self._chunks))
                return list(map(self._chunks.__getitem__, chunks))

    def encode_fast(self, texts: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Content ids (flat int32) and lengths (B,) of texts that ``split_fast`` accepted (batch cleaning)."""
        if not texts:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        flat = np.frombuffer(b"".join(self._lookup(fast_chunks(texts))), np.int32)
        sep = np.flatnonzero(flat == _SEP_ID)  # (B - 1,) text boundaries
        return flat[flat != _SEP_ID], np.diff(np.concatenate([[-1], sep, [len(flat)]])) - 1

    def encode_cleaned(self, cleaned: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Content ids (flat int32) and lengths (B,) of texts already cleaned like OpenAI."""
        seqs = self._lookup(" ".join(cleaned).split(" "))  # cleaned texts hold single spaces only
        chunk_ends = np.cumsum([0] + [len(q) // 4 for q in seqs])  # (C + 1,)
        text_ends = np.cumsum([0] + [c.count(" ") + 1 for c in cleaned])  # (B + 1,) in chunks
        return np.frombuffer(b"".join(seqs), np.int32), np.diff(chunk_ends[text_ends])

    def encode(self, texts: List[str]) -> List[Tuple[List[int], np.ndarray, np.ndarray]]:
        """Raw texts -> groups ``(indices, flat content ids, lengths)``: batch-cleaned ones, then ftfy ones."""
        fast, slow = split_fast(texts)
        groups = [(fast, *self.encode_fast([texts[i] for i in fast]))]
        if slow:
            groups.append((slow, *self.encode_cleaned([clean_reference(texts[i]) for i in slow])))
        return groups


# ----------------------------------------------------------------------------- packing
def pack(flat: np.ndarray, lengths: np.ndarray, width: int, bos: int, eos: int, pad: int,
         limit: Optional[int] = None, dtype=np.int64) -> Tuple[np.ndarray, np.ndarray]:
    """Rows ``[bos] + content + [eos]`` padded with ``pad`` to ``width`` -> (ids (B, W), row lengths (B,)).

    ``flat`` holds the content ids of all rows back to back, ``lengths`` (B,) their counts. A row
    longer than ``limit`` keeps its first ``limit - 1`` tokens and ends with ``eos`` (OpenAI's and
    the Rust truncation agree on this). ``width`` must be >= every resulting row length.
    """
    batch = len(lengths)
    full = lengths + 2 if limit is None else np.minimum(lengths + 2, limit)  # (B,)
    out = np.full((batch, width), pad, dtype=dtype)  # (B, W)
    if batch == 0:
        return out, full
    starts = np.cumsum(lengths) - lengths  # (B,) offset of each row's content in flat
    dest = np.arange(len(flat)) + np.repeat(np.arange(batch) * width + 1 - starts, lengths)  # (N,) flat index in out
    if (full - 2 < lengths).any():  # truncated rows: drop content beyond full - 2
        keep = dest - np.repeat(np.arange(batch) * width + 1, lengths) < np.repeat(full - 2, lengths)
        dest, flat = dest[keep], flat[keep]
    out.reshape(-1)[dest] = flat
    out[:, 0] = bos
    out[np.arange(batch), full - 1] = eos
    return out, full


def _ids_to_flat(id_lists: List[List[int]]) -> Tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, id_lists), np.int64, len(id_lists))
    return np.fromiter(chain.from_iterable(id_lists), np.int64, int(lengths.sum())), lengths


def to_tensor(array: np.ndarray, return_tensors: Optional[str]):
    """Convert an int64 (B, T) array like transformers' ``BatchEncoding`` (np/pt int64, tf/jax int32)."""
    from .tensors import convert_to_tensors

    if return_tensors is None:
        return array.tolist()
    return convert_to_tensors(array.astype(np.int32) if return_tensors in ("tf", "jax", "flax") else array,
                              "jax" if return_tensors == "flax" else return_tensors)


TokenizerOutput = BatchEncoding  # the former name of the output mapping


# ----------------------------------------------------------------------------- the tokenizer
_LONGEST, _MAX_LENGTH, _NO_PAD = "longest", "max_length", "do_not_pad"
_PADDING = {True: _LONGEST, "longest": _LONGEST, "max_length": _MAX_LENGTH, False: _NO_PAD, None: _NO_PAD,
            "do_not_pad": _NO_PAD}
_TRUNCATION = {True: True, "longest_first": True, "only_first": True, False: False, "do_not_truncate": False}
VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when a config does not set one
LARGE_INTEGER = int(1e20)  # above this, transformers treats model_max_length as "no maximum"
_CLIP_SPECIALS = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS}
logger = logging.getLogger(__name__)


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization``: drop the spaces before punctuation and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


def _token_content(value: Any) -> Optional[str]:
    """A special token as stored in HF configs: a string or ``{"content": ...}``."""
    return value.get("content") if isinstance(value, dict) else getattr(value, "content", value)


def _read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _id_list(ids: Any) -> List[int]:
    """Token ids from an id, a list, numpy array or framework tensor, as a list of Python ints."""
    if hasattr(ids, "detach"):  # torch (also on an accelerator or requiring grad)
        ids = ids.detach().cpu()
    arr = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids)
    if arr.ndim == 0 and np.issubdtype(arr.dtype, np.integer):
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"token ids must be a 1-D sequence of integers, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64).tolist()


def _load_tokenizer_json(path: str, pad_token: Optional[str]):
    """(vocab, merges, backend) of a ``tokenizer.json``; a pad token it lacks is added as a special token."""
    from tokenizers import AddedToken, Tokenizer

    vocab, merges = read_tokenizer_json(path)
    backend = Tokenizer.from_file(path)
    backend.no_padding()
    backend.no_truncation()
    if pad_token is not None and pad_token not in {t.content for t in backend.get_added_tokens_decoder().values()}:
        backend.add_special_tokens([AddedToken(pad_token, special=True, normalized=False)])
    return vocab, merges, backend


class CLIPTokenizer:
    """CLIP's BPE tokenizer: OpenAI-exact :meth:`encode_openai` and a ``CLIPTokenizerFast``-exact ``__call__``.

    ``CLIPTokenizer()`` uses the bundled OpenAI vocabulary. ``pad_token`` (a token string or id)
    pads the HF-style call: ``"<|endoftext|>"`` (default, as transformers) or ``"!"`` / ``0`` for
    zero padding. :func:`tokenize` always pads with 0, as OpenAI.
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab: Union[Vocab, str, os.PathLike, None] = None,
                 merges: Union[Merges, str, os.PathLike, None] = None, *,
                 pad_token: Union[str, int] = EOS, model_max_length: Optional[int] = None, backend=None,
                 vocab_file: Union[str, os.PathLike, None] = None, merges_file: Union[str, os.PathLike, None] = None,
                 tokenizer_file: Union[str, os.PathLike, None] = None, errors: str = "replace",
                 clean_up_tokenization_spaces: bool = False, **special_tokens: Any):
        """``CLIPTokenizer()`` (bundled vocabulary), ``CLIPTokenizer(vocab, merges)`` (in memory), or as
        transformers: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` / ``CLIPTokenizer("vocab.json",
        "merges.txt")`` / ``CLIPTokenizer(tokenizer_file="tokenizer.json")``.

        ``model_max_length`` defaults to 77 for the bundled / in-memory vocabulary and, as in
        transformers, to "no maximum" (``VERY_LARGE_INTEGER``) when built from files.
        ``unk_token`` / ``bos_token`` / ``eos_token`` may be given but must be CLIP's own.
        """
        for name, value in special_tokens.items():
            if name not in _CLIP_SPECIALS:
                if name in ("do_lower_case", "add_prefix_space", "tokenizer_class", "name_or_path",
                            "added_tokens_decoder", "additional_special_tokens", "from_slow", "split_special_tokens"):
                    continue  # transformers bookkeeping keys with no effect on CLIP's pipeline
                raise TypeError(f"CLIPTokenizer got an unexpected keyword argument {name!r}")
            if _token_content(value) != _CLIP_SPECIALS[name]:
                raise ValueError(f"{name} must be {_CLIP_SPECIALS[name]!r} (CLIP's vocabulary), got {value!r}")
        if isinstance(vocab, (str, os.PathLike)) or isinstance(merges, (str, os.PathLike)):
            if vocab_file is not None or merges_file is not None:
                raise ValueError("give the vocabulary files either positionally or as vocab_file / merges_file")
            vocab_file, merges_file, vocab, merges = vocab, merges, None, None
        from_files = tokenizer_file is not None or vocab_file is not None or merges_file is not None
        if from_files:
            if vocab is not None or merges is not None or backend is not None:
                raise ValueError("give either vocabulary files or an in-memory vocab / merges, not both")
            if tokenizer_file is not None:
                pad = None if isinstance(pad_token, (int, np.integer)) else _token_content(pad_token)
                vocab, merges, backend = _load_tokenizer_json(os.fspath(tokenizer_file), pad)
            elif vocab_file is None or merges_file is None:
                raise ValueError("vocab_file and merges_file must be given together (or tokenizer_file)")
            else:
                vocab, merges = read_hf_files(os.fspath(vocab_file), os.fspath(merges_file))
        if model_max_length is None:
            model_max_length = VERY_LARGE_INTEGER if from_files else DEFAULT_MAX_LENGTH
        if not isinstance(pad_token, (int, np.integer)):
            pad_token = _token_content(pad_token)  # a string, an AddedToken or HF's {"content": ...}
        self.errors = errors
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        if vocab is None:
            if merges is not None:
                raise ValueError("merges given without vocab")
            vocab, merges = bundled_bpe()
        if merges is None:
            raise ValueError("vocab given without merges")
        missing = [t for t in (BOS, EOS) if t not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the CLIP special tokens {missing}")
        if isinstance(pad_token, (int, np.integer)) and not isinstance(pad_token, bool):
            pad_token = {i: t for t, i in vocab.items()}.get(int(pad_token), pad_token)
        if not isinstance(pad_token, str) or pad_token not in vocab:
            raise ValueError(f"pad_token {pad_token!r} is not in the vocabulary")
        self._vocab, self._merges = vocab, list(merges)
        self.pad_token, self.bos_token, self.eos_token, self.unk_token = pad_token, BOS, EOS, EOS
        self.model_max_length = int(model_max_length)
        self._backend = backend if backend is not None else build_hf_backend(vocab, self._merges, pad_token)
        self._openai: Optional[_OpenAIEncoder] = None
        # Added tokens besides BOS/EOS (transformers adds a non-standard pad token) are split out of texts.
        extra = [t for t in self._backend.get_added_tokens_decoder().values() if t.content not in (BOS, EOS)]
        self._extra_tokens = None if any(t.normalized for t in extra) else [t.content for t in extra]

    # ------------------------------------------------------------------ constructors / saving
    @classmethod
    def from_openai_bpe(cls, path: str, **kwargs: Any) -> "CLIPTokenizer":
        """Load OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (or a file in that format)."""
        vocab, merges = read_openai_bpe(path)
        return cls(vocab, merges, **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs: Any) -> "CLIPTokenizer":
        """Load an HF tokenizer directory: ``tokenizer.json``, else ``vocab.json`` + ``merges.txt``.

        ``pad_token`` and ``model_max_length`` come from ``tokenizer_config.json`` /
        ``special_tokens_map.json`` (as transformers reads them) unless given in ``kwargs``.
        """
        from .default_model import resolve_checkpoint  # "default", a Hugging Face id in the local cache

        revision, cache_dir = kwargs.pop("revision", None), kwargs.pop("cache_dir", None)
        directory = os.fspath(resolve_checkpoint(directory, revision=revision, cache_dir=cache_dir))
        config = _read_json(os.path.join(directory, "tokenizer_config.json"))
        tokens_map = _read_json(os.path.join(directory, "special_tokens_map.json"))
        pad = _token_content(config.get("pad_token")) or _token_content(tokens_map.get("pad_token")) or EOS
        kwargs.setdefault("pad_token", pad)
        kwargs.setdefault("model_max_length", config.get("model_max_length", VERY_LARGE_INTEGER))
        kwargs.setdefault("clean_up_tokenization_spaces", bool(config.get("clean_up_tokenization_spaces", False)))
        tok_json = os.path.join(directory, "tokenizer.json")
        vocab_file, merges_file = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
        if os.path.isfile(tok_json):
            vocab, merges, backend = _load_tokenizer_json(tok_json, kwargs["pad_token"])
            return cls(vocab, merges, backend=backend, **kwargs)
        if os.path.isfile(vocab_file) and os.path.isfile(merges_file):
            vocab, merges = read_hf_files(vocab_file, merges_file)
            return cls(vocab, merges, **kwargs)
        raise FileNotFoundError(f"{directory}: no tokenizer.json and no vocab.json + merges.txt")

    def save_pretrained(self, directory: str) -> Tuple[str, ...]:
        """Write the HF tokenizer files; returns their paths.

        ``vocab.json``, ``merges.txt``, ``tokenizer.json``, ``tokenizer_config.json`` and
        ``special_tokens_map.json``, as ``transformers.CLIPTokenizerFast.save_pretrained`` does.
        """
        from .io import atomic_write_bytes

        os.makedirs(directory, exist_ok=True)
        added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                          "single_word": t.single_word, "special": t.special}
                 for i, t in sorted(self._backend.get_added_tokens_decoder().items())}
        config = {"added_tokens_decoder": added, "bos_token": BOS,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                  "do_lower_case": True, "eos_token": EOS, "errors": self.errors,
                  "model_max_length": self.model_max_length, "pad_token": self.pad_token,
                  "tokenizer_class": "CLIPTokenizer", "unk_token": EOS}
        tokens_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": self.pad_token, "unk_token": EOS}
        files = {
            "vocab.json": json.dumps(self._vocab, ensure_ascii=False),
            "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merges),
            "tokenizer.json": self._backend.to_str(),
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            "special_tokens_map.json": json.dumps(tokens_map, indent=2) + "\n",
        }
        paths = []
        for name, text in files.items():
            paths.append(os.path.join(directory, name))
            atomic_write_bytes(paths[-1], text.encode("utf-8"))
        return tuple(paths)

    # ------------------------------------------------------------------ vocabulary
    @property
    def backend_tokenizer(self):
        """The ``tokenizers.Tokenizer`` of the HF-style path."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> Dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int:
        return self._vocab[BOS]

    @property
    def eos_token_id(self) -> int:
        return self._vocab[EOS]

    @property
    def pad_token_id(self) -> int:
        return self._vocab[self.pad_token]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        if isinstance(tokens, str):
            return self._backend.token_to_id(tokens)
        return [self._backend.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Any):
        if isinstance(ids, (int, np.integer)):
            return self._backend.id_to_token(int(ids))
        return [self._backend.id_to_token(i) for i in _id_list(ids)]

    # ------------------------------------------------------------------ OpenAI behaviour
    def _openai_encoder(self) -> _OpenAIEncoder:
        if self._openai is None:
            model = self._backend.model  # share the Rust BPE (same vocabulary and merges) when it is CLIP's
            if not (type(model).__name__ == "BPE" and model.end_of_word_suffix == "</w>"):
                model = _bpe_model(self._vocab, self._merges)
            self._openai = _OpenAIEncoder(_build_word_bpe(model), self.bos_token_id, self.eos_token_id)
        return self._openai

    def encode_openai(self, texts: Union[str, Sequence[str]], context_length: int = DEFAULT_MAX_LENGTH,
                      truncate: bool = False, pad_token_id: int = 0) -> np.ndarray:
        """OpenAI's ``clip.tokenize`` as int32 numpy (B, context_length); see :func:`tokenize`."""
        items = check_texts(texts)
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (room for <|startoftext|> and <|endoftext|>), "
                             f"got {context_length}")
        groups = self._openai_encoder().encode(items)
        lengths = np.zeros(len(items), np.int64)
        for index, _, lens in groups:
            lengths[index] = lens
        too_long = np.flatnonzero(lengths + 2 > context_length)
        if too_long.size and not truncate:
            i = int(too_long[0])
            raise RuntimeError(f"Input {items[i]} is too long for context length {context_length} "
                               f"({int(lengths[i]) + 2} tokens); pass truncate=True to cut it")
        out = np.empty((len(items), context_length), np.int32)  # (B, context_length)
        for index, flat, lens in groups:
            out[index] = pack(flat, lens, context_length, self.bos_token_id, self.eos_token_id, pad_token_id,
                              limit=context_length, dtype=np.int32)[0]
        return out

    # ------------------------------------------------------------------ HF behaviour
    def _strategy(self, padding: Any, truncation: Any, max_length: Optional[int]) -> Tuple[str, Optional[int]]:
        """(padding mode, truncation limit or None) following transformers' rules."""
        try:
            pad_mode, trunc = _PADDING[padding], truncation
        except (KeyError, TypeError):
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', "
                             f"got {padding!r}") from None
        if trunc is None:  # transformers truncates when only max_length is given
            trunc = max_length is not None and pad_mode == _NO_PAD
        if trunc not in _TRUNCATION:
            raise ValueError(f"truncation must be a bool, 'longest_first', 'only_first' or 'do_not_truncate', "
                             f"got {truncation!r}")
        if max_length is None and self.model_max_length > LARGE_INTEGER:  # no maximum known: as transformers
            if pad_mode == _MAX_LENGTH:
                logger.warning("Asking to pad to max_length but no maximum length is provided and the model has "
                               "no predefined maximum length. Default to no padding.")
                pad_mode = _NO_PAD
            if _TRUNCATION[trunc]:
                logger.warning("Asking to truncate to max_length but no maximum length is provided and the model "
                               "has no predefined maximum length. Default to no truncation.")
                trunc = False
        limit = max_length if max_length is not None else self.model_max_length
        if _TRUNCATION[trunc] and limit < 2:
            raise ValueError(f"max_length must be >= 2 to keep <|startoftext|> and <|endoftext|>, got {limit}")
        return pad_mode, (limit if _TRUNCATION[trunc] else None)

    def _hf_plain(self, text: str) -> bool:
        """Texts on which CLIPTokenizerFast's Rust pipeline provably equals the OpenAI chunk path.

        Plain ASCII: NFC is the identity, Rust's and Python's lower-casing and whitespace agree, and
        without ``<|`` or another added token (transformers adds a non-standard pad token such as
        ``!``) no added token can match, so the split is OpenAI's and the BPE is the same model.
        """
        return (self._extra_tokens is not None and is_plain_ascii(text) and "<|" not in text
                and not any(t in text for t in self._extra_tokens))

    def _hf_content(self, items: List[str]) -> List[Tuple[List[int], np.ndarray, np.ndarray]]:
        """Groups ``(indices, flat content ids, lengths)`` of the HF pipeline (no special tokens)."""
        plain, rest = split_fast(items, self._hf_plain)
        groups = [(plain, *self._openai_encoder().encode_fast([items[i] for i in plain]))]
        if rest:
            encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
            encs = encode([items[i] for i in rest], add_special_tokens=False)
            groups.append((rest, *_ids_to_flat([e.ids for e in encs])))
        return groups

    def __call__(self, text: Union[str, Sequence[str]], padding: Any = False, truncation: Any = None,
                 max_length: Optional[int] = None, return_tensors: Optional[str] = None,
                 return_attention_mask: bool = True) -> TokenizerOutput:
        """Tokenize like ``transformers.CLIPTokenizerFast.__call__`` -> ``input_ids`` (+ ``attention_mask``)."""
        items = check_texts(text)
        pad_mode, limit = self._strategy(padding, truncation, max_length)
        groups = self._hf_content(items)
        lengths = np.zeros(len(items), np.int64)
        for index, _, lens in groups:
            lengths[index] = lens
        full = lengths + 2 if limit is None else np.minimum(lengths + 2, limit)  # (B,)
        target = full.copy()
        if pad_mode == _LONGEST and len(full):
            target[:] = full.max()
        elif pad_mode == _MAX_LENGTH:
            target = np.maximum(full, max_length if max_length is not None else self.model_max_length)
        width = int(target.max()) if len(target) else 0
        ids = np.empty((len(items), width), np.int64)  # (B, W)
        for index, flat, lens in groups:
            ids[index] = pack(flat, lens, width, self.bos_token_id, self.eos_token_id, self.pad_token_id,
                              limit=limit)[0]
        mask = (np.arange(width)[None, :] < full[:, None]).astype(np.int64)  # (B, W)
        out = TokenizerOutput(input_ids=ids, attention_mask=mask)
        if not return_attention_mask:
            del out["attention_mask"]
        ragged = len(target) and (target != width).any()
        if ragged and return_tensors is not None:
            raise ValueError("sequences have different lengths; use padding=True or truncation=True to "
                             f"return_tensors={return_tensors!r}")
        for key, value in out.items():
            if ragged:
                out[key] = [row[:n].tolist() for row, n in zip(value, target)]
            else:
                out[key] = to_tensor(value, return_tensors)
            if isinstance(text, str) and return_tensors is None:
                out[key] = out[key][0]
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Ids of one text, HF pipeline, no padding or truncation."""
        (item,) = check_texts([text])
        return self._backend.encode(item, add_special_tokens=add_special_tokens).ids

    def tokenize(self, text: str) -> List[str]:
        """Token strings of one text (HF pipeline, without special tokens)."""
        (item,) = check_texts([text])
        return self._backend.encode(item, add_special_tokens=False).tokens

    def _finish_decode(self, text: str, clean_up_tokenization_spaces: Optional[bool]) -> str:
        text = text.replace("</w>", " ").strip()
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None \
            else clean_up_tokenization_spaces
        return clean_up_tokenization(text) if clean else text

    def decode(self, ids: Any, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: Optional[bool] = None, **kwargs: Any) -> str:
        """Text of ``ids`` (an id, a list, an array or a tensor) like ``CLIPTokenizer(Fast).decode``.

        ``</w>`` becomes a space and the ends are stripped; ``clean_up_tokenization_spaces``
        (default: the tokenizer's setting, False unless its ``tokenizer_config.json`` says otherwise)
        applies transformers' :func:`clean_up_tokenization`.
        """
        text = self._backend.decode(_id_list(ids), skip_special_tokens=skip_special_tokens)
        return self._finish_decode(text, clean_up_tokenization_spaces)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: Optional[bool] = None, **kwargs: Any) -> List[str]:
        """:meth:`decode` of every row of a (B, T) array, tensor or list of id lists (one Rust batch)."""
        rows = [_id_list(row) for row in sequences]
        texts = self._backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)
        return [self._finish_decode(t, clean_up_tokenization_spaces) for t in texts]

    # ------------------------------------------------------------------ transformers' special-token helpers
    @property
    def all_special_tokens(self) -> List[str]:
        """``[bos, eos]`` plus the pad token when it is another token (transformers' order)."""
        return list(dict.fromkeys([BOS, EOS, self.unk_token, self.pad_token]))

    @property
    def all_special_ids(self) -> List[int]:
        return [self._backend.token_to_id(t) for t in self.all_special_tokens]

    def build_inputs_with_special_tokens(self, token_ids_0: List[int],
                                         token_ids_1: Optional[List[int]] = None) -> List[int]:
        """``<|startoftext|> A <|endoftext|>``; a pair:
        ``<|startoftext|> A <|endoftext|><|endoftext|> B <|endoftext|>`` (as transformers)."""
        bos, eos = [self.bos_token_id], [self.eos_token_id]
        if token_ids_1 is None:
            return bos + list(token_ids_0) + eos
        return bos + list(token_ids_0) + eos + eos + list(token_ids_1) + eos

    def get_special_tokens_mask(self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None,
                                already_has_special_tokens: bool = False) -> List[int]:
        """1 where :meth:`build_inputs_with_special_tokens` puts a special token, else 0 (as the slow
        ``CLIPTokenizer``); ``already_has_special_tokens``: 1 for every special id in ``token_ids_0``."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("You should not supply a second sequence if the provided sequence of ids is "
                                 "already formatted with special tokens for the model.")
            special = set(self.all_special_ids)
            return [1 if int(t) in special else 0 for t in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1] + [1] + [0] * len(token_ids_1) + [1]

    def create_token_type_ids_from_sequences(self, token_ids_0: List[int],
                                             token_ids_1: Optional[List[int]] = None) -> List[int]:
        """All zeros (CLIP has no token types), as long as :meth:`build_inputs_with_special_tokens`."""
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def save_vocabulary(self, save_directory: Union[str, os.PathLike],
                        filename_prefix: Optional[str] = None) -> Optional[Tuple[str, str]]:
        """Write ``[prefix-]vocab.json`` and ``[prefix-]merges.txt`` byte for byte as the slow
        ``CLIPTokenizer.save_vocabulary`` does; returns their paths (``None`` and an error logged when
        ``save_directory`` is not a directory, as transformers)."""
        save_directory = os.fspath(save_directory)
        if not os.path.isdir(save_directory):
            logger.error(f"Vocabulary path ({save_directory}) should be a directory")
            return None
        prefix = filename_prefix + "-" if filename_prefix else ""
        vocab_file = os.path.join(save_directory, prefix + "vocab.json")
        merges_file = os.path.join(save_directory, prefix + "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write(json.dumps(self._vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merges))
        return vocab_file, merges_file

    def __repr__(self) -> str:
        return (f"CLIPTokenizer(vocab_size={self.vocab_size}, pad_token={self.pad_token!r}, "
                f"model_max_length={self.model_max_length})")


CLIPTokenizerFast = CLIPTokenizer  # transformers' Rust-backed name: this tokenizer is Rust-backed too


@lru_cache(maxsize=1)
def default_tokenizer() -> CLIPTokenizer:
    """The bundled-vocabulary tokenizer, built once per process."""
    return CLIPTokenizer()


def tokenize(texts: Union[str, Sequence[str]], context_length: int = DEFAULT_MAX_LENGTH,
             truncate: bool = False) -> np.ndarray:
    """OpenAI's ``clip.tokenize`` ids exactly, as int32 numpy (B, context_length), zero padded.

    Raises ``RuntimeError`` naming the text when it needs more than ``context_length`` tokens and
    ``truncate`` is False; with ``truncate`` the row keeps its first tokens and ends with EOT.
    """
    return default_tokenizer().encode_openai(texts, context_length=context_length, truncate=truncate)
