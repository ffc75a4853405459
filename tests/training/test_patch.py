"""patch(model): the fused loss inside HF causal LMs equals transformers' own loss and gradients."""

from __future__ import annotations

import copy
import importlib
import itertools
import random

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from tokenwise.errors import TokenwiseError
from tokenwise.training.patch import (
    KNOWN_MODEL_CLASSES,
    LOSSES,
    patch,
    patched_loss,
    register_loss,
    unpatch,
)

VOCAB = 101
SOFTCAP = 2.0  # small, so that capping changes the loss a lot


def _small(**extra):
    return dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                attn_implementation="eager", initializer_range=0.5, **extra)


CONFIGS = {
    "LlamaForCausalLM": ("LlamaConfig", _small()),
    "Qwen2ForCausalLM": ("Qwen2Config", _small()),
    "MistralForCausalLM": ("MistralConfig", _small(head_dim=8)),
    "GemmaForCausalLM": ("GemmaConfig", _small(head_dim=8)),
    "Gemma2ForCausalLM": ("Gemma2Config", _small(head_dim=8, final_logit_softcapping=SOFTCAP)),
    "Gemma3ForCausalLM": ("Gemma3TextConfig",
                          _small(head_dim=8, final_logit_softcapping=SOFTCAP)),
}


def build(cls_name: str, seed: int = 0) -> nn.Module:
    config_name, kwargs = CONFIGS[cls_name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(**kwargs)
    return getattr(transformers, cls_name)(config).float().train()


def batch(seed: int = 1, b: int = 3, t: int = 11):
    """Ids, a right/left padded attention mask, and labels with -100 on padding and a prefix."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)  # (B, T)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, -4:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :5] = -100  # a prompt that carries no loss
    return ids, mask, labels


def loss_and_grads(model: nn.Module, **inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same_grads(a: dict, b: dict, atol: float = 2e-6, rtol: float = 1e-4):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=name)


@pytest.fixture(scope="module", params=KNOWN_MODEL_CLASSES)
def model_pair(request):
    plain = build(request.param)
    return plain, patch(copy.deepcopy(plain))


def test_every_known_class_is_in_this_transformers():
    assert all(hasattr(transformers, name) for name in KNOWN_MODEL_CLASSES)


@pytest.mark.parametrize("num_items", [None, 37])
def test_loss_and_gradients_equal_transformers(model_pair, num_items):
    plain, patched = model_pair
    ids, mask, labels = batch()
    kw = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    ref, ref_grads = loss_and_grads(plain, input_ids=ids, attention_mask=mask, labels=labels, **kw)
    out, grads = loss_and_grads(patched, input_ids=ids, attention_mask=mask, labels=labels, **kw)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=1e-5)
    assert_same_grads(grads, ref_grads)
    assert out.logits.shape == (3, 0, VOCAB)  # no logits were made


def test_no_logits_are_kept_for_backward():
    plain = build("LlamaForCausalLM")
    patched = patch(copy.deepcopy(plain))
    ids, mask, labels = batch()

    def saved_logit_tensors(model) -> int:
        """Tensors saved for backward that are logits of the batch: (..., V), N * V entries."""
        found = []

        def pack(t):
            if t.ndim >= 2 and t.shape[-1] == VOCAB and t.numel() >= ids.numel() * VOCAB // 2:
                found.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=mask, labels=labels)
        return len(found)

    assert saved_logit_tensors(plain) > 0  # transformers keeps (B, T, V) logits
    assert saved_logit_tensors(patched) == 0


def test_num_items_in_batch_scales_the_sum(model_pair):
    _, patched = model_pair
    ids, mask, labels = batch()
    counted = int((labels[:, 1:] != -100).sum())
    mean = patched(input_ids=ids, attention_mask=mask, labels=labels).loss
    scaled = patched(input_ids=ids, attention_mask=mask, labels=labels,
                     num_items_in_batch=torch.tensor(4 * counted)).loss
    torch.testing.assert_close(scaled, mean / 4)


def test_gemma_softcap_is_applied():
    plain = build("Gemma2ForCausalLM")
    patched = patch(copy.deepcopy(plain))
    ids, mask, labels = batch()
    with torch.no_grad():
        hidden = plain.model(input_ids=ids, attention_mask=mask).last_hidden_state
        raw = plain.lm_head(hidden)[:, :-1].reshape(-1, VOCAB)  # (n, V), not capped
        capped = SOFTCAP * torch.tanh(raw / SOFTCAP)
        targets = labels[:, 1:].reshape(-1)
        want = F.cross_entropy(capped, targets)
        uncapped = F.cross_entropy(raw, targets)
        got = patched(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert abs(want - uncapped) > 0.05  # the cap matters at this scale, so the check bites


def test_no_labels_behaves_as_before(model_pair):
    plain, patched = model_pair
    ids, mask, _ = batch()
    with torch.no_grad():
        ref = plain(input_ids=ids, attention_mask=mask)
        out = patched(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(out.logits, ref.logits, atol=0, rtol=0)
        assert out.loss is None
        last = patched(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
        assert last.shape == (3, 1, VOCAB)


def test_positional_arguments_and_tuple_output():
    plain = build("LlamaForCausalLM")
    patched = patch(copy.deepcopy(plain))
    ids, mask, labels = batch()
    ref = plain(ids, mask, labels=labels).loss
    out = patched(ids, mask, None, None, None, labels, return_dict=False)
    assert isinstance(out, tuple)
    torch.testing.assert_close(out[0], ref)
    assert out[1].shape == (3, 0, VOCAB)


def test_logits_to_keep_and_shift_labels():
    plain = build("Qwen2ForCausalLM")
    patched = patch(copy.deepcopy(plain))
    ids, mask, labels = batch()
    kept = labels[:, -5:]  # labels for the kept positions, as transformers expects
    ref = plain(input_ids=ids, attention_mask=mask, labels=kept, logits_to_keep=5).loss
    got = patched(input_ids=ids, attention_mask=mask, labels=kept, logits_to_keep=5).loss
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)

    shifted = torch.roll(labels, -2, dims=1)  # any explicit alignment the caller chooses
    ref = plain(input_ids=ids, attention_mask=mask, labels=labels, shift_labels=shifted).loss
    got = patched(input_ids=ids, attention_mask=mask, labels=labels, shift_labels=shifted).loss
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_fused_false_keeps_logits_and_matches():
    plain = build("MistralForCausalLM")
    patched = patch(copy.deepcopy(plain), fused=False)
    ids, mask, labels = batch()
    ref, ref_grads = loss_and_grads(plain, input_ids=ids, attention_mask=mask, labels=labels)
    out, grads = loss_and_grads(patched, input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(out.logits, ref.logits)
    assert_same_grads(grads, ref_grads)


def test_gradient_checkpointing_and_inputs_embeds():
    plain = build("LlamaForCausalLM")
    # the name since 5.2x; 5.19 and earlier have only gradient_checkpointing_enable (which
    # later versions keep as a deprecated alias that warns)
    enable = getattr(plain, "activation_checkpointing_enable", None)
    (enable or plain.gradient_checkpointing_enable)()
    assert any(getattr(m, "gradient_checkpointing", False) for m in plain.modules())
    patched = patch(copy.deepcopy(plain))
    ids, mask, labels = batch()
    embeds = plain.get_input_embeddings()(ids).detach()
    ref, ref_grads = loss_and_grads(plain, inputs_embeds=embeds, attention_mask=mask,
                                    labels=labels)
    out, grads = loss_and_grads(patched, inputs_embeds=embeds, attention_mask=mask,
                                labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=1e-5)
    assert_same_grads(grads, ref_grads)


def test_bf16_model_is_at_least_as_accurate_as_transformers():
    plain = build("Gemma2ForCausalLM").to(torch.bfloat16)
    patched = patch(copy.deepcopy(plain))
    ids, mask, labels = batch()
    with torch.no_grad():
        hidden = plain.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = hidden[:, :-1].double() @ plain.lm_head.weight.double().T  # exact products
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        exact = F.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
        hf = plain(input_ids=ids, attention_mask=mask, labels=labels).loss
        ours = patched(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert ours.dtype == torch.float32
    # the reference's rule: no further from the exact value than the plain low-precision path
    assert abs(exact - ours.double()) <= abs(exact - hf.double()) + 1e-4


def test_all_ignored_gives_nan_like_transformers():
    plain = build("LlamaForCausalLM")
    patched = patch(copy.deepcopy(plain))
    ids, _, _ = batch()
    labels = torch.full_like(ids, -100)
    assert torch.isnan(plain(input_ids=ids, labels=labels).loss)
    assert torch.isnan(patched(input_ids=ids, labels=labels).loss)


def test_generate_is_unchanged():
    plain = build("LlamaForCausalLM").eval()
    patched = patch(copy.deepcopy(plain))
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(patched.generate(ids, **kw), plain.generate(ids, **kw))


def test_unpatch_and_repatch():
    model = build("LlamaForCausalLM")
    ids, _, labels = batch()
    patch(model)
    assert patched_loss(model) == "ce" and model(ids, labels=labels).logits.shape[1] == 0
    patch(model, fused=False)  # patching again replaces the loss
    assert model(ids, labels=labels).logits.shape[1] == ids.shape[1]
    unpatch(model)
    assert patched_loss(model) is None and "forward" not in model.__dict__
    assert model(ids, labels=labels).logits.shape[1] == ids.shape[1]


# ---------------------------------------------------------------------------------------------
# Losses that need logits: the chunked, recomputed path


def focal_per_token(logits, targets, *, ignore_index, state, gamma=2.0):
    """A loss that is not CE, computed from logits: (1 - p_y)^gamma * CE per token."""
    ce = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")  # (n,)
    return (1 - torch.exp(-ce)) ** gamma * ce


@pytest.fixture()
def focal():
    spec = register_loss("test-focal", from_logits=focal_per_token)
    yield spec
    LOSSES.pop("test-focal")


@pytest.mark.parametrize("cls_name", ["Gemma2ForCausalLM", "LlamaForCausalLM"])
def test_logits_loss_chunked_equals_direct(focal, cls_name):
    plain = build(cls_name)
    chunked = patch(copy.deepcopy(plain), loss="test-focal", chunk_size=4, gamma=1.5)
    full = patch(copy.deepcopy(plain), loss="test-focal", fused=False, gamma=1.5)
    ids, mask, labels = batch()

    plain.zero_grad()
    logits = plain(input_ids=ids, attention_mask=mask).logits[:, :-1].reshape(-1, VOCAB)
    targets = labels[:, 1:].reshape(-1)
    want = focal_per_token(logits.float(), targets, ignore_index=-100, state=None,
                           gamma=1.5).sum() / (targets != -100).sum()
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in plain.named_parameters()}

    for model in (chunked, full):
        out, grads = loss_and_grads(model, input_ids=ids, attention_mask=mask, labels=labels)
        torch.testing.assert_close(out.loss, want, atol=1e-6, rtol=1e-5)
        assert_same_grads(grads, want_grads)
    assert focal_per_token(logits, targets, ignore_index=-100, state=None).sum() != (
        F.cross_entropy(logits, targets, reduction="sum"))  # it is not plain CE


def test_emo_loss_installs():
    emo = pytest.importorskip("tokenwise.training.emo")
    plain = build("LlamaForCausalLM")
    embedding = emo.frozen_embedding(plain)
    fused = patch(copy.deepcopy(plain), loss="emo", chunk_size=5)
    full = patch(copy.deepcopy(plain), loss="emo", fused=False)
    ids, mask, labels = batch()
    logits = plain(input_ids=ids, attention_mask=mask).logits[:, :-1].reshape(-1, VOCAB)
    want = emo.emo_loss(logits, labels[:, 1:].reshape(-1), embedding)
    want.backward()
    want_grads = {n: p.grad.clone() for n, p in plain.named_parameters()}
    for model in (fused, full):
        out, grads = loss_and_grads(model, input_ids=ids, attention_mask=mask, labels=labels)
        torch.testing.assert_close(out.loss, want, atol=1e-6, rtol=1e-5)
        assert_same_grads(grads, want_grads)
    # the cost embedding was frozen at patch time: training the head does not move it
    with torch.no_grad():
        fused.lm_head.weight.add_(1.0)
    assert torch.equal(fused.__dict__["_tokenwise_patch"].state, embedding)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_class_lists_known_ones():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with pytest.raises(TokenwiseError, match=r"GPT2LMHeadModel.*LlamaForCausalLM"):
        patch(gpt2)
    with pytest.raises(TokenwiseError, match="Linear"):
        patch(nn.Linear(3, 3))


def test_bad_arguments():
    model = build("LlamaForCausalLM")
    with pytest.raises(TokenwiseError, match=r"unknown loss 'focal'.*'ce'"):
        patch(model, loss="focal")
    with pytest.raises(TokenwiseError, match=r"unknown option.*'gamma'"):
        patch(model, gamma=2.0)
    with pytest.raises(TokenwiseError, match="chunk_size"):
        patch(model, chunk_size=0)
    with pytest.raises(TokenwiseError, match="already registered"):
        register_loss("ce", from_logits=focal_per_token)
    model.lm_head = nn.Sequential(nn.Linear(16, VOCAB))
    with pytest.raises(TokenwiseError, match=r"plain nn\.Linear"):
        patch(model)
    assert patched_loss(model) is None


def test_labels_not_matching_kept_positions():
    model = patch(build("LlamaForCausalLM"))
    ids, _, labels = batch()
    with pytest.raises(TokenwiseError, match="logits_to_keep=5"):
        model(input_ids=ids, labels=labels, logits_to_keep=5)


# ---------------------------------------------------------------------------------------------
# The built-in model: training with the patched loss follows plain training


def test_tw_small_training_steps_match(testbed):
    from tokenwise.models import load

    base = load("tw-small").hf_model
    plain = copy.deepcopy(base).float().train()
    patched = patch(copy.deepcopy(base).float().train())
    tok = load("tw-small").tokenizer
    texts = list(itertools.islice(testbed.fact_world.documents(random.Random(0)), 4))
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=48)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    losses = {"plain": [], "patched": []}
    for name, model in (("plain", plain), ("patched", patched)):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(4):
            opt.zero_grad()
            loss = model(**enc, labels=labels).loss
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["plain"][-1] < losses["plain"][0]  # the steps do train
    torch.testing.assert_close(torch.tensor(losses["patched"]), torch.tensor(losses["plain"]),
                               atol=1e-4, rtol=1e-4)


# transformers before 5.20 has no slice_logits_to_keep (vLLM pins < 5.20): patch slices the
# hidden states with its own copy of the rule there. These tests run that copy on any version.

def _naive_keep(hidden: torch.Tensor, keep) -> torch.Tensor:
    """Position by position, what each kind of logits_to_keep selects."""
    b, t, _ = hidden.shape
    if isinstance(keep, int):
        cols = range(t - keep, t) if keep else range(t)
        return torch.stack([hidden[:, c] for c in cols], dim=1)
    if isinstance(keep, slice):
        cols = range(t)[keep]
        return hidden.new_zeros(b, 0, hidden.shape[-1]) if not cols else torch.stack(
            [hidden[:, c] for c in cols], dim=1)
    if keep.ndim == 1:
        return torch.stack([hidden[:, int(c)] for c in keep], dim=1)
    if keep.dtype == torch.bool:
        return torch.stack([hidden[r, c] for r in range(b) for c in range(t) if keep[r, c]])
    return torch.stack([torch.stack([hidden[r, int(c)] for c in keep[r]]) for r in range(b)])


KEEPS = {
    "int0": 0, "int3": 3, "int_all": 7, "empty_slice": slice(0, 0), "slice": slice(1, 5),
    "1d": torch.tensor([0, 4, 6]), "2d_int": torch.tensor([[0, 2], [5, 6]]),
    "2d_bool": torch.tensor([[True, False, True, False, False, False, True],
                             [False] * 6 + [True]]),
}


@pytest.mark.parametrize("name", list(KEEPS))
def test_own_slice_rule_matches_naive_and_transformers(name):
    from tokenwise.training.patch import _slice_to_keep

    hidden = torch.randn(2, 7, 4, generator=torch.Generator().manual_seed(0))  # (B, T, H)
    keep = KEEPS[name]
    got = _slice_to_keep(hidden, keep)
    torch.testing.assert_close(got, _naive_keep(hidden, keep), rtol=0, atol=0)
    helper = getattr(transformers.modeling_utils, "slice_logits_to_keep", None)
    if helper is not None:  # 5.20 and later: the copy must agree with the original
        torch.testing.assert_close(got, helper(hidden, keep), rtol=0, atol=0)


def test_patch_without_transformers_slice_helper(monkeypatch):
    # the package exports the function patch under the module's name: fetch the module itself
    patch_module = importlib.import_module("tokenwise.training.patch")
    plain = build("LlamaForCausalLM")  # first: on 5.20+ its module imports the helper
    patched = patch(copy.deepcopy(plain))
    monkeypatch.delattr(transformers.modeling_utils, "slice_logits_to_keep", raising=False)
    calls = []
    own = patch_module._slice_to_keep
    monkeypatch.setattr(patch_module, "_slice_to_keep",
                        lambda hidden, keep: calls.append(keep) or own(hidden, keep))
    ids, mask, labels = batch()
    for keep, kept in ((0, labels), (5, labels[:, -5:]),
                       (torch.tensor([1, 2, 8, 9]), labels[:, [1, 2, 8, 9]])):
        ref = plain(input_ids=ids, attention_mask=mask, labels=kept, logits_to_keep=keep).loss
        got = patched(input_ids=ids, attention_mask=mask, labels=kept, logits_to_keep=keep).loss
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    assert len(calls) == 3  # the fallback did the slicing each time
