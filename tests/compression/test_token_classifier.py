"""LLMLingua-2 over a local token classifier: chunking, scores, merges, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tests.compression.helpers import generated_texts

from tokenwise.compression import compress
from tokenwise.compression.token_classifier import TokenClassifierCompressor, reference_chunks
from tokenwise.errors import ModelNotFoundError, TokenwiseError, UnsafeCheckpointError
from tokenwise.models import builtin_path


def naive_chunks(n, is_end, max_len):
    """llmlingua's __chunk_context loop, on token indices."""
    out, st_ = [], 0
    while st_ < n:
        if st_ + max_len > n - 1:
            out.append((st_, n))
            break
        ed = st_ + max_len
        for j in range(0, ed - st_):
            if is_end[ed - j]:
                ed = ed - j
                break
        out.append((st_, ed + 1))
        st_ = ed + 1
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=120), st.integers(2, 30))
def test_reference_chunks_match_the_loop(ends, max_len):
    is_end = np.array(ends, dtype=bool)
    got = reference_chunks(len(ends), is_end, max_len)
    assert got == naive_chunks(len(ends), is_end, max_len)
    assert all(b - a <= max_len + 1 for a, b in got)
    assert [a for a, _ in got[1:]] == [b for _, b in got[:-1]]


def _naive_word_scores(comp, text, mode):
    """One chunk by hand: [CLS] ids [SEP] through the model, grouped by BERT's word ids."""
    enc = comp.tokenizer(text, add_special_tokens=False)
    ids = [comp.tokenizer.cls_token_id, *enc["input_ids"], comp.tokenizer.sep_token_id]
    with torch.no_grad():
        logits = comp.model(input_ids=torch.tensor([ids])).logits[0, 1:-1]
    p = torch.softmax(logits, -1)[:, 1].numpy()
    groups = {}
    for i, w in enumerate(enc.word_ids()):
        groups.setdefault(w, []).append(p[i])
    return [float(np.mean(v)) if mode == "mean" else float(v[0]) for v in groups.values()]


@pytest.mark.parametrize("mode", ["mean", "first"])
def test_scores_are_the_classifiers_keep_probabilities(tiny_bert_dir, mode):
    comp = TokenClassifierCompressor(tiny_bert_dir, token_to_word=mode)
    text = "The council approved the coördinate budget: 4,200 thousand (see item 42)."
    res = comp.compress(text, rate=0.5, protect=False)
    np.testing.assert_allclose(res.scores, _naive_word_scores(comp, text, mode), rtol=1e-5)
    assert res.words[:3] == ["The", "council", "approved"]


def test_batching_and_chunk_size_do_not_change_short_chunks(tiny_bert_dir):
    texts = generated_texts(6, seed=4, long_every=2)
    one = TokenClassifierCompressor(tiny_bert_dir, batch_size=1)
    many = TokenClassifierCompressor(tiny_bert_dir, batch_size=16)
    for text in texts:
        a = one.compress(text, rate=0.4)
        b = many.compress(text, rate=0.4)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
        assert a.words == b.words


def test_long_text_is_chunked_within_the_model_limit(tiny_bert_dir):
    comp = TokenClassifierCompressor(tiny_bert_dir, max_length=32, batch_size=4)
    seen = []
    real = comp.model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return real(*args, **kwargs)

    comp.model.forward = spy
    text = " ".join(generated_texts(3, seed=2, long_every=1))
    res = comp.compress(text, target_tokens=300, protect=False)
    assert max(seen) <= 32 and len(seen) > 3
    assert res.tokens_after <= 300 and res.tokens_after >= 297
    assert len(set(res.words)) > 50


def test_model_object_and_directory_agree(tiny_bert_dir):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(tiny_bert_dir)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    text = generated_texts(1, seed=8)[0]
    a = TokenClassifierCompressor(model, tok).compress(text, rate=0.3)
    b = TokenClassifierCompressor(tiny_bert_dir).compress(text, rate=0.3)
    assert a.words == b.words and a.keep.tolist() == b.keep.tolist()


def test_threshold_mode_keeps_probabilities_at_least_t(tiny_compressor):
    text = generated_texts(1, seed=6, long_every=1)[0]
    res = tiny_compressor.compress(text, threshold=0.6, protect=False)
    assert res.keep.tolist() == (res.scores >= 0.6).tolist()
    with pytest.raises(TokenwiseError, match=r"threshold=1.2 is outside \[0.0, 1.0\]"):
        tiny_compressor.compress(text, threshold=1.2)


def test_cjk_words_and_no_garbling(tiny_compressor):
    text = "北京是中国的首都。東京は日本の首都です。会议预算已经批准了。"
    res = tiny_compressor.compress(text, rate=0.5)
    assert all(len(w) == 1 for w in res.words if "\u4e00" <= w[0] <= "\u9fff")
    out = iter(text)
    assert all(ch in out for ch in res.text)  # a subsequence of the original characters


def test_force_tokens_must_tokenize(tiny_compressor):
    with pytest.raises(TokenwiseError, match="force token '☃' does not tokenize"):
        tiny_compressor.compress("council budget", rate=0.5, force_tokens=["☃"])
    res = tiny_compressor.compress("council budget. water road park", rate=0.6,
                                   force_tokens=["water road"], protect=False)
    assert {"water", "road"} <= set(res.kept_words)


def test_errors_for_models_without_the_head(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, BertModel

    with pytest.raises(TokenwiseError, match=r"token classifier 'nope' not found.*tw-keep"):
        TokenClassifierCompressor("nope")
    with pytest.raises(TokenwiseError, match=r"LlamaForCausalLM.*no token-classification head"):
        TokenClassifierCompressor(builtin_path("tw-small"))
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    config = BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1,
                        num_attention_heads=1, intermediate_size=8)
    bare = tmp_path / "bare"
    BertModel(config).save_pretrained(bare)
    tok.save_pretrained(bare)
    with pytest.raises(TokenwiseError, match=r"BertModel.*no token-classification head"):
        TokenClassifierCompressor(bare)
    with pytest.raises(TokenwiseError, match="not a token-classification model"):
        TokenClassifierCompressor(BertModel(config), tok)
    one_label = BertForTokenClassification(BertConfig(**{**config.to_dict(), "num_labels": 1}))
    with pytest.raises(TokenwiseError, match="num_labels=1"):
        TokenClassifierCompressor(one_label, tok)
    with pytest.raises(TokenwiseError, match="pass tokenizer="):
        TokenClassifierCompressor(one_label)

    class Slow:
        is_fast = False

    with pytest.raises(TokenwiseError, match="not a fast"):
        TokenClassifierCompressor(BertForTokenClassification(config), Slow())
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UnsafeCheckpointError, match="safetensors"):
        TokenClassifierCompressor(pickled)
    with pytest.raises(ModelNotFoundError):
        TokenClassifierCompressor(tmp_path / "missing")


@pytest.mark.parametrize("bad, match", [
    ({"max_length": 4096}, "max_length=4096: allowed 4..512"),
    ({"max_length": 2}, "max_length=2"),
    ({"token_to_word": "last"}, "token_to_word='last'"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"dtype": "int8"}, "dtype='int8'"),
])
def test_bad_options(tiny_bert_dir, bad, match):
    with pytest.raises(TokenwiseError, match=match):
        TokenClassifierCompressor(tiny_bert_dir, **bad)


@pytest.mark.parametrize("kind, attn", [("bert", "sdpa"), ("bert", "eager"), ("xlmr", "sdpa")])
def test_broadcast_padding_mask_gives_the_2d_mask_outputs(tiny_bert_dir, tiny_xlmr_dir, kind,
                                                          attn):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    path = tiny_bert_dir if kind == "bert" else tiny_xlmr_dir
    model = AutoModelForTokenClassification.from_pretrained(path, attn_implementation=attn)
    comp = TokenClassifierCompressor(model, AutoTokenizer.from_pretrained(path), batch_size=8,
                                     max_length=64)
    assert comp._broadcast_mask
    texts = generated_texts(3, seed=13, long_every=1)
    fast = comp.score_words(texts)
    comp._broadcast_mask = False  # transformers' own (B, 1, T, T) mask
    slow = comp.score_words(texts)
    np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-6)
    assert len(set(fast.groups.tolist())) > 8  # many padded batches were compared


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_gpu_gives_the_cpu_scores(tiny_bert_dir):
    text = generated_texts(1, seed=12, long_every=1)[0]
    cpu = TokenClassifierCompressor(tiny_bert_dir).compress(text, rate=0.4)
    gpu = TokenClassifierCompressor(tiny_bert_dir, device="cuda").compress(text, rate=0.4)
    np.testing.assert_allclose(cpu.scores, gpu.scores, atol=1e-4)


def test_concurrent_calls_give_the_sequential_results(tiny_compressor):
    from concurrent.futures import ThreadPoolExecutor

    texts = generated_texts(6, seed=31, long_every=3)
    alone = [tiny_compressor.compress(t, rate=0.4) for t in texts]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(lambda t: tiny_compressor.compress(t, rate=0.4), texts))
    for a, b in zip(alone, together, strict=True):
        assert a.text == b.text and a.tokens_before == b.tokens_before


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["council", "budget", " ", "\n", "北京", ".", "x2", "  ",
                                 "coördinate", "\t", "(see", "42"]), max_size=80).map("".join),
       st.integers(1, 40))
def test_pieces_tokenize_as_the_whole_text(tiny_compressor, text, size):
    assert tiny_compressor._split_mode == "space"
    _check_pieces(tiny_compressor, text, size)


def _check_pieces(comp, text, size):
    whole = comp.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    comp.piece_chars = size
    try:
        ids, off = comp._encode([text])
    finally:
        comp.piece_chars = TokenClassifierCompressor.piece_chars
    assert ids[0].tolist() == whole["input_ids"]
    assert off[0].tolist() == [list(o) for o in whole["offset_mapping"]]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["code", "Tavoun", " ", "\n", "北京", ".", "x2", "  ", "'s",
                                 "coördinate", "\t", "(see", "917", " \n", "é", "?!"]),
                max_size=80).map("".join),
       st.integers(1, 40))
def test_byte_level_pieces_tokenize_as_the_whole_text(tw_keep, text, size):
    assert tw_keep._split_mode == "marker"
    _check_pieces(tw_keep, text, size)


@pytest.fixture(scope="module")
def tw_keep():
    return TokenClassifierCompressor()  # the built-in byte-level classifier


def _needles(n, seed):
    from tokenwise.cli.compress_train import needle_examples

    return [t for t, _ in needle_examples(n, seed=seed)]


def test_default_model_is_tw_keep(tw_keep):
    """No model, the name "tw-keep" and the built-in's directory load the same classifier,
    read the way it was trained (question first), and score words alike."""
    from tokenwise.compression.token_classifier import BUILTIN_CLASSIFIERS

    named = TokenClassifierCompressor("tw-keep")
    by_path = TokenClassifierCompressor(BUILTIN_CLASSIFIERS["tw-keep"])
    for comp in (tw_keep, named, by_path):
        assert comp.model_name == "tw-keep"
        assert comp.question_template == "Q: {question}\n"
    weights = by_path.model.state_dict()
    for comp in (tw_keep, named):
        assert comp.model.state_dict().keys() == weights.keys()
        assert all(torch.equal(v, weights[k]) for k, v in comp.model.state_dict().items())
    text = _needles(1, seed=4)[0]
    want = by_path.score_words([text]).scores
    assert want.max() - want.min() > 0.5  # a trained classifier: some words kept, some not
    for comp in (tw_keep, named):
        np.testing.assert_array_equal(comp.score_words([text]).scores, want)


def test_byte_level_words_split_at_line_breaks(tw_keep):
    from tokenwise.compression import words

    # The reference rule glued ".", "\n", "The" into one word; ours matches the text's words.
    texts = [*_needles(12, seed=3), "Memo:\n\nThe end.\n \nQ: who?\n\n", "a\tb\r\nc  d "]
    for text in texts:
        s = tw_keep.score_words([text])
        got = [text[a:b] for a, b in zip(s.starts.tolist(), s.ends.tolist(), strict=True)]
        ws, we = words.split_words(text)
        assert got == [text[a:b] for a, b in zip(ws.tolist(), we.tolist(), strict=True)]


def test_force_phrase_at_a_line_start_is_kept_whole(tw_keep):
    text = _needles(1, seed=5)[0]
    q_line = text.rstrip("\n").rsplit("\n", 1)[1]
    assert q_line.startswith("Q: What is the code of ")
    for percentile in ("global", "chunk"):
        r = tw_keep.compress(text, rate=0.33, force_tokens=[q_line], protect=False,
                             percentile=percentile)
        assert r.text.rstrip("\n").endswith(q_line)
        n_q = len(q_line.split()) + 2  # "Q", ":", ..., "?"
        assert r.forced[-n_q:].all() and not r.forced[:-n_q].any()


def test_byte_level_chunks_may_end_at_line_breaks(tw_keep):
    nl = tw_keep.tokenizer.convert_tokens_to_ids("Ċ")
    assert tw_keep._vocab.chunk_end[nl]
    short = TokenClassifierCompressor(max_length=20)
    text = max(_needles(8, seed=8), key=len)
    s = short.score_words([text])
    cuts = np.flatnonzero(np.diff(s.groups)) + 1  # first word of each later chunk
    assert len(cuts) >= 3
    for i in cuts:
        gap = text[s.ends[i - 1]:s.starts[i]]
        assert "\n" in gap or text[s.starts[i - 1]:s.ends[i - 1]] == "."


def test_question_keywords_forced_when_asked(tw_keep):
    text = _needles(1, seed=5)[0]
    key = text.rstrip("\n").rsplit("of ", 1)[1].rstrip("?")
    q = f"What is the code of {key}?"
    on = TokenClassifierCompressor(force_question_words=True).compress(
        text, rate=0.5, question=q, protect=False)
    assert {w for w, f in zip(on.words, on.forced, strict=True) if f} == {"code", key}
    assert all(k for w, k in zip(on.words, on.keep, strict=True) if w in ("code", key))
    off = tw_keep.compress(text, rate=0.5, question=q, protect=False)
    assert not off.forced.any()


def test_question_template_reads_the_question_before_every_chunk(tw_keep):
    from tokenwise.testbed.needle import NeedleWorld

    assert tw_keep.question_template == "Q: {question}\n"  # from tw-keep's training.json
    it = next(i for i in NeedleWorld(0).eval_items(seed=3, per_count=3) if i.n_distractors == 7)
    # One chunk: the same scores as the text with the question line written first.
    asked = tw_keep.score_words([it.context], question=it.question)
    whole = tw_keep.score_words([f"Q: {it.question}\n{it.context}"])
    n_q = len(whole.scores) - len(asked.scores)
    assert n_q == 9 and np.allclose(asked.scores, whole.scores[n_q:], atol=1e-5)
    # ... and a text that already opens with the question line is read as it is.
    again = tw_keep.score_words([f"Q: {it.question}\n{it.context}"], question=it.question)
    assert np.allclose(again.scores, whole.scores, atol=1e-5)
    plain = tw_keep.score_words([it.context])
    off = TokenClassifierCompressor(question_template=None).score_words(
        [it.context], question=it.question)
    assert np.array_equal(off.scores, plain.scores)
    assert not np.allclose(asked.scores, plain.scores, atol=1e-3)


def test_question_prefix_reaches_every_chunk_naive_forward():
    from tokenwise.testbed.needle import NeedleWorld

    short = TokenClassifierCompressor(max_length=48)
    it = next(i for i in NeedleWorld(0).eval_items(seed=4, per_count=3) if i.n_distractors == 15)
    (ids,), _ = short._encode([it.context])
    (prefix,) = short._question_prefixes([it.context], it.question)
    line = short.tokenizer(f"Q: {it.question}\n", add_special_tokens=False)["input_ids"]
    assert prefix.tolist() == line
    spans = reference_chunks(len(ids), short._vocab.chunk_end[ids], 48 - 2 - len(prefix))
    assert len(spans) >= 4
    got = short._keep_probabilities([ids], [(0, a, b) for a, b in spans], [prefix])
    expected = []
    with torch.inference_mode():
        for a, b in spans:  # one chunk at a time, no padding: [CLS] question chunk [SEP]
            row = np.concatenate([[short._cls], prefix, ids[a:b], [short._sep]])[:48]
            logits = short.model(input_ids=torch.from_numpy(row)[None]).logits[0]
            p = torch.softmax(logits, -1)[:, 1].numpy()
            expected.append(p[1 + len(prefix):1 + len(prefix) + b - a])
    assert np.allclose(got, np.concatenate(expected), atol=1e-5)


def test_a_question_finds_the_needle_without_its_line_in_the_text(tw_keep):
    import re

    from tokenwise.compression import TokenCounter
    from tokenwise.testbed.needle import NeedleWorld

    counter = TokenCounter.resolve(None)
    hits = {True: [], False: []}
    for it in NeedleWorld(0).eval_items(seed=3, per_count=10):
        if it.n_distractors < 3:
            continue
        for asked in (True, False):
            r = tw_keep.compress(it.context, target_tokens=round(0.33 * counter.count(it.context)),
                                 question=it.question if asked else None, protect=False,
                                 target_model=counter)
            hits[asked].append(re.search(rf"(?<!\d){it.answer}(?!\d)", r.text) is not None)
    assert np.mean(hits[True]) >= 0.7 and np.mean(hits[True]) > np.mean(hits[False]) + 0.2


def test_question_template_errors(tw_keep):
    with pytest.raises(TokenwiseError, match="question_template="):
        TokenClassifierCompressor(question_template="Q: ")
    with pytest.raises(TokenwiseError, match="at most half"):
        tw_keep.compress("The code of Lego is 526.", rate=0.5, question="why " * 200)


def _is_subsequence(out, text):
    """Whether ``out``, less the separators (whitespace) render puts between words, is a
    subsequence of ``text``: no character repeated, reordered or invented."""
    rest = iter(text)
    return all(ch in rest for ch in out if not ch.isspace())


def _check_disjoint(scores):
    """Words that hold text never overlap (a word of empty pieces holds none)."""
    s, e = scores.starts, scores.ends
    spans = list(zip(s.tolist(), e.tolist(), strict=True))
    solid = s < e
    assert np.all(s <= e) and np.all(s[solid][1:] >= e[solid][:-1]), spans


@pytest.mark.parametrize(("text", "first"), [
    ("我爱北京天安门。今天天气很好。", ["我", "爱", "北", "京"]),
    ("日本語のテキストです。東京都に住んでいます。", ["日", "本", "語のテキストです。", "東"]),
])
def test_byte_level_cjk_characters_are_never_repeated(tw_keep, text, first):
    # Each CJK character is three byte pieces; each piece used to open a word of its own,
    # so one character made three overlapping words ("爱北北京京京天").
    s = tw_keep.score_words([text])
    _check_disjoint(s)
    got = [text[a:b] for a, b in zip(s.starts.tolist(), s.ends.tolist(), strict=True)]
    assert "".join(got) == text
    assert got[:4] == first
    for rate in (0.3, 0.5, 0.8):
        out = compress(text, method="token_classifier", rate=rate).text
        assert _is_subsequence(out, text), out


@pytest.fixture(scope="module")
def tw_keep_short():
    return TokenClassifierCompressor(max_length=8)  # chunks that cut through characters


ANY_TEXT = st.lists(
    st.one_of(st.characters(exclude_categories=("Cs",)),
              st.sampled_from([*"中文北京天安门の日本語テキスト한국어", *"。、！？「」（）",
                               "\U00020000", *" \t\n\r\u3000\u00a0", *".,;:!?()'\"-/@#_",
                               "code", " of ", "917", "Tavoun", "https://a.org/x", "`x`"])),
    max_size=40).map("".join)


@settings(max_examples=20, deadline=None)
@given(ANY_TEXT, st.sampled_from([0.2, 0.5, 0.9]))
def test_compressed_text_is_a_subsequence_of_any_unicode_input(tw_keep, tw_keep_short, text,
                                                               rate):
    for comp in (tw_keep, tw_keep_short):
        _check_disjoint(comp.score_words([text]))
    assume(text.strip())  # an empty text is refused with a clear error
    try:
        out = compress(text, method="token_classifier", rate=rate).text
    except TokenwiseError as exc:  # protected numbers, URLs, code alone may exceed the rate
        assert "cannot be met" in str(exc)
        out = compress(text, method="token_classifier", rate=rate, protect=False).text
    assert _is_subsequence(out, text), (text, out)
    out = tw_keep_short.compress(text, rate=rate, protect=False).text
    assert _is_subsequence(out, text), (text, out)
