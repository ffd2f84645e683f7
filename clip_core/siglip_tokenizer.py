"""SigLIP's SentencePiece tokenizer and SigLIP 2's Gemma tokenizer, from a checkpoint's own files.

- :class:`SiglipTokenizer` reproduces ``transformers.SiglipTokenizer`` (4.57, sentencepiece-based):
  lower-casing character by character (``do_lower_case``), big_vision's canonicalisation (ASCII
  punctuation removed, whitespace runs collapsed, ends stripped), the unigram model of
  ``spiece.model`` without a dummy prefix, ``</s>`` appended, padding with the configured pad token.
- :class:`GemmaTokenizer` reproduces ``transformers.GemmaTokenizerFast``: the byte-fallback BPE of
  ``tokenizer.json`` (or of ``tokenizer.model``, converted as transformers' converter does),
  ``<bos>`` / ``<eos>`` per ``add_bos_token`` / ``add_eos_token``, padding on ``padding_side``.
- :func:`load_tokenizer` picks CLIP's, SigLIP's or Gemma's tokenizer by the files of a directory.

Neither sentencepiece nor protobuf is needed: :mod:`clip_core.siglip_spm` reads ``.model`` files.
The call signature, padding and ``return_tensors`` rules are those of
:class:`clip_core.tokenizer.CLIPTokenizer` (see docs/tokenizer.md, "SigLIP and SigLIP 2").
"""
from __future__ import annotations

import json
import os
import re
import string
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._text_clean import check_texts
from .batch import BatchEncoding
from .siglip_spm import (CONTROL, SPIECE_UNDERLINE, UNKNOWN, UNUSED, USER_DEFINED, SpmModel, SpmNormalizer,
                         UnigramViterbi, bpe_merges, parse_spm)
from .tokenizer import (_LONGEST, _MAX_LENGTH, CLIPTokenizer, _id_list, _read_json, _token_content, to_tensor)

__all__ = ["SiglipTokenizer", "GemmaTokenizer", "load_tokenizer", "SIGLIP_MAX_LENGTH"]

SIGLIP_MAX_LENGTH = 64  # SigLIP's and SigLIP 2's text length
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_UNK_SURFACE = " \u2047 "  # what sentencepiece decodes an unknown piece to
_GEMMA_SPECIALS = ("<start_of_turn>", "<end_of_turn>")


def _write_files(directory: str, files: Dict[str, Union[str, bytes]]) -> Tuple[str, ...]:
    """Write ``name -> text or bytes`` into ``directory`` atomically; their paths."""
    from .io import atomic_write_bytes

    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, data in files.items():
        paths.append(os.path.join(directory, name))
        atomic_write_bytes(paths[-1], data.encode("utf-8") if isinstance(data, str) else data)
    return tuple(paths)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


class _SpecialTokenCall:
    """The HF call shared by both tokenizers: rows ``prefix + content + suffix``, truncated and padded.

    Subclasses give ``_content(items)`` (ids without special tokens), ``_prefix`` / ``_suffix(content)``,
    ``pad_token_id``, ``padding_side`` and ``model_max_length``.
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    model_max_length = SIGLIP_MAX_LENGTH
    _prefix: List[int] = []
    _strategy = CLIPTokenizer._strategy  # transformers' padding / truncation rules, shared with CLIP

    def _content(self, items: List[str]) -> List[List[int]]:
        raise NotImplementedError

    def _suffix(self, content: List[int]) -> List[int]:
        raise NotImplementedError

    def _row(self, content: List[int], limit: Optional[int]) -> List[int]:
        """One row with its special tokens; content cut so that the row fits ``limit`` (as transformers)."""
        if limit is not None:
            keep = max(limit - len(self._prefix) - len(self._suffix([])), 0)
            content = content[:keep]
        return self._prefix + content + self._suffix(content)

    def _pad(self, rows: List[List[int]], width: int) -> Tuple[np.ndarray, np.ndarray]:
        """(ids (B, W), attention mask (B, W)) with ``pad_token_id`` on ``padding_side``."""
        ids = np.full((len(rows), width), self.pad_token_id, np.int64)  # (B, W)
        mask = np.zeros((len(rows), width), np.int64)  # (B, W)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if self.padding_side == "left" else slice(0, len(row))
            ids[i, cols], mask[i, cols] = row, 1
        return ids, mask

    def _widths(self, lengths: List[int], pad_mode: str, max_length: Optional[int]) -> List[int]:
        """The padded length of every row under transformers' padding modes."""
        if pad_mode == _LONGEST:
            return [max(lengths, default=0)] * len(lengths)
        if pad_mode == _MAX_LENGTH:
            goal = max_length if max_length is not None else self.model_max_length
            return [max(n, goal) for n in lengths]
        return list(lengths)

    def __call__(self, text: Union[str, Sequence[str]], padding: Any = False, truncation: Any = None,
                 max_length: Optional[int] = None, return_tensors: Optional[str] = None,
                 return_attention_mask: bool = True) -> BatchEncoding:
        """Tokenize like transformers' tokenizer ``__call__`` -> ``input_ids`` (+ ``attention_mask``)."""
        items = check_texts(text)
        pad_mode, limit = self._strategy(padding, truncation, max_length)
        rows = [self._row(content, limit) for content in self._content(items)]
        widths = self._widths([len(row) for row in rows], pad_mode, max_length)
        if len(set(widths)) > 1:  # rows of different lengths: lists only, as transformers
            if return_tensors is not None:
                raise ValueError("sequences have different lengths; use padding=True or truncation=True to "
                                 f"return_tensors={return_tensors!r}")
            padded = [self._pad([row], n) for row, n in zip(rows, widths)]
            ids, mask = [p[0][0].tolist() for p in padded], [p[1][0].tolist() for p in padded]
        else:
            ids, mask = (to_tensor(a, return_tensors) for a in self._pad(rows, widths[0] if widths else 0))
        out = BatchEncoding(input_ids=ids, attention_mask=mask)
        if not return_attention_mask:
            del out["attention_mask"]
        if isinstance(text, str) and return_tensors is None:
            for key in list(out):
                out[key] = out[key][0]
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Ids of one text, no padding or truncation."""
        (content,) = self._content(check_texts([text]))
        return self._row(content, None) if add_special_tokens else content

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **kwargs: Any) -> List[str]:
        """:meth:`decode` of every row of a (B, T) array, tensor or list of id lists."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens, **kwargs) for row in sequences]

    @property
    def pad_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.pad_token)

    @property
    def eos_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.eos_token)

    @property
    def unk_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.unk_token)

    def __len__(self) -> int:
        return len(self.get_vocab())


# ----------------------------------------------------------------------------- SigLIP
class SiglipTokenizer(_SpecialTokenCall):
    """``transformers.SiglipTokenizer`` without sentencepiece: ``SiglipTokenizer.from_pretrained(dir)``.

    Args:
        model: the parsed ``spiece.model`` (:func:`clip_core.siglip_spm.parse_spm`), or its bytes.
        eos_token / unk_token / pad_token: as in ``special_tokens_map.json`` (SigLIP pads with ``</s>``).
        model_max_length: 64 for SigLIP. do_lower_case: True for SigLIP.
    """

    def __init__(self, model: Union[SpmModel, bytes], eos_token: str = "</s>", unk_token: str = "<unk>",
                 pad_token: str = "</s>", additional_special_tokens: Sequence[str] = (),
                 model_max_length: int = SIGLIP_MAX_LENGTH, do_lower_case: bool = True) -> None:
        self._raw = model if isinstance(model, bytes) else None
        self.sp = parse_spm(model) if isinstance(model, bytes) else model
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        self.additional_special_tokens = list(additional_special_tokens)
        self.model_max_length, self.do_lower_case = int(model_max_length), bool(do_lower_case)
        self._normalize = SpmNormalizer(self.sp, add_dummy_prefix=False)  # transformers switches it off
        self._viterbi = UnigramViterbi(self.sp)
        self._vocab = self.sp.vocab()
        specials = sorted(set(self.all_special_tokens), key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        # transformers drops len(sp_model.encode(unk_token)) ids after encoding unk_token + text
        self._unk_length = len(self._segment(self._normalize(self.unk_token)))

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], **kwargs: Any) -> "SiglipTokenizer":
        """Read ``spiece.model``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of ``directory``."""
        directory = os.fspath(directory)
        path = os.path.join(directory, "spiece.model")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory}: no spiece.model (SigLIP's SentencePiece model)")
        config = _read_json(os.path.join(directory, "tokenizer_config.json"))
        tokens_map = _read_json(os.path.join(directory, "special_tokens_map.json"))
        for name in ("eos_token", "unk_token", "pad_token"):
            value = _token_content(config.get(name)) or _token_content(tokens_map.get(name))
            if value is not None:
                kwargs.setdefault(name, value)
        extra = config.get("additional_special_tokens") or tokens_map.get("additional_special_tokens") or []
        kwargs.setdefault("additional_special_tokens", [_token_content(t) for t in extra])
        kwargs.setdefault("model_max_length", config.get("model_max_length", SIGLIP_MAX_LENGTH))
        kwargs.setdefault("do_lower_case", config.get("do_lower_case", True))
        with open(path, "rb") as fh:
            return cls(fh.read(), **kwargs)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Tuple[str, ...]:
        """Write ``spiece.model`` and the config files transformers' ``SiglipTokenizer`` reads."""
        if self._raw is None:
            raise ValueError("this SiglipTokenizer was built from a parsed model; build it from the "
                             "spiece.model bytes to save it")
        tokens = {"eos_token": self.eos_token, "pad_token": self.pad_token, "unk_token": self.unk_token}
        if self.additional_special_tokens:
            tokens["additional_special_tokens"] = list(self.additional_special_tokens)
        config = dict(tokens, tokenizer_class="SiglipTokenizer", model_max_length=self.model_max_length,
                      do_lower_case=self.do_lower_case, clean_up_tokenization_spaces=False)
        return _write_files(os.fspath(directory), {"spiece.model": self._raw,
                                                   "tokenizer_config.json": _json(config),
                                                   "special_tokens_map.json": _json(tokens)})

    # -- text to pieces ---------------------------------------------------------------------------
    @property
    def all_special_tokens(self) -> List[str]:
        return list(dict.fromkeys([self.eos_token, self.unk_token, self.pad_token, *self.additional_special_tokens]))

    @staticmethod
    def canonicalize_text(text: str) -> str:
        """big_vision's canonicalisation: ASCII punctuation removed, whitespace runs -> one space, stripped."""
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def _pieces(self, parts: List[str]) -> List[List[int]]:
        """Ids of canonicalised text parts, encoded behind ``unk_token`` whose ids are then dropped.

        transformers encodes ``unk_token + text`` so that sentencepiece keeps a leading U+2581;
        the same string goes through the same model here.
        """
        skip = self._unk_length
        return [self._segment(self._normalize(self.unk_token + self.canonicalize_text(p)))[skip:] for p in parts]

    def _segment(self, normalized: str) -> List[int]:
        """Unigram ids of normalized text."""
        return self._viterbi(normalized)

    def _split(self, text: str) -> List[str]:
        """transformers' slow-tokenizer split on special tokens, each of which strips the spaces beside it."""
        if self.do_lower_case:  # character by character, as transformers' regex does (no final sigma)
            text = "".join(part if part in self.all_special_tokens else "".join(c.lower() for c in part)
                           for part in self._special_re.split(text))
        parts = self._special_re.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        for i in range(1, len(parts), 2):  # odd indices are special tokens: lstrip/rstrip neighbours
            parts[i - 1], parts[i + 1] = parts[i - 1].rstrip(), parts[i + 1].lstrip()
        return parts

    def _content(self, items: List[str]) -> List[List[int]]:
        splits = [self._split(text) for text in items]
        plain = [p for parts in splits for j, p in enumerate(parts) if j % 2 == 0 and p]
        encoded = iter(self._pieces(plain))
        out = []
        for parts in splits:
            ids: List[int] = []
            for j, part in enumerate(parts):
                if j % 2:
                    ids.append(self.convert_tokens_to_ids(part))
                elif part:
                    ids.extend(next(encoded))
            if len(parts) > 1 and ids[:1] == [self._vocab.get(SPIECE_UNDERLINE)] and not parts[0][1:] \
                    and len(ids) > 1:  # "▁" before a leading special token is dropped, as transformers
                ids = ids[1:]
            out.append(ids)
        return out

    def _suffix(self, content: List[int]) -> List[int]:
        """``</s>`` unless the content already ends with it (transformers' ``_add_eos_if_not_present``)."""
        return [] if content[-1:] == [self.eos_token_id] else [self.eos_token_id]

    # -- vocabulary and decoding -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.sp.pieces)

    def get_vocab(self) -> Dict[str, int]:
        return {p.piece: i for i, p in enumerate(self.sp.pieces)}

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        if isinstance(tokens, str):
            return self._vocab.get(tokens, self.sp.unk_id)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Any):
        if isinstance(ids, (int, np.integer)):
            return self.sp.pieces[int(ids)].piece
        return [self.sp.pieces[i].piece for i in _id_list(ids)]

    def _surface(self, pieces: List[str]) -> str:
        """sentencepiece's decode of pieces: unknown -> ' ⁇ ', control dropped, the first leading U+2581 removed."""
        out, at_start = [], True
        strip_first = self.sp.add_dummy_prefix or self.sp.remove_extra_whitespaces
        for piece in pieces:
            kind = self.sp.pieces[self._vocab[piece]].type if piece in self._vocab else 1
            text = _UNK_SURFACE if kind == UNKNOWN else "" if kind in (CONTROL, UNUSED) else piece
            if at_start and strip_first and kind != UNKNOWN and text.startswith(SPIECE_UNDERLINE):
                text = text[1:]
            at_start = at_start and not text
            out.append(text.replace(SPIECE_UNDERLINE, " "))
        return "".join(out)

    def decode(self, ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        """Text of ``ids`` like ``transformers.SiglipTokenizer.decode``: special tokens kept verbatim."""
        specials, out, run, prev_special = set(self.all_special_tokens), "", [], False
        for token in self.convert_ids_to_tokens(_id_list(ids)):
            if token in specials:
                if skip_special_tokens:
                    continue
                out += ("" if prev_special else " ") + self._surface(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        return (out + self._surface(run)).strip()

    def __repr__(self) -> str:
        return f"SiglipTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length})"


# ----------------------------------------------------------------------------- Gemma (SigLIP 2)
def _gemma_backend_from_spm(sp: SpmModel, pad: str, eos: str, bos: str):
    """The ``tokenizers.Tokenizer`` transformers' ``GemmaConverter`` builds from a BPE ``tokenizer.model``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    if sp.model_type != 2:
        raise ValueError(f"a Gemma tokenizer.model must be a BPE SentencePiece model, got model_type {sp.model_type}")
    scores = [(pad, 0.0), (eos, 0.0), (bos, 0.0)] + [(p.piece, p.score) for p in sp.pieces[3:]]
    piece_ids = sp.vocab()
    if "\t" not in piece_ids and "<0x09>" in piece_ids:  # older Gemma vocabularies lack the tab piece
        piece_ids["\t"] = piece_ids["<0x09>"]
        scores = [("\t", 0.0) if piece == "<0x09>" else (piece, score) for piece, score in scores]
    merges = bpe_merges(piece_ids, dict(scores))
    vocab = {piece: i for i, (piece, _) in enumerate(scores)}
    backend = Tokenizer(models.BPE(vocab, merges, unk_token=sp.unk_piece, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", SPIECE_UNDERLINE)
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    added = [(i, p.piece, p.type == CONTROL or p.piece in _GEMMA_SPECIALS)
             for i, p in enumerate(sp.pieces) if p.type in (CONTROL, USER_DEFINED)]
    backend.add_tokens([AddedToken(piece, normalized=False, special=special) for _, piece, special in added])
    return backend


class GemmaTokenizer(_SpecialTokenCall):
    """``transformers.GemmaTokenizerFast`` (SigLIP 2's tokenizer): ``GemmaTokenizer.from_pretrained(dir)``.

    Reads ``tokenizer.json`` when the directory has one, else converts ``tokenizer.model`` as
    transformers does. ``add_bos_token`` / ``add_eos_token`` / ``padding_side`` / ``model_max_length``
    come from ``tokenizer_config.json`` (transformers' defaults: True, False, "left", no maximum).
    No lower-casing: SigLIP 2 expects callers to lower-case (its model card says so).
    """

    def __init__(self, backend: Any, bos_token: str = "<bos>", eos_token: str = "<eos>", unk_token: str = "<unk>",
                 pad_token: str = "<pad>", add_bos_token: bool = True, add_eos_token: bool = False,
                 padding_side: str = "left", model_max_length: int = SIGLIP_MAX_LENGTH,
                 additional_special_tokens: Sequence[str] = (), spm_bytes: Optional[bytes] = None) -> None:
        from tokenizers import AddedToken

        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self._backend = backend
        self._backend.no_padding()
        self._backend.no_truncation()
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = bos_token, eos_token, unk_token, pad_token
        self.additional_special_tokens = list(additional_special_tokens)
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        self.padding_side, self.model_max_length = padding_side, int(model_max_length)
        self._spm_bytes = spm_bytes
        self._backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                          for t in self.all_special_tokens])
        self._prefix = [self.bos_token_id] if self.add_bos_token else []

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], **kwargs: Any) -> "GemmaTokenizer":
        """Load ``tokenizer.json`` (or ``tokenizer.model``) and the config files of ``directory``."""
        from tokenizers import Tokenizer

        directory = os.fspath(directory)
        config = _read_json(os.path.join(directory, "tokenizer_config.json"))
        tokens_map = _read_json(os.path.join(directory, "special_tokens_map.json"))
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = _token_content(config.get(name)) or _token_content(tokens_map.get(name))
            if value is not None:
                kwargs.setdefault(name, value)
        for name in ("add_bos_token", "add_eos_token", "padding_side", "model_max_length"):
            if name in config:
                kwargs.setdefault(name, config[name])
        extra = config.get("additional_special_tokens") or tokens_map.get("additional_special_tokens") or []
        kwargs.setdefault("additional_special_tokens", [_token_content(t) for t in extra])
        json_path, model_path = os.path.join(directory, "tokenizer.json"), os.path.join(directory, "tokenizer.model")
        spm_bytes = None
        if os.path.isfile(model_path):
            with open(model_path, "rb") as fh:
                spm_bytes = fh.read()
        if os.path.isfile(json_path):
            backend = Tokenizer.from_file(json_path)
        elif spm_bytes is not None:
            backend = _gemma_backend_from_spm(parse_spm(spm_bytes), kwargs.get("pad_token", "<pad>"),
                                              kwargs.get("eos_token", "<eos>"), kwargs.get("bos_token", "<bos>"))
        else:
            raise FileNotFoundError(f"{directory}: no tokenizer.json and no tokenizer.model (Gemma tokenizer)")
        return cls(backend, spm_bytes=spm_bytes, **kwargs)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Tuple[str, ...]:
        """Write ``tokenizer.json`` (+ ``tokenizer.model`` when loaded from one) and the config files."""
        tokens = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                  "unk_token": self.unk_token}
        if self.additional_special_tokens:
            tokens["additional_special_tokens"] = list(self.additional_special_tokens)
        config = dict(tokens, tokenizer_class="GemmaTokenizer", add_bos_token=self.add_bos_token,
                      add_eos_token=self.add_eos_token, padding_side=self.padding_side,
                      model_max_length=self.model_max_length, clean_up_tokenization_spaces=False)
        files: Dict[str, Union[str, bytes]] = {"tokenizer.json": self._backend.to_str(),
                                               "tokenizer_config.json": _json(config),
                                               "special_tokens_map.json": _json(tokens)}
        if self._spm_bytes is not None:
            files["tokenizer.model"] = self._spm_bytes
        return _write_files(os.fspath(directory), files)

    @property
    def all_special_tokens(self) -> List[str]:
        return list(dict.fromkeys([self.bos_token, self.eos_token, self.unk_token, self.pad_token,
                                   *self.additional_special_tokens]))

    @property
    def bos_token_id(self) -> int:
        return self.convert_tokens_to_ids(self.bos_token)

    def _content(self, items: List[str]) -> List[List[int]]:
        return [enc.ids for enc in self._backend.encode_batch(items, add_special_tokens=False)]

    def _suffix(self, content: List[int]) -> List[int]:
        return [self.eos_token_id] if self.add_eos_token else []

    @property
    def backend_tokenizer(self):
        """The ``tokenizers.Tokenizer``."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=False)

    def get_vocab(self) -> Dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        if isinstance(tokens, str):
            found = self._backend.token_to_id(tokens)
            return found if found is not None else self._backend.token_to_id(self.unk_token)
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Any):
        if isinstance(ids, (int, np.integer)):
            return self._backend.id_to_token(int(ids))
        return [self._backend.id_to_token(i) for i in _id_list(ids)]

    def decode(self, ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        """Text of ``ids`` like ``GemmaTokenizerFast.decode`` (no clean-up of spaces)."""
        return self._backend.decode(_id_list(ids), skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"GemmaTokenizer(vocab_size={self.vocab_size}, padding_side={self.padding_side!r})"


# ----------------------------------------------------------------------------- by files
def _tokenizer_json_kind(path: str) -> str:
    """"gemma" for a byte-fallback BPE ``tokenizer.json`` (SentencePiece style), else "clip"."""
    with open(path, encoding="utf-8") as fh:
        model = json.load(fh).get("model", {})
    return "gemma" if model.get("byte_fallback") or model.get("type") == "Unigram" else "clip"


def load_tokenizer(directory: Union[str, os.PathLike], **kwargs: Any):
    """The tokenizer of a checkpoint directory, chosen by its files.

    ``spiece.model`` -> :class:`SiglipTokenizer`; ``tokenizer.model`` or a SentencePiece-style
    ``tokenizer.json`` -> :class:`GemmaTokenizer`; ``vocab.json`` + ``merges.txt`` or CLIP's
    ``tokenizer.json`` -> :class:`clip_core.CLIPTokenizer`. ``tokenizer_class`` in
    ``tokenizer_config.json`` decides when it names one of them.
    """
    directory = os.fspath(directory)
    named = str(_read_json(os.path.join(directory, "tokenizer_config.json")).get("tokenizer_class", ""))
    has = {name: os.path.isfile(os.path.join(directory, name))
           for name in ("spiece.model", "tokenizer.model", "tokenizer.json", "vocab.json")}
    if named.startswith("Siglip") and has["spiece.model"] or (not named and has["spiece.model"]):
        return SiglipTokenizer.from_pretrained(directory, **kwargs)
    if named.startswith("Gemma") and (has["tokenizer.json"] or has["tokenizer.model"]):
        return GemmaTokenizer.from_pretrained(directory, **kwargs)
    if named.startswith("CLIP") or has["vocab.json"]:
        return CLIPTokenizer.from_pretrained(directory, **kwargs)
    if has["tokenizer.model"] or (has["tokenizer.json"]
                                  and _tokenizer_json_kind(os.path.join(directory, "tokenizer.json")) == "gemma"):
        return GemmaTokenizer.from_pretrained(directory, **kwargs)
    if has["tokenizer.json"]:
        return CLIPTokenizer.from_pretrained(directory, **kwargs)
    raise FileNotFoundError(f"{directory}: no tokenizer files (spiece.model, tokenizer.json, tokenizer.model or "
                            "vocab.json + merges.txt)")
