"""tokenwise.tokenizers.transplant: TokenAdapt's rule, the baselines, heads, saving."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tokenwise.errors import TokenwiseError
from tokenwise.models import load
from tokenwise.tokenizers import bits_per_byte, train, transplant
from tokenwise.tokenizers.vocab import old_pieces, token_bytes


@pytest.fixture(scope="module")
def docs(testbed) -> list[str]:
    return testbed.training_documents()[:800]


@pytest.fixture(scope="module")
def new_tok(docs):
    return train(docs, 800, supertokens=True)


@pytest.fixture(scope="module")
def old(small):
    return small


def _rows(lm):
    return lm.hf_model.get_input_embeddings().weight.detach().float()


def _new_ids(old_lm, tok):
    """New ids whose bytes no old token has (the ones an init must make)."""
    old_info, new_info = token_bytes(old_lm.tokenizer), token_bytes(tok)
    old_set = {b for b, s in zip(old_info.data, old_info.special, strict=True) if not s}
    return [j for j in range(len(tok)) if not new_info.special[j]
            and new_info.data[j] not in old_set]


def test_shared_and_special_rows_are_copied(old, new_tok):
    result = transplant(old, new_tok, "random")
    rows, old_rows = _rows(result.model), _rows(old)
    old_vocab = old.tokenizer.get_vocab()
    shared = [t for t in new_tok.get_vocab() if t in old_vocab]
    assert result.sources["shared"] + result.sources["special"] == len(shared)
    for token in shared:
        assert torch.equal(rows[new_tok.convert_tokens_to_ids(token)], old_rows[old_vocab[token]])


def test_sentencepiece_spelling_meets_byte_level(old):
    """A ▁-spelled token is matched with the Ġ-spelled old token of the same text."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.Replace(" ", "▁")
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    core.train_from_iterator(["the code of the city is here"] * 30, trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    assert "▁code" in tok.get_vocab()
    result = transplant(old, tok, "mean")
    old_id = old.tokenizer.convert_tokens_to_ids("Ġcode")
    assert torch.equal(_rows(result.model)[tok.convert_tokens_to_ids("▁code")], _rows(old)[old_id])


def _reference_tokenadapt(old_lm, tok, j, k=3, tau=0.3, w_local=0.7):
    """TokenAdapt's row for new id ``j``, written out plainly (default embedder)."""
    e = _rows(old_lm)
    info, new_info = token_bytes(old_lm.tokenizer), token_bytes(tok)
    ids = old_pieces(old_lm.tokenizer, info, new_info.data[j])

    def vec(text):
        return e[old_pieces(old_lm.tokenizer, info, text.encode())].mean(0)

    v = vec(new_info.text(j))
    cos = torch.stack([torch.cosine_similarity(v, vec(info.text(i)), dim=0) for i in ids])
    ratio = torch.tensor([len(info.data[i]) / len(new_info.data[j]) for i in ids])
    w = torch.softmax(((torch.softmax(cos, 0) + ratio) / 2) / tau, 0)
    local = (w[:, None] * e[ids]).sum(0)
    candidates = [i for i in range(len(info.data)) if not info.special[i]]
    sims = torch.cosine_similarity(v[None], e[candidates], dim=-1)
    top = torch.topk(sims, k)
    g = torch.softmax(top.values / tau, 0)
    glob = (g[:, None] * e[[candidates[i] for i in top.indices]]).sum(0)
    return w_local * local + (1 - w_local) * glob


def test_tokenadapt_rows_follow_the_rule(old, new_tok):
    result = transplant(old, new_tok, "tokenadapt")
    new = _new_ids(old, new_tok)
    assert result.sources["local+global"] == len(new) > 50
    rows = _rows(result.model)
    for j in new[:: max(1, len(new) // 6)]:
        torch.testing.assert_close(rows[j], _reference_tokenadapt(old, new_tok, j),
                                   atol=1e-5, rtol=1e-4)


def test_baselines(old, new_tok):
    new = _new_ids(old, new_tok)
    e = _rows(old)
    info, new_info = token_bytes(old.tokenizer), token_bytes(new_tok)
    mean = _rows(transplant(old, new_tok, "mean").model)
    torch.testing.assert_close(mean[new], e.mean(0).expand(len(new), -1))
    sub = _rows(transplant(old, new_tok, "subword_mean").model)
    for j in new[:10]:
        ids = old_pieces(old.tokenizer, info, new_info.data[j])
        torch.testing.assert_close(sub[j], e[ids].mean(0))
    rand_a = _rows(transplant(old, new_tok, "random", seed=1).model)
    rand_b = _rows(transplant(old, new_tok, "random", seed=1).model)
    rand_c = _rows(transplant(old, new_tok, "random", seed=2).model)
    assert torch.equal(rand_a, rand_b) and not torch.equal(rand_a[new], rand_c[new])
    # per-dimension statistics, not one scalar for all dimensions
    std = rand_a[new].std(0)
    assert torch.corrcoef(torch.stack([std, e.std(0)]))[0, 1] > 0.5


def test_model_config_trainable_and_original_untouched(old, new_tok):
    before = _rows(old).clone()
    result = transplant(old, new_tok, "tokenadapt")
    hf = result.model.hf_model
    assert torch.equal(_rows(old), before) and old.vocab_size == 1024
    assert hf.config.vocab_size == len(new_tok) == result.model.vocab_size
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (1, 2, 0)
    assert hf.generation_config.eos_token_id == 2
    assert all(p.requires_grad for p in hf.parameters())
    assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight


def test_identity_transplant_keeps_the_model(old, docs):
    result = transplant(old, old.tokenizer, "tokenadapt")
    assert result.sources == {"shared": 1021, "special": 3}
    ids = torch.tensor([old.encode(docs[0][:200], add_bos=True)])
    torch.testing.assert_close(result.model.forward(ids).logits, old.forward(ids).logits)
    assert bits_per_byte(result.model, docs[:3]) == pytest.approx(bits_per_byte(old, docs[:3]))


def test_untied_head_rows_made_from_the_old_head(tmp_path, new_tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tokenwise.models import builtin_path

    tok = AutoTokenizer.from_pretrained(builtin_path("tw-small"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    model.lm_head.weight.data.normal_()
    model.save_pretrained(tmp_path / "old")
    tok.save_pretrained(tmp_path / "old")
    lm = load(tmp_path / "old")
    result = transplant(lm, new_tok, "subword_mean")
    hf = result.model.hf_model
    head, emb = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
    assert head.data_ptr() != emb.data_ptr() and head.shape == emb.shape == (len(new_tok), 32)
    old_head = lm.hf_model.lm_head.weight.detach()
    info, new_info = token_bytes(lm.tokenizer), token_bytes(new_tok)
    shared = new_tok.convert_tokens_to_ids("Ġthe")
    assert torch.equal(head[shared], old_head[tok.convert_tokens_to_ids("Ġthe")])
    for j in _new_ids(lm, new_tok)[:5]:
        ids = old_pieces(lm.tokenizer, info, new_info.data[j])
        torch.testing.assert_close(head[j], old_head[ids].mean(0))
        torch.testing.assert_close(emb[j], lm.hf_model.model.embed_tokens.weight[ids].mean(0))


def test_saved_directory_reloads_everywhere(old, new_tok, tmp_path):
    result = transplant(old, new_tok, "tokenadapt", out=tmp_path / "moved")
    path = result.path
    assert path == tmp_path / "moved"
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    record = json.loads((path / "transplant.json").read_text())
    assert record["init"] == "tokenadapt" and record["new_vocab"] == 800
    text = "The code of Zeipeth is 960."
    ids = torch.tensor([result.model.encode(text, add_bos=True)])
    expected = result.model.forward(ids).logits
    again = load(path)
    assert again.tokenizer(text)["input_ids"] == new_tok(text)["input_ids"]
    torch.testing.assert_close(again.forward(ids).logits, expected)
    plain_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    plain = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert plain_tok(text)["input_ids"] == ids[0].tolist()
    torch.testing.assert_close(plain(ids).logits, expected)
    assert Tokenizer.from_file(str(path / "tokenizer.json")).encode(text).ids == ids[0].tolist()


def test_custom_embedder_and_bad_input(old, new_tok):
    def embed(texts):  # a crude character-count embedder: any text -> vector will do
        return [[t.count(c) + 0.1 for c in "aeioun Ts"] for t in texts]

    result = transplant(old, new_tok, "tokenadapt", embedder=embed)
    assert result.sources["local+global"] > 50
    assert torch.isfinite(_rows(result.model)).all()
    with pytest.raises(TokenwiseError, match="shape"):
        transplant(old, new_tok, "tokenadapt", embedder=lambda ts: [[1.0]] * (len(ts) + 1))
    with pytest.raises(TokenwiseError, match="only by init='tokenadapt'"):
        transplant(old, new_tok, "mean", embedder=embed)
    with pytest.raises(TokenwiseError, match="init='zero'"):
        transplant(old, new_tok, "zero")
    with pytest.raises(TokenwiseError, match="tau=0"):
        transplant(old, new_tok, tau=0)
    with pytest.raises(TokenwiseError, match="does not exist"):
        transplant(old, "/no/such/tokenizer")
