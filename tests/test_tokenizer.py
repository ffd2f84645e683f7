"""CLIPTokenizer / clip_core.tokenize against OpenAI's ``clip.tokenize`` and transformers' ``CLIPTokenizerFast``."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from clip_core import _text_clean
from clip_core.tokenizer import BUNDLED_BPE, CLIPTokenizer, default_tokenizer, read_openai_bpe, tokenize

try:
    import tokenizer_corpus as tc
except ImportError:  # pytest --import-mode=importlib
    from tests import tokenizer_corpus as tc

clip = pytest.importorskip("clip")
transformers = pytest.importorskip("transformers")

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "tokenizer.md")
HF_CALLS = [dict(padding=True, truncation=True), dict(padding="max_length", truncation=True),
            dict(padding="max_length", truncation=True, max_length=16),
            dict(padding=True, truncation=True, max_length=8),
            dict(padding="longest")]


@pytest.fixture(scope="module")
def corpus():
    return tc.build_corpus()


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def hf_files(tmp_path_factory):
    """vocab.json / merges.txt built independently from the .gz the way transformers' conversion does."""
    return tc.hf_files_from_bundled(str(tmp_path_factory.mktemp("hf_vocab")))


@pytest.fixture(scope="module")
def hf(hf_files):
    return transformers.CLIPTokenizerFast(**hf_files, model_max_length=77)


def test_corpus_covers_the_required_cases(corpus):
    import unicodedata

    assert len(corpus) >= 500 and len(set(corpus)) == len(corpus) and "" in corpus
    assert sum(len(t) == 1000 for t in corpus) >= 5
    wanted = {"combining mark": lambda t: any(unicodedata.category(c) == "Mn" for c in t),
              "emoji": lambda t: "\U0001F600" in t, "html entity": lambda t: "&amp;" in t,
              "contraction": lambda t: "'ll" in t.lower(), "curly quote": lambda t: "\u2019" in t,
              "digits": lambda t: any(c.isdigit() for c in t), "newline": lambda t: "\n" in t,
              "tab": lambda t: "\t" in t,
              "NEL": lambda t: "\u0085" in t, "punctuation run": lambda t: "!!!" in t,
              "non-Latin letters": lambda t: any(c.isalpha() and ord(c) > 0x2000 for c in t)}
    missing = [name for name, has in wanted.items() if sum(map(has, corpus)) < 3]
    assert not missing, missing


# ----------------------------------------------------------------------------- OpenAI behaviour
@pytest.mark.parametrize("context_length", [77, 12])
def test_tokenize_matches_openai(corpus, context_length):
    ref = clip.tokenize(corpus, context_length=context_length, truncate=True).numpy()
    for attempt in range(2):  # the second call is served from the chunk cache
        ours = tokenize(corpus, context_length=context_length, truncate=True)
        assert ours.dtype == np.int32 and ours.shape == ref.shape
        bad = [corpus[i] for i in np.flatnonzero((ours != ref).any(axis=1))]
        assert not bad, f"attempt {attempt}: {len(bad)} strings differ from OpenAI, e.g. {bad[:5]!r}"


def test_tokenize_single_string_and_cached_builder():
    import clip_core

    np.testing.assert_array_equal(tokenize("a photo of a cat"), clip.tokenize("a photo of a cat").numpy())
    assert default_tokenizer() is default_tokenizer()
    assert clip_core.tokenize is tokenize and clip_core.CLIPTokenizer is CLIPTokenizer  # lazy exports


def test_threads_share_one_tokenizer(corpus):
    """Concurrent calls on one fresh tokenizer (cold caches) give the single-threaded ids."""
    from concurrent.futures import ThreadPoolExecutor

    tok = CLIPTokenizer()
    parts = [corpus[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: tok.encode_openai(p, truncate=True), parts))
    for part, got in zip(parts, results):
        np.testing.assert_array_equal(got, clip.tokenize(part, truncate=True).numpy())


def test_tokenize_mixed_batch_order(corpus):
    """Fast-path and ftfy-path texts interleaved keep their rows; duplicates give identical rows."""
    texts = [corpus[i] for i in np.random.default_rng(0).permutation(len(corpus))[:200]] * 2
    ours = tokenize(texts, truncate=True)
    np.testing.assert_array_equal(ours, clip.tokenize(texts, truncate=True).numpy())
    np.testing.assert_array_equal(ours[:200], ours[200:])


def test_cache_reset_keeps_ids(corpus, monkeypatch):
    """A cache over its limit is emptied and rebuilt within the call; the ids do not change."""
    import clip_core.tokenizer as module

    tok = CLIPTokenizer()
    first = tok.encode_openai(corpus, truncate=True)
    monkeypatch.setattr(module, "_CACHE_LIMIT", 10)
    np.testing.assert_array_equal(tok.encode_openai(corpus[::-1], truncate=True), first[::-1])
    assert len(tok._openai_encoder()._chunks) < 10_000


def test_without_ftfy_matches_openai_without_ftfy(corpus, monkeypatch):
    """With ftfy absent, cleaning skips fix_text (and the Latin-1 shortcut needs no detector)."""
    import clip.simple_tokenizer as reference

    monkeypatch.setattr(reference.ftfy, "fix_text", lambda text: text)
    monkeypatch.setattr(_text_clean, "_fix_text", lambda: (lambda text: text))
    monkeypatch.setattr(_text_clean, "_is_mojibake", lambda: (lambda text: False))
    ours = CLIPTokenizer().encode_openai(corpus, truncate=True)
    np.testing.assert_array_equal(ours, clip.tokenize(corpus, truncate=True).numpy())
    assert _text_clean.is_fast("×Æ")  # ftfy would repair this mojibake; without ftfy the shortcut applies


def test_too_long_raises_naming_the_text():
    long = "a photo of " + "very " * 80 + "long cat"
    with pytest.raises(RuntimeError, match="very very"):
        tokenize(["ok", long])
    with pytest.raises(RuntimeError):  # the reference agrees that it is too long
        clip.tokenize([long])
    exact = "a " * 75  # 75 tokens + SOT + EOT == 77 fits exactly
    assert tokenize(exact)[0, -1] == default_tokenizer().eos_token_id


def test_truncation_keeps_eot_last(tok):
    ids = tokenize(["word " * 200, "hi"], context_length=10, truncate=True)
    assert ids[0, -1] == tok.eos_token_id and ids[0, 0] == tok.bos_token_id
    assert (ids[0] != 0).all() and (ids[1, 3:] == 0).all()


def test_context_length_too_small():
    with pytest.raises(ValueError, match="context_length"):
        tokenize("x", context_length=1)


def test_fast_clean_equals_reference(corpus):
    fast = [t for t in corpus if _text_clean.is_fast(t)]
    assert len(fast) > 150
    assert [_text_clean.clean_fast(t) for t in fast] == [_text_clean.clean_reference(t) for t in fast]


def _expected_chunks(texts):
    """fast_chunks' contract, spelled out with the per-text reference cleaning."""
    joined = f" {_text_clean.SEP_CHUNK} ".join(_text_clean.clean_reference(t) for t in texts)
    return [c for c in joined.split(" ") if c]


@pytest.mark.parametrize("alphabet", ["ascii", "latin1"])
def test_fast_clean_property(alphabet):
    """Whenever is_fast holds, the fast cleaning equals ftfy + html + regex (ASCII and Latin-1 texts)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    chars = (st.characters(max_codepoint=127) if alphabet == "ascii"
             else st.sampled_from([chr(c) for c in [*range(0x20, 0x7f), *range(0xa0, 0x100)]] * 1 + ["\n", "\t"]))
    text = st.text(chars, max_size=30)

    @hypothesis.settings(max_examples=200, deadline=None)
    @hypothesis.given(st.lists(text, min_size=1, max_size=5))
    def check(texts):
        fast, slow = _text_clean.split_fast(texts)
        assert sorted(fast + slow) == list(range(len(texts)))
        assert all(_text_clean.is_fast(texts[i]) for i in fast) and not any(_text_clean.is_fast(texts[i]) for i in slow)
        for i in fast:
            assert _text_clean.clean_fast(texts[i]) == _text_clean.clean_reference(texts[i])
        chosen = [texts[i] for i in fast]
        if chosen:
            assert [c for c in _text_clean.fast_chunks(chosen) if c] == _expected_chunks(chosen)

    check()


def test_latin1_shortcut_decisions():
    """Latin-1 letters take the shortcut unless ftfy's detector sees mojibake (then ftfy runs and fixes it)."""
    assert _text_clean.is_fast("crème brûlée à la française")
    for mojibake in ["cafÃ©", "Ã¼ber", "Ã©Ã©", "×Æ"]:
        assert not _text_clean.is_fast(mojibake)
        assert _text_clean.clean_reference(mojibake) != _text_clean.clean_fast(mojibake)
    for slow in ["é\nline", "é &amp;", "é\xa0", "e\u0301"]:
        assert not _text_clean.is_fast(slow)


def test_fast_chunks_edge_cases():
    texts = ["", "  A  b ", "\t\n", "x", "", "Hello\r\nWorld"]
    assert _text_clean.split_fast(texts) == (list(range(6)), [])
    assert [c for c in _text_clean.fast_chunks(texts) if c] == _expected_chunks(texts)


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["ok", None], ["ok", 1.5]])
def test_bad_input_raises_type_error(tok, bad):
    with pytest.raises(TypeError, match="text"):
        tokenize(bad)
    with pytest.raises(TypeError, match="text"):
        tok(bad)


def test_bad_input_names_the_item():
    with pytest.raises(TypeError, match=r"text\[1\].*NoneType"):
        tokenize(["ok", None])


# ----------------------------------------------------------------------------- HF behaviour
def test_backend_pipeline_equals_transformers(tok, hf):
    """Same normalizer, pre-tokenizer, model, post-processor, decoder and special tokens as CLIPConverter."""
    import json

    assert json.loads(tok.backend_tokenizer.to_str()) == json.loads(hf.backend_tokenizer.to_str())


@pytest.mark.parametrize("kwargs", HF_CALLS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_hf_call_matches_transformers(corpus, tok, hf, kwargs):
    ref = hf(corpus, return_tensors="np", **kwargs) if kwargs.get("truncation") else hf(corpus[:200], **kwargs)
    ours = tok(corpus, return_tensors="np", **kwargs) if kwargs.get("truncation") else tok(corpus[:200], **kwargs)
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(ref[key]), err_msg=key)


def test_hf_plain_ascii_path_equals_rust_pipeline(tok):
    """Plain ASCII texts skip Rust (chunk cache); their ids equal the Rust pipeline's on random text."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    pieces = st.sampled_from([chr(c) for c in range(0x20, 0x7f)] + ["\t", "\n", "\r", "<|", "&amp;", "'s", "  "])
    text = st.lists(pieces, max_size=30).map("".join)

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(st.lists(text, min_size=1, max_size=4))
    def check(texts):
        rust = [e.ids for e in tok.backend_tokenizer.encode_batch(texts)]
        assert tok(texts)["input_ids"] == rust

    check()


def test_hf_call_unpadded_and_single(tok, hf):
    texts = ["a cat", "a photo of a big dog", ""]
    assert dict(tok(texts)) == dict(hf(texts))
    assert dict(tok("one text")) == dict(hf("one text"))
    assert dict(tok(texts, max_length=4)) == dict(hf(texts, max_length=4))  # max_length alone truncates
    with pytest.raises(ValueError):
        tok(texts, return_tensors="np")  # ragged, as transformers


@pytest.mark.parametrize("pad_token", ["!", "<|endoftext|>", 0])
def test_pad_token_options(corpus, hf_files, pad_token):
    """Padding with 0 ('!') or EOT; transformers also treats a '!' pad token as a special token."""
    tok = CLIPTokenizer(pad_token=pad_token)
    name = "!" if pad_token in ("!", 0) else pad_token
    ref = transformers.CLIPTokenizerFast(**hf_files, pad_token=name, model_max_length=77)
    texts = ["wow!! hi", "a photo of a cat!", "!", ""] + corpus[::3]
    ours = tok(texts, padding="max_length", truncation=True, return_tensors="np")
    theirs = ref(texts, padding="max_length", truncation=True, return_tensors="np")
    assert tok.pad_token_id == ref.pad_token_id
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


@pytest.mark.parametrize("framework", ["np", "pt", "tf", "jax"])
def test_return_tensors(tok, hf, framework):
    module = {"np": "numpy", "pt": "torch", "tf": "tensorflow", "jax": "jax"}[framework]
    pytest.importorskip(module)
    texts = ["a photo of a cat", "a dog"]
    ours = tok(texts, padding=True, return_tensors=framework)
    theirs = hf(texts, padding=True, return_tensors=framework)
    for key in ("input_ids", "attention_mask"):
        assert type(ours[key]) is type(theirs[key]) or framework == "jax"
        assert str(ours[key].dtype) == str(theirs[key].dtype), (key, ours[key].dtype, theirs[key].dtype)
        np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]))
    assert ours.input_ids is ours["input_ids"]


def test_bad_call_options(tok):
    with pytest.raises(ValueError, match="padding"):
        tok("x", padding="sideways")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("x", return_tensors="mx")
    with pytest.raises(ValueError, match="max_length"):
        tok("x", truncation=True, max_length=1)


# ----------------------------------------------------------------------------- loading and saving
def test_save_pretrained_roundtrip_with_transformers(tmp_path, corpus, tok, hf):
    tok.save_pretrained(str(tmp_path))
    expected = hf(corpus, padding=True, truncation=True, return_tensors="np")
    only_vocab = tmp_path / "only_vocab"
    only_vocab.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tmp_path / name, only_vocab / name)
    loaders = [transformers.CLIPTokenizerFast.from_pretrained(str(tmp_path)),  # uses tokenizer.json
               transformers.CLIPTokenizerFast.from_pretrained(str(only_vocab)),  # converts vocab + merges
               CLIPTokenizer.from_pretrained(str(tmp_path)), CLIPTokenizer.from_pretrained(str(only_vocab))]
    for loaded in loaders:
        got = loaded(corpus, padding=True, truncation=True, return_tensors="np")
        np.testing.assert_array_equal(got["input_ids"], expected["input_ids"], err_msg=type(loaded).__name__)
        np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])
        assert loaded.model_max_length == 77 and loaded.pad_token == "<|endoftext|>"
    np.testing.assert_array_equal(loaders[2].encode_openai(corpus, truncate=True), tokenize(corpus, truncate=True))


def test_from_pretrained_zero_pad_roundtrip(tmp_path):
    CLIPTokenizer(pad_token="!").save_pretrained(str(tmp_path))
    ours = CLIPTokenizer.from_pretrained(str(tmp_path))
    theirs = transformers.CLIPTokenizerFast.from_pretrained(str(tmp_path))
    assert ours.pad_token_id == theirs.pad_token_id == 0
    texts = ["hello!!", "a"]
    assert dict(ours(texts, padding="max_length", max_length=10)) == dict(
        theirs(texts, padding="max_length", max_length=10))


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_pretrained(str(tmp_path))


def test_from_openai_bpe_of_reference_package(corpus):
    path = os.path.join(os.path.dirname(clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    loaded = CLIPTokenizer.from_openai_bpe(path)
    assert read_openai_bpe(path) == read_openai_bpe(BUNDLED_BPE)
    assert loaded.vocab_size == len(loaded) == 49408
    np.testing.assert_array_equal(loaded.encode_openai(corpus[:100], truncate=True),
                                  clip.tokenize(corpus[:100], truncate=True).numpy())


def test_vocabulary_facts(tok, hf):
    assert (tok.vocab_size, len(tok)) == (hf.vocab_size, len(hf)) == (49408, 49408)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok.get_vocab() == hf.get_vocab()
    assert tok.convert_ids_to_tokens([320, 49407]) == hf.convert_ids_to_tokens([320, 49407])


# ----------------------------------------------------------------------------- decoding
def test_decode_matches_transformers(corpus, tok, hf):
    ids = hf(corpus, truncation=True)["input_ids"]
    for skip in (False, True):
        assert tok.batch_decode(ids, skip_special_tokens=skip) == hf.batch_decode(ids, skip_special_tokens=skip)
    arr = tokenize(corpus[:5])
    assert tok.batch_decode(arr) == [tok.decode(list(row)) for row in arr]


def test_decode_roundtrip(corpus, tok):
    texts = [t for t in corpus if _text_clean.is_fast(t) and "<|" not in t][:200]
    for text in texts:
        ids = tok.encode(text)
        assert tok.encode(tok.decode(ids, skip_special_tokens=True)) == ids, text
    assert tok.decode(tok.encode("A Photo of a Cat."), skip_special_tokens=True) == "a photo of a cat ."


def test_encode_and_tokenize_methods(tok, hf):
    assert tok.encode("It's a dog!") == hf.encode("It's a dog!")
    assert tok.tokenize("It's a dog!") == hf.tokenize("It's a dog!")


# ----------------------------------------------------------------------------- documented disagreements
def test_disagreement_table_in_docs_is_current(corpus, hf):
    table = tc.disagreement_table(tc.disagreements(hf, corpus))
    with open(DOC, encoding="utf-8") as f:
        doc = f.read()
    assert table in doc, "docs/tokenizer.md is stale: run `python -m tests.tokenizer_corpus`"
