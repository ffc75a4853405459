"""patch(model) under TRL's SFTTrainer: the patched loss is the one trained and logged.

TRL 1.16 gives the model a fused LM head and calls it with ``fused_lm_head=True``, a path that
used to skip the patch, so ``patch(model, loss="emo")`` trained plain cross-entropy. Everything
here is built locally: a tiny random Llama, a word-level tokenizer and an in-memory dataset.
"""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL (the dev extra) drives SFTTrainer in these tests")
datasets = pytest.importorskip("datasets", reason="SFTTrainer takes a datasets.Dataset")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl.trainer.utils import add_fused_lm_head  # noqa: E402

from tokenwise.errors import TokenwiseError  # noqa: E402
from tokenwise.training.emo import emo_loss, frozen_embedding  # noqa: E402
from tokenwise.training.patch import patch, unpatch  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away"]
VOCAB = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
TEXTS = ["the cat sat on a mat", "a dog ran far away", "the dog sat", "a cat ran away on the mat",
         "the mat", "far away ran the cat", "a dog sat on the cat", "on a mat"]
STEPS = 3
# fp32 on both sides: TRL's kernel and ours differ only in summation order
TOL = dict(rtol=1e-5, atol=1e-6)


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=32, pad_token_id=0, eos_token_id=1,
                         bos_token_id=1)
    return LlamaForCausalLM(config)


def trainer(model, tmp_path) -> trl.SFTTrainer:
    # One batch holds the whole dataset, so every step sees the same tokens whatever the order.
    args = trl.SFTConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no",
        max_steps=STEPS, per_device_train_batch_size=len(TEXTS), logging_steps=1,
        learning_rate=3e-2, seed=0, disable_tqdm=True, bf16=False)
    return trl.SFTTrainer(model=model, args=args, processing_class=tokenizer(),
                          train_dataset=datasets.Dataset.from_dict({"text": TEXTS}))


def logs(tr: trl.SFTTrainer) -> dict[str, list[float]]:
    """The per-step values SFTTrainer logged."""
    rows = [row for row in tr.state.log_history if "loss" in row]
    assert len(rows) == STEPS
    keys = ("loss", "grad_norm", "entropy", "mean_token_accuracy")
    return {key: [float(row[key]) for row in rows] for key in keys}


def first_batch(tr: trl.SFTTrainer) -> dict[str, torch.Tensor]:
    return next(iter(tr.get_train_dataloader()))


_RUNS: dict[str, tuple[dict[str, list[float]], dict[str, torch.Tensor]]] = {}


def run(tmp_path_factory, name: str, **patch_kwargs) -> dict[str, list[float]]:
    """Train the tiny Llama for STEPS steps, patched before building the trainer (cached)."""
    if name not in _RUNS:
        model = tiny_llama()
        if patch_kwargs:
            patch(model, **patch_kwargs)
        tr = trainer(model, tmp_path_factory.mktemp(name))
        tr.train()
        _RUNS[name] = (logs(tr), first_batch(tr))
    return _RUNS[name][0]


def test_ce_patch_trains_and_logs_what_trl_does(tmp_path_factory):
    plain = run(tmp_path_factory, "plain")
    ce = run(tmp_path_factory, "ce", loss="ce")
    for key in plain:  # loss, grad_norm, and the metrics computed from our chunked logits
        torch.testing.assert_close(torch.tensor(ce[key]), torch.tensor(plain[key]), **TOL,
                                   msg=key)
    assert min(ce["entropy"]) > 0 and max(ce["mean_token_accuracy"]) > 0


def test_emo_patch_changes_the_trained_loss(tmp_path_factory):
    ce = run(tmp_path_factory, "ce", loss="ce")
    emo = run(tmp_path_factory, "emo", loss="emo")
    # Mixed with MLE, EMO's value is the CE at the start, but its gradient is another, which
    # takes the weights elsewhere. The old code trained CE here and logged CE's numbers exactly.
    assert emo["loss"][0] == pytest.approx(ce["loss"][0], rel=1e-5)
    assert abs(emo["grad_norm"][0] - ce["grad_norm"][0]) > 0.1 * ce["grad_norm"][0]
    for e, c in zip(emo["loss"][1:], ce["loss"][1:], strict=True):
        assert abs(e - c) > 1e-4  # far beyond the 1e-6 between TRL's CE and ours


def test_pure_emo_loss_is_the_logged_loss(tmp_path_factory):
    ce = run(tmp_path_factory, "ce", loss="ce")
    emo = run(tmp_path_factory, "emo_pure", loss="emo", mix_mle=False)
    batch = _RUNS["emo_pure"][1]
    model = tiny_llama()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = emo_loss(logits[:, :-1].float(), batch["labels"][:, 1:],
                            frozen_embedding(model), mix_mle=False)
    assert emo["loss"][0] == pytest.approx(float(expected), rel=1e-5)
    assert abs(emo["loss"][0] - ce["loss"][0]) > 0.5  # distances in [0, 2], CE about 2.6


def test_patch_after_building_the_trainer(tmp_path_factory):
    before = run(tmp_path_factory, "emo", loss="emo")
    tr = trainer(tiny_llama(), tmp_path_factory.mktemp("after"))
    trl_forward = tr.model.forward
    patch(tr.model, loss="emo")
    tr.train()
    after = logs(tr)
    for key in before:
        torch.testing.assert_close(torch.tensor(after[key]), torch.tensor(before[key]), **TOL,
                                   msg=key)
    unpatch(tr.model)  # TRL's fused head is back
    assert tr.model.forward == trl_forward
    batch = first_batch(tr)
    out = tr.model(**batch, fused_lm_head=True)
    assert type(out).__name__ == "FusedCausalLMOutput"


def _batch(shift: bool):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, len(VOCAB), (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :4] = -100
    inputs = dict(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    if shift:  # as under context parallelism: pre-shifted, scored without shifting
        inputs["shift_labels"] = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    return inputs


@pytest.mark.parametrize("shift", [False, True], ids=["labels", "shift_labels"])
@pytest.mark.parametrize("order", ["patch_first", "trl_first"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "full_logits"])
def test_fused_head_fields_match_trl(shift, order, fused):
    outputs = ("log_probs", "entropy", "is_top1")
    reference = tiny_llama()
    model = copy.deepcopy(reference)
    add_fused_lm_head(reference, outputs=outputs)
    if order == "patch_first":
        patch(model, fused=fused)
        add_fused_lm_head(model, outputs=outputs)
    else:
        add_fused_lm_head(model, outputs=outputs)
        patch(model, fused=fused)
    inputs = _batch(shift)
    ref = reference(**inputs, fused_lm_head=True)
    out = model(**inputs, fused_lm_head=True)
    assert out.log_probs.shape == ref.log_probs.shape == (3, 9 if shift else 8)
    for name in ("loss", "log_probs", "entropy"):
        torch.testing.assert_close(getattr(out, name), getattr(ref, name), **TOL, msg=name)
    assert torch.equal(out.is_top1, ref.is_top1) and torch.equal(out.label_mask, ref.label_mask)
    (-out.log_probs.sum()).backward()
    (-ref.log_probs.sum()).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_head_log_probs_are_minus_the_emo_loss():
    model = tiny_llama()
    inputs = _batch(shift=False)
    plain = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    targets = inputs["labels"][:, 1:]
    # pure EMO: mixed with MLE its per-token value would be the CE, TRL's own log_probs
    expected = emo_loss(plain[:, :-1].float(), targets, frozen_embedding(model),
                        reduction="none", mix_mle=False).detach()  # (3, 8)
    patch(model, loss="emo", chunk_size=5, mix_mle=False)  # several chunks of logits
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    out = model(**inputs, fused_lm_head=True)
    torch.testing.assert_close(-out.log_probs, expected, **TOL)
    assert float(out.loss) == pytest.approx(float(expected.sum() / (targets != -100).sum()),
                                            rel=1e-5)


def test_a_forward_that_skips_the_patch_is_refused():
    model = patch(tiny_llama(), loss="emo")
    add_fused_lm_head(model)  # TRL's head over the patched forward
    inputs = _batch(shift=False)
    # PEFT calls model.forward(...), which runs no hooks: TRL's fused path would train CE
    with pytest.raises(TokenwiseError, match="replaced after patch"):
        model.forward(**inputs, fused_lm_head=True)
    with torch.no_grad():  # no training there: left to TRL
        assert model.forward(**inputs, fused_lm_head=True).log_probs.shape == (3, 8)
    unpatch(model)  # the guard goes with the patch: TRL's own loss again
    model.forward(**inputs, fused_lm_head=True).loss.backward()
    with pytest.raises(TokenwiseError, match="needs labels"):
        patch(tiny_llama())(input_ids=inputs["input_ids"], fused_lm_head=True)
