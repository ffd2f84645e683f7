"""SigLIP's SentencePiece tokenizer and SigLIP 2's Gemma tokenizer against transformers 4.57.

Small SentencePiece models are trained here (``sentencepiece`` trainer, a generated corpus): a
unigram model written as a SigLIP checkpoint's ``spiece.model`` and a byte-fallback BPE model as a
Gemma ``tokenizer.model`` (plus the ``tokenizer.json`` transformers' converter writes from it).
Ids are compared with transformers' ``SiglipTokenizer`` / ``GemmaTokenizerFast`` on whole batches of
the >= 600-string corpus of tests/tokenizer_corpus.py plus SigLIP-specific strings.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clip_core.siglip_spm import BYTE, SpmFormatError, SpmNormalizer, UnigramViterbi, parse_spm, read_spm
from clip_core.siglip_tokenizer import GemmaTokenizer, SiglipTokenizer, load_tokenizer

try:
    import tokenizer_corpus as tc
except ImportError:  # pytest --import-mode=importlib
    from tests import tokenizer_corpus as tc

try:  # transformers' image code imports torchvision and tensorflow; torchvision must come first
    import torchvision  # noqa: F401
except ImportError:
    pass
spm = pytest.importorskip("sentencepiece")
pytestmark = pytest.mark.filterwarnings("ignore:This sequence already has")
transformers = pytest.importorskip("transformers")

EXTRA = ["</s>", "a</s>b", "</s> hi", "hi <unk> there", "<pad>", "\u2581", "\u2581\u2581x", " leading", "trailing  ",
         "", "ΣΊΣΥΦΟΣ", "<bos>hi", "a<eos>", "<start_of_turn>user", "x\ty", "  two  spaces ", "HELLO, World!",
         "hahahahahaha", "tab\tand\nnewline", "ＦＵＬＬ width", "a photo of a " + "very " * 40 + "big cat"]


# ----------------------------------------------------------------------------- fixtures (shared with processing)
def training_lines(seed: int = 0) -> list:
    """A generated training corpus: random word sequences plus the test corpus itself."""
    rng = random.Random(seed)
    words = ["photo", "cat", "dog", "a", "of", "the", "blurry", "café", "über", "naïve", "中文", "字符", "日本語",
             "привет", "mundo", "zürich", "123", "4567", "😀", "x", "sketch", "origami", "σοφός",
             "σίσυφοσ"]  # final and medial sigma both in the vocabulary: lower-casing per character shows
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(800)]
    return lines + tc.build_corpus(seed)


def train_spm(kind: str, byte_fallback: bool = False) -> bytes:
    """A small SentencePiece model: SigLIP-style unigram or Gemma-style byte-fallback BPE."""
    buf = io.BytesIO()
    common = dict(sentence_iterator=iter(training_lines()), model_writer=buf, character_coverage=0.995,
                  minloglevel=2, num_threads=1)
    if kind == "unigram":  # SigLIP's layout: <pad> 0, </s> 1, <unk> 2, no <s>
        spm.SentencePieceTrainer.train(vocab_size=600 if byte_fallback else 400, model_type="unigram", unk_id=2,
                                       bos_id=-1, eos_id=1, pad_id=0, normalization_rule_name="nmt_nfkc",
                                       byte_fallback=byte_fallback, **common)
    else:  # Gemma's layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3, byte fallback, no normalization
        spm.SentencePieceTrainer.train(vocab_size=600, model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1,
                                       bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                                       split_digits=True, allow_whitespace_only_pieces=True,
                                       add_dummy_prefix=False, normalization_rule_name="identity",
                                       remove_extra_whitespaces=False,
                                       user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], **common)
    return buf.getvalue()


def make_siglip_dir(root: str, do_lower_case: bool = True) -> str:
    """A SigLIP tokenizer directory written by transformers' ``SiglipTokenizer.save_pretrained``."""
    src = os.path.join(root, "src_unigram.model")
    if not os.path.exists(src):
        with open(src, "wb") as fh:
            fh.write(train_spm("unigram"))
    out = os.path.join(root, f"siglip_lower{int(do_lower_case)}")
    transformers.SiglipTokenizer(src, model_max_length=64, do_lower_case=do_lower_case).save_pretrained(out)
    return out


def make_gemma_dirs(root: str) -> dict:
    """``{"json": dir with tokenizer.json (+ .model), "model": dir with tokenizer.model only}``."""
    src = os.path.join(root, "tokenizer.model")
    with open(src, "wb") as fh:
        fh.write(train_spm("bpe"))
    json_dir, model_dir = os.path.join(root, "gemma_json"), os.path.join(root, "gemma_model")
    transformers.GemmaTokenizerFast(vocab_file=src, model_max_length=64).save_pretrained(json_dir)
    os.makedirs(model_dir)
    shutil.copy(src, model_dir)
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "GemmaTokenizer", "model_max_length": 64}, fh)
    return {"json": json_dir, "model": model_dir}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("siglip_tok"))


@pytest.fixture(scope="module")
def corpus():
    texts = tc.build_corpus(0) + EXTRA
    assert len(texts) >= 300
    return texts


@pytest.fixture(scope="module")
def siglip_dir(root):
    return make_siglip_dir(root)


@pytest.fixture(scope="module")
def gemma_dirs(root):
    return make_gemma_dirs(root)


@pytest.fixture(scope="module")
def siglip_pair(siglip_dir):
    return transformers.SiglipTokenizer.from_pretrained(siglip_dir), SiglipTokenizer.from_pretrained(siglip_dir)


CALLS = [dict(), dict(padding="max_length", truncation=True, max_length=64), dict(padding=True),
         dict(padding="max_length", truncation=True, max_length=16), dict(truncation=True, max_length=8)]


def _assert_batches_equal(ref, ours, texts, **kwargs):
    tensors = "np" if kwargs.get("padding") else None
    a, b = ref(texts, return_tensors=tensors, **kwargs), ours(texts, return_tensors=tensors, **kwargs)
    assert set(a) == set(b) == {"input_ids", "attention_mask"}
    for key in a:
        if tensors:
            assert b[key].dtype == np.int64
            np.testing.assert_array_equal(b[key], a[key])
        else:
            bad = [t for t, x, y in zip(texts, a[key], b[key]) if x != y]
            assert not bad, f"{len(bad)} of {len(texts)} differ in {key}, first: {bad[0]!r:.80}"


# ----------------------------------------------------------------------------- the protobuf reader
@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_reader_matches_protobuf(root, siglip_dir, gemma_dirs, kind):
    """The wire-format reader gives what protobuf's own ModelProto parse gives."""
    from transformers.convert_slow_tokenizer import import_protobuf

    path = os.path.join(siglip_dir, "spiece.model") if kind == "unigram" else os.path.join(root, "tokenizer.model")
    with open(path, "rb") as fh:
        data = fh.read()
    ref = import_protobuf().ModelProto.FromString(data)
    ours = read_spm(path)
    assert [(p.piece, np.float32(p.score), p.type) for p in ours.pieces] == \
           [(p.piece, np.float32(p.score), p.type) for p in ref.pieces]
    spec, norm = ref.trainer_spec, ref.normalizer_spec
    assert (ours.model_type, ours.byte_fallback, ours.unk_id, ours.bos_id, ours.eos_id, ours.pad_id,
            ours.unk_piece) == (spec.model_type, spec.byte_fallback, spec.unk_id, spec.bos_id, spec.eos_id,
                                spec.pad_id, spec.unk_piece)
    assert (ours.add_dummy_prefix, ours.remove_extra_whitespaces, ours.escape_whitespaces, ours.normalizer_name,
            ours.precompiled_charsmap) == (norm.add_dummy_prefix, norm.remove_extra_whitespaces,
                                           norm.escape_whitespaces, norm.name, norm.precompiled_charsmap)
    assert ours.model_type == (1 if kind == "unigram" else 2) and ours.byte_fallback == (kind == "bpe")


def test_reader_rejects_other_files(tmp_path):
    with pytest.raises(SpmFormatError, match="not a SentencePiece model"):
        parse_spm(b'{"model": "json, not a protobuf"}')
    bad = tmp_path / "spiece.model"
    bad.write_bytes(b"\x0a\xff\xff")  # a length-delimited field running past the end
    with pytest.raises(ValueError, match="spiece.model"):
        read_spm(str(bad))


def test_normalizer_matches_sentencepiece(siglip_dir, corpus):
    """The compiled character map and whitespace rules give sentencepiece's own normalize()."""
    path = os.path.join(siglip_dir, "spiece.model")
    ref = spm.SentencePieceProcessor(model_file=path)
    ours = SpmNormalizer(read_spm(path))
    bad = [t for t in corpus if ours(t) != ref.normalize(t)]
    assert not bad, f"{len(bad)} differ, first {bad[0]!r:.60}"


def test_unigram_byte_fallback_matches_sentencepiece(corpus):
    """A unigram model with byte fallback: unknown characters become their UTF-8 byte pieces."""
    data = train_spm("unigram", byte_fallback=True)
    ref, model = spm.SentencePieceProcessor(model_proto=data), parse_spm(data)
    normalize, viterbi = SpmNormalizer(model), UnigramViterbi(model)
    bad = [t for t in corpus if viterbi(normalize(t)) != ref.encode(t)]
    assert not bad, f"{len(bad)} differ, first {bad[0]!r:.60}"
    assert sum(model.pieces[i].type == BYTE for t in corpus for i in ref.encode(t)) > 100


# ----------------------------------------------------------------------------- SigLIP
@pytest.mark.parametrize("kwargs", CALLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain")
def test_siglip_ids_match_transformers(siglip_pair, corpus, kwargs):
    _assert_batches_equal(*siglip_pair, corpus, **kwargs)


def test_siglip_corpus_exercises_the_hard_paths(siglip_pair, corpus):
    """The corpus reaches truncation, unknown pieces, special tokens in text and the float32 tie rule."""
    ref, ours = siglip_pair
    ids = ours(corpus)["input_ids"]
    assert sum(len(row) > 64 for row in ids) >= 5
    assert sum(ours.unk_token_id in row for row in ids) >= 20
    assert ours("a</s>b")["input_ids"].count(ours.eos_token_id) == 2
    run = ours("a" * 1000)["input_ids"]  # float32 running totals decide between equal-scoring pieces
    assert len(set(run[1:-1])) > 1 and run == ref("a" * 1000)["input_ids"]


def test_siglip_lower_case_off(root, corpus):
    directory = make_siglip_dir(root, do_lower_case=False)
    ours = SiglipTokenizer.from_pretrained(directory)
    assert ours.do_lower_case is False
    _assert_batches_equal(transformers.SiglipTokenizer.from_pretrained(directory), ours, corpus[:200],
                          padding="max_length", truncation=True, max_length=64)
    assert ours("CAT")["input_ids"] != SiglipTokenizer.from_pretrained(os.path.join(root, "siglip_lower1"))(
        "CAT")["input_ids"]


def test_siglip_decode_matches_transformers(siglip_pair, corpus):
    ref, ours = siglip_pair
    rows = ref(corpus)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(rows, skip_special_tokens=skip) == \
               ref.batch_decode(rows, skip_special_tokens=skip)


def test_siglip_surface(siglip_pair):
    ref, ours = siglip_pair
    assert (ours.vocab_size, ours.model_max_length, ours.pad_token_id, ours.eos_token_id) == \
           (ref.vocab_size, ref.model_max_length, ref.pad_token_id, ref.eos_token_id)
    assert ours.get_vocab() == {k: v for k, v in ref.get_vocab().items() if v < ref.vocab_size}
    one = ours("a photo of a cat")
    assert isinstance(one["input_ids"], list) and one["input_ids"] == ref("a photo of a cat")["input_ids"]
    assert "attention_mask" not in ours(["x"], return_attention_mask=False)
    torch = pytest.importorskip("torch")
    pt = ours(["a cat", "a dog"], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    assert pt["input_ids"].dtype == torch.int64 and tuple(pt["input_ids"].shape) == (2, 64)
    with pytest.raises(ValueError, match="different lengths"):
        ours(["a", "a b c d"], return_tensors="np")


def test_siglip_save_pretrained_loads_in_transformers(siglip_pair, corpus, tmp_path):
    _, ours = siglip_pair
    paths = ours.save_pretrained(str(tmp_path))
    assert {os.path.basename(p) for p in paths} == {"spiece.model", "tokenizer_config.json",
                                                     "special_tokens_map.json"}
    _assert_batches_equal(transformers.SiglipTokenizer.from_pretrained(str(tmp_path)), ours, corpus,
                          padding="max_length", truncation=True, max_length=64)


# ----------------------------------------------------------------------------- Gemma (SigLIP 2)
@pytest.mark.parametrize("files", ["json", "model"])
@pytest.mark.parametrize("config", [dict(), dict(padding_side="right", add_eos_token=True),
                                    dict(add_bos_token=False, padding_side="right")],
                         ids=["defaults", "right+eos", "no-bos"])
def test_gemma_ids_match_transformers(gemma_dirs, corpus, files, config):
    """tokenizer.json and tokenizer.model (converted here, without sentencepiece) both give GemmaTokenizerFast's ids."""
    ref = transformers.GemmaTokenizerFast.from_pretrained(gemma_dirs["json"], **config)
    ours = GemmaTokenizer.from_pretrained(gemma_dirs[files], **config)
    for kwargs in CALLS[:3]:
        _assert_batches_equal(ref, ours, corpus, **kwargs)


def test_gemma_decode_and_surface(gemma_dirs, corpus):
    ref = transformers.GemmaTokenizerFast.from_pretrained(gemma_dirs["json"])
    ours = GemmaTokenizer.from_pretrained(gemma_dirs["model"])
    rows = ref(corpus)["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(rows, skip_special_tokens=skip) == ref.batch_decode(rows, skip_special_tokens=skip)
    assert (ours.vocab_size, ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.padding_side) == \
           (ref.vocab_size, ref.bos_token_id, ref.eos_token_id, ref.pad_token_id, "left")
    assert ours.get_vocab() == ref.get_vocab()


def test_gemma_save_pretrained_loads_in_transformers(gemma_dirs, corpus, tmp_path):
    ours = GemmaTokenizer.from_pretrained(gemma_dirs["model"], padding_side="right")
    ours.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                                            "tokenizer_config.json"]
    ref = transformers.GemmaTokenizerFast.from_pretrained(str(tmp_path))
    assert ref.padding_side == "right"
    _assert_batches_equal(ref, ours, corpus, padding="max_length", truncation=True, max_length=64)


# ----------------------------------------------------------------------------- picking by files
def test_load_tokenizer_picks_by_files(siglip_dir, gemma_dirs, tmp_path):
    from clip_core.tokenizer import CLIPTokenizer

    clip_dir = tmp_path / "clip"
    CLIPTokenizer().save_pretrained(str(clip_dir))
    assert type(load_tokenizer(clip_dir)) is CLIPTokenizer
    os.remove(clip_dir / "tokenizer_config.json")  # by files alone
    assert type(load_tokenizer(clip_dir)) is CLIPTokenizer
    assert type(load_tokenizer(siglip_dir)) is SiglipTokenizer
    assert type(load_tokenizer(gemma_dirs["json"])) is GemmaTokenizer
    assert type(load_tokenizer(gemma_dirs["model"])) is GemmaTokenizer
    bare = tmp_path / "bare_json"
    bare.mkdir()
    shutil.copy(os.path.join(gemma_dirs["json"], "tokenizer.json"), bare)
    assert type(load_tokenizer(bare)) is GemmaTokenizer
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path / "empty")


def test_no_sentencepiece_or_protobuf_in_shipped_code():
    code = ("import sys, clip_core\n"
            "from clip_core import SiglipTokenizer, GemmaTokenizer, SiglipProcessor, load_tokenizer\n"
            "bad = [m for m in ('sentencepiece', 'google.protobuf', 'transformers', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
