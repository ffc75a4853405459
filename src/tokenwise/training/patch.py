"""Install a memory-light loss into a Hugging Face causal LM: ``patch(model)``.

After ``patch(model)``, ``model(input_ids, labels=labels)`` computes its loss with
:func:`tokenwise.training.linear_ce.linear_cross_entropy` straight from the last hidden
states and ``lm_head.weight``, so the ``[tokens, vocab]`` logits are never materialised.
Without ``labels`` the model behaves exactly as before (generation is untouched).

Where we hook, and why. In transformers 5 every ``*ForCausalLM.forward`` computes
``logits = lm_head(hidden)`` (then Gemma's softcap) and only then calls
``self.loss_function(logits, labels, ...)``. Replacing ``loss_function`` alone cannot save
memory, because it receives logits that already exist. Copying each class's ``forward``
would drift from transformers with every release. So the patched ``forward`` runs the class's
own ``forward`` unchanged, asking it for logits at no position (``logits_to_keep`` as an
empty slice, which every one of these forwards applies to the hidden states before
``lm_head``), captures the decoder's ``last_hidden_state`` with a forward hook, and computes
the loss itself. The label handling copies transformers' ``ForCausalLMLoss``: labels shifted
left by one (or ``shift_labels`` when the caller passes it), ``ignore_index`` -100, the sum
divided by ``num_items_in_batch`` when given (gradient accumulation) and by the number of
non-ignored targets otherwise.

The loss is computed inside a call of ``lm_head`` (its ``forward`` swapped for the call), so
hooks that wrappers put on that module, such as FSDP2's unshard and reshard of a separately
sharded head, run around the loss as they would around the logits.

Losses are a small registry (:func:`register_loss`). A loss gives ``from_hidden`` (fused: it
takes the hidden states and the classifier) and/or ``from_logits`` (it needs logits). With
``fused=True`` a logits-only loss gets its logits in token chunks, each recomputed in the
backward pass (activation checkpointing), so at most one chunk of logits is alive at a time;
with ``fused=False`` every loss gets the model's full logits, computed as transformers does.

TRL. TRL 1.16's trainers give the model a "fused LM head" (``trl.trainer.utils.add_fused_lm_head``
replaces ``model.forward``) and call ``model(..., labels=..., fused_lm_head=True)``. That forward
runs the decoder itself and returns per-token ``log_probs`` (plus ``entropy``, ``is_top1``,
``label_mask``), and ``SFTTrainer.compute_loss`` trains ``-log_probs`` summed over the labelled
tokens and divided by their count (or ``num_items_in_batch``); it logs ``entropy`` and
``mean_token_accuracy`` from the other fields. Left alone, that path never reaches this module
and a patched model would silently train plain cross-entropy. So a patched model answers that
protocol itself: called with ``fused_lm_head=True`` it returns the same fields, with
``log_probs`` set to minus the patched loss of each token (for ``"ce"`` that is the token's
log-probability, as TRL computes it) and ``entropy`` and ``is_top1`` computed from the logits,
chunk by chunk, without gradient. Both orders work: ``patch(model)`` then ``SFTTrainer(model)``
(a forward pre-hook turns ``fused_lm_head=True`` into a private flag, TRL's forward then takes
its plain path, which calls the patched forward), and ``SFTTrainer(...)`` then
``patch(trainer.model)`` (the patched forward is outermost and answers directly; ``unpatch``
restores TRL's forward). Anything that replaces the forward after ``patch`` and runs the decoder
without it while gradients are on (TRL's fused head reached without the pre-hook, as PEFT's
``model.forward(...)`` calls do, or Liger's fused loss) raises a :class:`TokenwiseError` instead
of training another loss. Limits: the ``log_probs`` of a loss other than ``"ce"`` are minus that
loss, which is what SFTTrainer trains, but TRL's preference and RL trainers (DPO, KTO, GRPO,
RLOO) read them as the policy's log-probabilities, so patch with another loss only for
SFTTrainer; its ``loss_type="dft"`` weights tokens by ``exp(log_probs)``, a probability only
for ``"ce"``. ``log_sum_sq_probs`` and ``mean_logits`` are not computed (None). SFTTrainer's
``compute_loss_func`` and label smoothing take full logits from a call without labels, so
with them their loss is trained, not the patched one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokenwise import signals
from tokenwise.errors import TokenwiseError

__all__ = [
    "KNOWN_MODEL_CLASSES",
    "LOSSES",
    "LossSpec",
    "patch",
    "patched_loss",
    "register_loss",
    "unpatch",
]

# transformers class names whose forward has the shape this module relies on (decoder ->
# slice_logits_to_keep -> lm_head -> optional final_logit_softcapping -> loss_function).
KNOWN_MODEL_CLASSES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
)

_STATE_ATTR = "_tokenwise_patch"
# What the forward pre-hook turns TRL's ``fused_lm_head=True`` into, so that TRL's own forward,
# when it wraps ours, takes its plain path down to the patched forward.
_FUSED_FLAG = "_tokenwise_fused_lm_head"
# Rows of logits per chunk for logits losses: 2**22 float32 logits (16 MiB) per chunk, as
# linear_ce's blocks: a loss makes several chunk-sized temporaries (softmax, its gradient).
_CHUNK_LOGITS = 2**22


@dataclass(frozen=True)
class LossSpec:
    """A loss that :func:`patch` can install.

    Args:
        name: the registry name (``patch(model, loss=name)``).
        from_hidden: fused form, ``(hidden (n, H), weight (V, H), bias (V,) | None,
            targets (n,), *, softcap, ignore_index, state, **options) -> sum over tokens``
            (a 0-d tensor). Used when ``fused=True``. Under TRL's fused LM head (see the module
            docstring) it is called with ``reduction="none"`` and must return per-token losses
            ``(n,)``, 0 at ignored targets; one without a ``reduction`` parameter is refused there.
        from_logits: logits form, ``(logits (n, V) float32 after softcap, targets (n,), *,
            ignore_index, state, **options) -> per-token losses (n,)``, 0 at ignored targets.
            Each token's loss must depend on its own row only, so chunking over tokens is exact.
        prepare: ``(model, **options) -> state``, run once at patch time (e.g. a frozen copy
            of the output embedding); its result is passed to the loss as ``state``.
    """

    name: str
    from_hidden: Callable[..., torch.Tensor] | None = None
    from_logits: Callable[..., torch.Tensor] | None = None
    prepare: Callable[..., Any] | None = None


LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str,
    *,
    from_hidden: Callable[..., torch.Tensor] | None = None,
    from_logits: Callable[..., torch.Tensor] | None = None,
    prepare: Callable[..., Any] | None = None,
) -> LossSpec:
    """Add a loss to the registry :func:`patch` installs from.

    Args:
        name: the name ``patch(model, loss=name)`` will take; must be new.
        from_hidden: the fused form (see :class:`LossSpec`).
        from_logits: the per-token logits form (see :class:`LossSpec`).
        prepare: run once at patch time; its result reaches the loss as ``state``.

    Returns:
        The registered :class:`LossSpec`.

    Example:
        >>> import torch.nn.functional as F
        >>> spec = register_loss("doc-ce", from_logits=lambda logits, targets, *, ignore_index,
        ...     state: F.cross_entropy(logits, targets, ignore_index=ignore_index,
        ...     reduction="none"))
        >>> spec.name, "doc-ce" in LOSSES
        ('doc-ce', True)
        >>> _ = LOSSES.pop("doc-ce")
    """
    if not isinstance(name, str) or not name:
        raise TokenwiseError(f"loss name must be a non-empty string, got {name!r}")
    if name in LOSSES:
        raise TokenwiseError(f"loss {name!r} is already registered; registered: {sorted(LOSSES)}")
    if from_hidden is None and from_logits is None:
        raise TokenwiseError(f"loss {name!r} needs from_hidden, from_logits or both")
    spec = LossSpec(name, from_hidden=from_hidden, from_logits=from_logits, prepare=prepare)
    LOSSES[name] = spec
    return spec


# ---------------------------------------------------------------------------------------------
# The built-in losses


def _ce_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    softcap: float | None,
    ignore_index: int,
    state: Any,
    reduction: str = "sum",
    **options: Any,
) -> torch.Tensor:
    return _linear_ce()(hidden, weight, targets, bias=bias, ignore_index=ignore_index,
                        softcap=softcap, reduction=reduction, **options)


def _ce_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int, state: Any
) -> torch.Tensor:
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")  # (n,)


def _emo_prepare(model: nn.Module, **options: Any) -> torch.Tensor:
    _emo()  # fail at patch time, not at the first step, if the EMO module is missing
    from tokenwise.training.emo import frozen_embedding

    # EMO's cost embedding is the output embedding as it was before fine-tuning.
    return frozen_embedding(model)  # (V, H)


def _emo_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int, state: torch.Tensor,
    **options: Any,
) -> torch.Tensor:
    embedding = state.to(device=logits.device)
    return _emo()(logits, targets, embedding, ignore_index=ignore_index, reduction="none",
                    **options)


def _linear_ce() -> Callable[..., torch.Tensor]:
    from tokenwise.training.linear_ce import linear_cross_entropy

    return linear_cross_entropy


def _emo() -> Callable[..., torch.Tensor]:
    try:
        from tokenwise.training.emo import emo_loss
    except ImportError as exc:
        raise TokenwiseError("loss 'emo' needs tokenwise.training.emo, which is missing") from exc
    return emo_loss


_ce_from_hidden.options_of = _linear_ce  # type: ignore[attr-defined]
_emo_from_logits.options_of = _emo  # type: ignore[attr-defined]
register_loss("ce", from_hidden=_ce_from_hidden, from_logits=_ce_from_logits)
register_loss("emo", from_logits=_emo_from_logits, prepare=_emo_prepare)


# ---------------------------------------------------------------------------------------------
# patch / unpatch


@dataclass
class _PatchState:
    spec: LossSpec
    fused: bool
    options: dict[str, Any]
    state: Any
    chunk_size: int | None
    forward: Any = None  # the instance forward patch installed
    previous_forward: Any = None  # the one it replaced (e.g. TRL's): unpatch restores it
    hooks: list[Any] = field(default_factory=list)  # handles of the pre-hooks, removed by unpatch
    depth: int = 0  # patched forwards running now: the decoder guard lets their decoder calls pass


def _fused_head_output_class() -> type:
    """The output of a patched model called with TRL's ``fused_lm_head=True``.

    The fields of TRL's ``FusedCausalLMOutput`` (``trl.trainer.utils``), which TRL reads by name.
    Built on first use so that importing this module does not import transformers.
    """
    global _FusedHeadOutput
    if _FusedHeadOutput is None:
        from transformers.utils import ModelOutput

        @dataclass
        class FusedHeadOutput(ModelOutput):
            loss: torch.Tensor | None = None
            log_probs: torch.Tensor | None = None
            entropy: torch.Tensor | None = None
            log_sum_sq_probs: torch.Tensor | None = None
            mean_logits: torch.Tensor | None = None
            is_top1: torch.Tensor | None = None
            label_mask: torch.Tensor | None = None
            aux_loss: torch.Tensor | None = None

        _FusedHeadOutput = FusedHeadOutput
    return _FusedHeadOutput


_FusedHeadOutput: type | None = None


def _known_classes() -> tuple[type, ...]:
    import transformers

    return tuple(c for name in KNOWN_MODEL_CLASSES if (c := getattr(transformers, name, None)))


def _check_options(fn: Callable[..., Any], options: dict[str, Any], where: str) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        options_of = getattr(fn, "options_of", None)  # where its **options end up
        if options_of is None:
            return
        params = inspect.signature(options_of()).parameters
    fixed = {"e", "c", "targets", "bias", "ignore_index", "softcap", "reduction", "shift",
             "return_lse", "return_entropy", "state", "hidden", "weight", "logits", "embedding"}
    allowed = sorted(n for n, p in params.items() if n not in fixed
                     and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise TokenwiseError(f"unknown option(s) {bad} for {where}; allowed: {allowed}")


def patch(
    model: nn.Module,
    *,
    loss: str = "ce",
    fused: bool = True,
    chunk_size: int | None = None,
    **loss_options: Any,
) -> nn.Module:
    """Make ``model(input_ids, labels=...)`` compute its loss without materialising logits.

    Supported: the transformers classes in :data:`KNOWN_MODEL_CLASSES` (Llama, Qwen2, Mistral,
    Gemma, Gemma 2, Gemma 3 text). Patch before wrapping the model in DDP/FSDP. The model is
    changed in place (an instance-level ``forward``) and returned; :func:`unpatch` undoes it.
    Patching a patched model replaces the loss.

    With ``labels`` and ``fused=True``, the returned ``logits`` hold no positions
    (shape ``(batch, 0, vocab)``): the point is not to compute them. Call the model without
    ``labels`` for logits. With ``fused=False`` the logits are computed as usual and the
    chosen loss is applied to them. Gemma's ``final_logit_softcapping``, ``logits_to_keep``,
    ``shift_labels``, ``ignore_index`` and ``num_items_in_batch`` act as in transformers.

    TRL's trainers (``SFTTrainer``) call the model with ``fused_lm_head=True``; the patched
    model answers with TRL's fields, ``log_probs`` being minus the patched per-token loss, so
    SFTTrainer trains (and logs) this loss, and its ``entropy`` and ``mean_token_accuracy``
    are computed from the logits chunk by chunk. Patch before or after building the trainer
    (``patch(trainer.model)``); see the module docstring for the limits (SFT only for losses
    other than ``"ce"``).

    Args:
        model: a transformers causal LM of a known class, with a plain ``nn.Linear`` head.
        loss: a name in :data:`LOSSES` (``"ce"``, ``"emo"``, or one added with
            :func:`register_loss`).
        fused: compute the loss from the hidden states (``"ce"``: the fused linear
            cross-entropy; logits losses: chunked, recomputed logits) instead of full logits.
        chunk_size: tokens per logits chunk for logits losses when ``fused``; default keeps a
            chunk at about 2**22 logits.
        **loss_options: passed to the loss (for ``"ce"``: options of ``linear_cross_entropy``
            such as ``filter_eps``; for ``"emo"``: e.g. ``mix_mle``).

    Returns:
        The same ``model``, patched.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
        ...                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        >>> model = patch(LlamaForCausalLM(cfg).eval())
        >>> ids = torch.randint(0, 50, (2, 7))
        >>> out = model(ids, labels=ids)
        >>> tuple(out.logits.shape), bool(torch.isfinite(out.loss))
        ((2, 0, 50), True)
        >>> tuple(unpatch(model)(ids, labels=ids).logits.shape)
        (2, 7, 50)
    """
    known = _known_classes()
    if not isinstance(model, known):
        raise TokenwiseError(
            f"patch does not know model class {type(model).__name__!r}; known classes: "
            f"{list(KNOWN_MODEL_CLASSES)} (patch the bare model before wrapping it in DDP/FSDP)")
    if loss not in LOSSES:
        raise TokenwiseError(f"unknown loss {loss!r}; registered losses: {sorted(LOSSES)}")
    if not isinstance(fused, bool):
        raise TokenwiseError(f"fused must be True or False, got {fused!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise TokenwiseError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise TokenwiseError(
            f"patch needs the output head to be a plain nn.Linear, got {type(head).__name__} "
            "(merge adapters on lm_head first)")
    spec = LOSSES[loss]
    if fused:
        fn = spec.from_hidden or spec.from_logits
    else:
        fn = spec.from_logits
        if fn is None:
            raise TokenwiseError(f"loss {loss!r} has only a fused form; use fused=True")
    _check_options(fn, loss_options, f"loss {loss!r} (fused={fused})")
    state = spec.prepare(model, **loss_options) if spec.prepare else None

    unpatch(model)
    patch_state = _PatchState(spec, fused, dict(loss_options), state, chunk_size)
    original = type(model).forward
    forward = functools.partial(_patched_forward, _bound_of=model)
    functools.update_wrapper(forward, original)
    # generate() reads self.forward's parameters (logits_to_keep, attention_mask, model
    # kwargs), so the patched forward shows the original's signature, without self.
    forward.__signature__ = _signature(type(model)).replace(
        parameters=list(_signature(type(model)).parameters.values())[1:])
    patch_state.forward = forward
    patch_state.previous_forward = model.__dict__.get("forward")  # e.g. TRL's fused LM head
    # Partials bound to the model, not closures, so that copy.deepcopy rebinds them to the copy.
    patch_state.hooks = [
        model.register_forward_pre_hook(_translate_fused_flag, with_kwargs=True),
        model.base_model.register_forward_pre_hook(functools.partial(_guard_decoder, model)),
    ]
    setattr(model, _STATE_ATTR, patch_state)
    model.forward = forward
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the model's loss is transformers' again. A no-op if not patched.

    An instance ``forward`` that the patch replaced (TRL's fused LM head, when the trainer was
    built before :func:`patch`) comes back. A wrapper installed over the patched forward after
    :func:`patch` (TRL's, when the trainer was built after) stays; the patched forward inside it
    then passes every call through to the model's own ``forward``.

    Args:
        model: a model returned by :func:`patch` (or any module).

    Returns:
        The same ``model``.

    Example:
        >>> from torch import nn
        >>> unpatch(nn.Linear(2, 2)).__class__.__name__
        'Linear'
    """
    state = model.__dict__.pop(_STATE_ATTR, None)
    if state is None:
        return model
    for handle in state.hooks:
        handle.remove()
    if model.__dict__.get("forward") is state.forward:
        if state.previous_forward is None:
            del model.__dict__["forward"]
        else:
            model.__dict__["forward"] = state.previous_forward
    return model


def patched_loss(model: nn.Module) -> str | None:
    """The name of the loss :func:`patch` installed in ``model``, or None if not patched.

    Args:
        model: any module.

    Returns:
        The loss name, or None.

    Example:
        >>> from torch import nn
        >>> patched_loss(nn.Linear(2, 2)) is None
        True
    """
    state = model.__dict__.get(_STATE_ATTR)
    return state.spec.name if state is not None else None


# ---------------------------------------------------------------------------------------------
# The patched forward


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.forward)  # (self, input_ids, ..., **kwargs)


def _translate_fused_flag(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Forward pre-hook: TRL's ``fused_lm_head=True`` becomes the patch's private flag.

    When TRL's fused forward wraps the patched one (the trainer was built after ``patch``), the
    flag makes it take its plain path, which calls the patched forward with the labels.
    """
    if not kwargs.get("fused_lm_head"):
        return None
    kwargs = {k: v for k, v in kwargs.items() if k != "fused_lm_head"}
    kwargs[_FUSED_FLAG] = True
    return args, kwargs


def _guard_decoder(model: nn.Module, module: nn.Module, args: tuple[Any, ...]) -> None:
    """Decoder pre-hook: refuse a training forward that replaced the patched one and skips it."""
    state = model.__dict__.get(_STATE_ATTR)
    if (state is None or state.depth > 0 or not torch.is_grad_enabled()
            or model.__dict__.get("forward") is state.forward):
        return
    raise TokenwiseError(
        f"the model's forward was replaced after patch(model, loss={state.spec.name!r}) by one "
        "that runs the decoder without the patched loss (TRL's fused LM head called as "
        "model.forward(...), as PEFT models do, or Liger's fused loss), so another loss would "
        "be trained; call patch() after that wrapper is installed (with TRL: "
        "patch(trainer.model) or patch(trainer.model.get_base_model()) after building the "
        "trainer), or unpatch() the model")


def _patched_forward(*args: Any, _bound_of: nn.Module, **kwargs: Any) -> Any:
    model = _bound_of
    state: _PatchState | None = model.__dict__.get(_STATE_ATTR)
    if state is None:  # unpatched, while a wrapper installed after patch() still calls us
        return type(model).forward(model, *args, **kwargs)
    state.depth += 1
    try:
        return _run_patched(model, state, args, kwargs)
    finally:
        state.depth -= 1


def _run_patched(model: nn.Module, state: _PatchState, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
    original = type(model).forward
    # TRL's protocol: directly (the patched forward is outermost) or via the pre-hook's flag
    trl_head = bool(kwargs.pop("fused_lm_head", False)) | bool(kwargs.pop(_FUSED_FLAG, False))
    names = list(_signature(type(model)).parameters)[1:]
    named = dict(kwargs)
    for name, value in zip(names, args, strict=False):  # positionals, in the original's order
        if name in named:
            raise TypeError(f"forward() got multiple values for argument {name!r}")
        named[name] = value
    if len(args) > len(names) or named.get("labels") is None:
        if trl_head:
            raise TokenwiseError("fused_lm_head=True (TRL's fused LM head) needs labels")
        return original(model, *args, **kwargs)  # no labels: exactly as before

    labels = named.pop("labels")
    logits_to_keep = named.pop("logits_to_keep", 0)
    if trl_head and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
        raise TokenwiseError(f"fused_lm_head=True (TRL's fused LM head) scores every position; "
                             f"logits_to_keep must be 0, got {logits_to_keep!r}")
    return_dict = named.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(model.config, "return_dict", True)
    ignore_index = named.get("ignore_index", -100)

    use_full_logits = not state.fused
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    hook = None if use_full_logits else model.base_model.register_forward_hook(capture)
    try:
        out = original(model, **named, labels=None, return_dict=True,
                       logits_to_keep=logits_to_keep if use_full_logits else slice(0, 0))
    finally:
        if hook is not None:
            hook.remove()

    shift_labels = named.get("shift_labels")
    if shift_labels is None:
        # transformers' ForCausalLMLoss: position t predicts label t+1, the last predicts none
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1)  # (n,)

    metrics = None  # (entropy (n,), is_top1 (n,)) for TRL's fused LM head
    if use_full_logits:
        logits = out.logits  # (B, T, V), already softcapped by the model
        targets = targets.to(logits.device)
        _check_rows(logits.shape[:-1].numel(), targets, logits_to_keep)
        flat = logits.float().reshape(-1, logits.shape[-1])  # (n, V)
        per_token = state.spec.from_logits(flat, targets, ignore_index=ignore_index,
                                           state=state.state, **state.options)  # (n,)
        if trl_head:
            metrics = _logit_metrics(flat, targets, ignore_index)
        loss_sum = per_token.sum()
    else:
        if len(captured) != 1:
            raise RuntimeError(f"expected one decoder call in forward, saw {len(captured)}")
        hidden = _keep_positions(captured[0], logits_to_keep)  # (B, T, H) or (n, H)
        hidden = hidden.reshape(-1, hidden.shape[-1])  # (n, H)
        targets = targets.to(hidden.device)
        _check_rows(hidden.shape[0], targets, logits_to_keep)
        softcap = getattr(model.config, "final_logit_softcapping", None)
        head = model.get_output_embeddings()
        result = _call_through(head, functools.partial(_loss_in_head, state, softcap,
                                                       ignore_index, trl_head), hidden, targets)
        if trl_head:
            per_token, *metrics = result
            loss_sum = per_token.sum()
        else:
            loss_sum = result

    num_items = named.get("num_items_in_batch")
    if torch.is_tensor(num_items):
        num_items = num_items.to(loss_sum.device)
    if trl_head:
        return _fused_head_output(per_token, metrics, shift_labels.shape, loss_sum, num_items,
                                  ignore_index, targets, shifted=named.get("shift_labels") is None)
    if num_items is not None:
        loss = loss_sum / num_items
    else:  # mean over the targets that count; all ignored gives nan, as in transformers
        loss = loss_sum / (targets != ignore_index).sum()
    # A new output, not `out.loss = ...`: a ModelOutput built with loss=None leaves loss out of
    # its dict, so to_tuple() would drop it; rebuilding also keeps the fields' order.
    out = type(out)(**{**out, "loss": loss})
    return out if return_dict else out.to_tuple()


def _fused_head_output(
    per_token: torch.Tensor,
    metrics: Any,
    shape: torch.Size,
    loss_sum: torch.Tensor,
    num_items: Any,
    ignore_index: int,
    targets: torch.Tensor,
    *,
    shifted: bool,
) -> Any:
    """TRL's ``FusedCausalLMOutput`` fields from per-token losses ``(n,)`` and metrics.

    TRL's fields cover ``(B, T - 1)`` positions when it shifted the labels itself and ``(B, T)``
    with ``shift_labels``; the patched forward scored ``(B, T)`` (the last position ignored).
    """
    entropy, is_top1 = metrics
    mask = targets != ignore_index  # (n,)
    fields = [per_token, entropy, is_top1, mask]
    fields = [x.reshape(shape) for x in fields]  # (B, T)
    if shifted:
        fields = [x[..., :-1] for x in fields]  # (B, T - 1)
    per_token, entropy, is_top1, mask = fields
    # TRL's loss: the sum over labelled tokens over num_items_in_batch, or over their count
    # clamped to 1, so that a batch without labelled tokens gives 0, not nan.
    denominator = num_items if num_items is not None else mask.sum().clamp(min=1)
    return _fused_head_output_class()(
        loss=loss_sum / denominator, log_probs=-per_token, entropy=entropy, is_top1=is_top1,
        label_mask=mask)


@torch.no_grad()
def _logit_metrics(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token entropy (nats) and whether the target is the arg-max, 0/False at ignored ones.

    ``logits`` ``(n, V)`` as the loss sees them (after the softcap, which keeps the arg-max);
    the arg-max is the first maximum, as TRL's ``is_top1``.
    """
    valid = targets != ignore_index  # (n,)
    entropy = signals.entropy(logits.float())  # (n,)
    return entropy.masked_fill(~valid, 0.0), (logits.argmax(-1) == targets) & valid


def _keep_positions(hidden: torch.Tensor, logits_to_keep: Any) -> torch.Tensor:
    """The hidden states at the positions ``logits_to_keep`` selects, as the model's head sees them.

    transformers' own ``slice_logits_to_keep`` where it exists (5.19 and earlier lack it, and
    vLLM pins transformers below 5.20), else :func:`_slice_to_keep`, the same rule written here.
    """
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return _slice_to_keep(hidden, logits_to_keep)
    return slice_logits_to_keep(hidden, logits_to_keep)


def _slice_to_keep(hidden: torch.Tensor, logits_to_keep: Any) -> torch.Tensor:
    """transformers' ``slice_logits_to_keep`` rule, for versions that lack the helper.

    An int ``k`` keeps the last ``k`` positions (0 keeps all); a slice or 1-D index tensor
    keeps those positions in every row; a 2-D integer tensor ``(B, k)`` keeps each row's own
    positions; a 2-D boolean mask ``(B, T)`` keeps its True positions, flattened to ``(n, H)``.
    Older model forwards apply ``hidden[:, slice(-k, None) or tensor, :]``, which is this rule
    for ints, slices and 1-D tensors.
    """
    if torch.is_tensor(logits_to_keep) and logits_to_keep.ndim == 2:
        if logits_to_keep.dtype == torch.bool:
            return hidden[logits_to_keep]  # (n, H)
        return torch.take_along_dim(hidden, logits_to_keep[..., None], dim=1)  # (B, k, H)
    if isinstance(logits_to_keep, int):
        logits_to_keep = slice(-logits_to_keep, None)  # -0 == 0: all positions
    return hidden[:, logits_to_keep, :]  # (B, k, H)


def _check_rows(rows: int, targets: torch.Tensor, logits_to_keep: Any) -> None:
    if rows != targets.numel():
        raise TokenwiseError(
            f"labels give {targets.numel()} targets but the model kept {rows} positions "
            f"(logits_to_keep={logits_to_keep!r}); labels must match the kept positions")


def _call_through(head: nn.Module, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    """Run ``fn(head, *args)`` as ``head``'s forward, so hooks on ``head`` wrap it."""
    saved = head.__dict__.get("forward")
    head.forward = functools.partial(fn, head)
    try:
        return head(*args)
    finally:
        if saved is None:
            del head.forward
        else:
            head.forward = saved


def _loss_in_head(
    state: _PatchState,
    softcap: float | None,
    ignore_index: int,
    trl_head: bool,
    head: nn.Linear,
    hidden: torch.Tensor,
    targets: torch.Tensor,
) -> Any:
    """The loss, run as ``head``'s forward: its sum (0-d), or with ``trl_head`` the tuple
    ``(per-token losses (n,), entropy (n,), is_top1 (n,))`` TRL's fused LM head returns."""
    spec = state.spec
    chunk = state.chunk_size or max(1, _CHUNK_LOGITS // head.weight.shape[0])

    def logits_of(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        logits = F.linear(h, w, b)  # (n_chunk, V), in the model's dtype as transformers does
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        return logits.float()

    if spec.from_hidden is not None:
        kwargs = dict(softcap=softcap, ignore_index=ignore_index, state=state.state,
                      **state.options)
        if not trl_head:
            return spec.from_hidden(hidden, head.weight, head.bias, targets, **kwargs)
        if "reduction" not in inspect.signature(spec.from_hidden).parameters:
            raise TokenwiseError(
                f"loss {spec.name!r}: its from_hidden takes no `reduction`, and TRL's fused LM "
                "head (fused_lm_head=True) needs per-token losses; give it reduction='none' "
                "support, or patch with fused=False")
        per_token = spec.from_hidden(hidden, head.weight, head.bias, targets, reduction="none",
                                     **kwargs)  # (n,)
        entropy, is_top1 = [], []
        with torch.no_grad():
            for start in range(0, hidden.shape[0], chunk):
                logits = logits_of(hidden[start:start + chunk], head.weight, head.bias)
                e, t1 = _logit_metrics(logits, targets[start:start + chunk], ignore_index)
                entropy.append(e)
                is_top1.append(t1)
        return per_token.reshape(-1), torch.cat(entropy), torch.cat(is_top1)

    def chunk_loss(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                   t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = logits_of(h, w, b)
        per_token = spec.from_logits(logits, t, ignore_index=ignore_index,
                                     state=state.state, **state.options)  # (n_chunk,)
        if not trl_head:
            return (per_token.sum(),)
        return per_token, *_logit_metrics(logits, t, ignore_index)

    parts = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled():  # keep no chunk's logits for backward: recompute them
            parts.append(checkpoint(chunk_loss, h, head.weight, head.bias, t,
                                    use_reentrant=False))
        else:
            parts.append(chunk_loss(h, head.weight, head.bias, t))
    if trl_head:
        if not parts:
            empty = hidden.new_zeros(0, dtype=torch.float32)
            return empty, empty, torch.zeros(0, dtype=torch.bool, device=hidden.device)
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    total = hidden.new_zeros((), dtype=torch.float32)
    for (part,) in parts:
        total = total + part
    return total
