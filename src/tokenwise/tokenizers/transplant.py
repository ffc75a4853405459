"""Move a model onto a new tokenizer: new embedding rows from the old ones, no retraining.

TokenAdapt (the seed paper "Achieving Tokenizer Flexibility in Language Models through
Heuristic Adaptation and Supertoken Learning") sets each new token's embedding from:

- **shared tokens**: copied. A token is shared when it decodes to the same bytes as an old
  token (so byte-level ``Ġcity`` and SentencePiece ``▁city`` meet); special tokens match by
  content, else by role (BOS to BOS, EOS to EOS, pad to pad).
- **local estimate**: the old tokenizer spells the token's text as pieces ``p_i``; with
  ``c_i`` the cosine between the token's and the piece's embedder vectors, the weights are
  ``softmax(((softmax(c) + len(p_i) / len(token)) / 2) / tau)`` and the estimate is the
  weighted sum of the pieces' old embeddings (lengths in bytes).
- **global estimate**: the ``k`` old tokens nearest to the token by the embedder, weighted
  by ``softmax(sim / tau)``.
- **final**: ``local_weight * local + (1 - local_weight) * global`` (0.7 and 0.3, tau 0.3);
  whichever estimate exists when only one does; a draw from the old rows' per-dimension mean
  and standard deviation when neither does.

The embedder may be any text -> vector model (e.g. all-MiniLM-L6-v2). The default is built
from the old model's own input embeddings, which, unlike a general sentence model, know the
model's own vocabulary (invented names included): a text's vector is the mean of its old
pieces' embeddings, and an old token's vector is its own embedding.

Baselines (the same shared-token copying; only the other rows differ): ``"mean"`` (every
other row the mean old row), ``"subword_mean"`` (the plain mean of the old pieces, as ReTok)
and ``"random"`` (per-dimension normal draws). An untied output head is initialised the same
way from the old head's rows. Every parameter of the result is trainable.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokenwise.errors import TokenwiseError
from tokenwise.models import LanguageModel
from tokenwise.progress import progress_bar
from tokenwise.tokenizers.saving import save_model_dir
from tokenwise.tokenizers.vocab import TokenBytes, old_pieces, token_bytes

__all__ = ["INITS", "OldEmbeddingEmbedder", "Transplant", "transplant"]

INITS = ("tokenadapt", "mean", "subword_mean", "random")
_ROLES = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


class OldEmbeddingEmbedder:
    """An embedder made of a model's own input embeddings.

    A text's vector is the mean of the embeddings of the pieces the model's tokenizer spells
    it with; the vector of old token ``i`` is its embedding row (:attr:`token_matrix`).

    Args:
        tokenizer: the old tokenizer.
        embeddings: its ``(V, D)`` input embedding matrix.

    Example:
        >>> from tokenwise.models import load
        >>> lm = load("tw-small")
        >>> emb = OldEmbeddingEmbedder(lm.tokenizer, lm.hf_model.get_input_embeddings().weight)
        >>> emb(["Q:", " born"]).shape
        (2, 128)
    """

    def __init__(self, tokenizer: Any, embeddings: Tensor) -> None:
        self.tokenizer = tokenizer
        self.info = token_bytes(tokenizer)
        self.token_matrix = embeddings.detach().float().cpu()  # (V, D)

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.token_matrix.shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            ids = old_pieces(self.tokenizer, self.info, text.encode())
            ids = [i for i in ids if i < self.token_matrix.shape[0]]
            if ids:
                out[row] = self.token_matrix[ids].mean(0).numpy()
        return out


@dataclass
class Transplant:
    """The transplanted model and how each new row was made.

    Attributes:
        model: the model with the new tokenizer (a :class:`LanguageModel`, eval mode).
        path: where it was saved (None when ``out`` was not given).
        sources: how many new rows came from each source (``shared``, ``special``,
            ``local+global``, ``local``, ``global``, ``mean``, ``subword_mean``, ``random``).
        init: the initialisation used.
    """

    model: LanguageModel
    path: Path | None
    sources: dict[str, int] = field(default_factory=dict)
    init: str = "tokenadapt"


def _softmax(x: Tensor) -> Tensor:
    return torch.softmax(x.double(), dim=-1).float()


def _cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of each row of ``a`` with each row of ``b``: ``(A, B)``."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


def _nearest(vectors: Tensor, pool: Tensor, k: int, chunk: int = 256
             ) -> tuple[Tensor, Tensor]:
    """Cosine of each row of ``vectors`` with its ``k`` nearest rows of ``pool``, and their
    indices: ``(N, k)`` each, computed in chunks (``pool`` may have 250k rows)."""
    pool = torch.nn.functional.normalize(pool.float(), dim=-1)
    k = min(k, pool.shape[0])
    values, indices = [], []
    for start in range(0, vectors.shape[0], chunk):
        part = torch.nn.functional.normalize(vectors[start:start + chunk].float(), dim=-1)
        top = torch.topk(part @ pool.T, k, dim=-1)  # (n, k)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def _as_embed_fn(embedder: Any) -> Callable[[list[str]], Tensor]:
    if callable(embedder) and not hasattr(embedder, "embed"):
        fn = embedder
    elif hasattr(embedder, "embed"):
        fn = embedder.embed
    elif hasattr(embedder, "encode"):
        fn = embedder.encode
    else:
        raise TokenwiseError(f"embedder={embedder!r}: allowed None (the old model's own "
                             "embeddings), a function texts -> (N, D), or an object with "
                             ".embed or .encode")

    def embed(texts: list[str]) -> Tensor:
        if not texts:
            return torch.zeros(0, 1)
        out = torch.as_tensor(np.asarray(fn(list(texts)), dtype=np.float32))
        if out.ndim != 2 or out.shape[0] != len(texts):
            raise TokenwiseError(f"the embedder returned shape {tuple(out.shape)} for "
                                 f"{len(texts)} texts; allowed (N, D)")
        return out

    return embed


def _match_special(new_tok: Any, new_info: TokenBytes, old_tok: Any, old_info: TokenBytes
                   ) -> dict[int, int]:
    """New special token id -> old id, by content first, then by role."""
    old_by_content = {old_info.data[i]: i for i in range(len(old_info.data)) if old_info.special[i]}
    out: dict[int, int] = {}
    for i, special in enumerate(new_info.special):
        if special and new_info.data[i] in old_by_content:
            out[i] = old_by_content[new_info.data[i]]
    for role in _ROLES:
        new_id, old_id = getattr(new_tok, role, None), getattr(old_tok, role, None)
        if new_id is not None and new_id not in out:
            if old_id is None and role == "pad_token_id":
                old_id = old_tok.eos_token_id  # a model without a pad pads with its EOS
            if old_id is not None:
                out[int(new_id)] = int(old_id)
    return out


def _check(init: str, k: int, tau: float, local_weight: float) -> None:
    if init not in INITS:
        raise TokenwiseError(f"init={init!r}: allowed {', '.join(INITS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TokenwiseError(f"k={k!r}: allowed an integer >= 1")
    if not isinstance(tau, (int, float)) or not tau > 0:
        raise TokenwiseError(f"tau={tau!r}: allowed a number > 0")
    if not isinstance(local_weight, (int, float)) or not 0 <= local_weight <= 1:
        raise TokenwiseError(f"local_weight={local_weight!r}: allowed a number from 0 to 1")


def _load_inputs(model: Any, new_tokenizer: Any) -> tuple[LanguageModel, Any]:
    from transformers import AutoTokenizer

    from tokenwise.models import load

    lm = model if isinstance(model, LanguageModel) else load(model)
    if isinstance(new_tokenizer, (str, os.PathLike)):
        path = Path(new_tokenizer)
        if not path.is_dir():
            raise TokenwiseError(f"tokenizer directory {str(path)!r} does not exist")
        new_tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not hasattr(new_tokenizer, "backend_tokenizer"):
        raise TokenwiseError(f"new_tokenizer={type(new_tokenizer).__name__}: allowed a fast "
                             "(tokenizers-backed) Hugging Face tokenizer or its directory")
    return lm, new_tokenizer


def transplant(
    model: LanguageModel | str | os.PathLike[str],
    new_tokenizer: Any,
    init: str = "tokenadapt",
    *,
    embedder: Any = None,
    k: int = 3,
    tau: float = 0.3,
    local_weight: float = 0.7,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Transplant:
    """A copy of ``model`` that reads and writes ``new_tokenizer``'s tokens.

    The embedding matrix (and an untied output head) gets one row per new token, made as the
    module's text says; every other weight is copied unchanged. The config's ``vocab_size``
    and pad/BOS/EOS ids (and the generation config's) follow the new tokenizer. ``model``
    itself is left as it was.

    Args:
        model: a :class:`LanguageModel`, or a built-in name / local directory to load.
        new_tokenizer: a fast Hugging Face tokenizer (e.g. from :func:`tokenwise.tokenizers.train`)
            or its directory.
        init: ``"tokenadapt"``, or a baseline: ``"mean"``, ``"subword_mean"``, ``"random"``.
        embedder: for ``"tokenadapt"``: None (the old model's own input embeddings, see
            :class:`OldEmbeddingEmbedder`), or any function texts -> ``(N, D)`` vectors (or an
            object with ``embed``/``encode``, e.g. a :class:`tokenwise.models.embedding.HFEmbedder`
            on all-MiniLM-L6-v2); old tokens are then embedded by their text.
        k: neighbours of the global estimate.
        tau: temperature of both softmaxes.
        local_weight: share of the local estimate in the final row.
        out: save the model directory here (weights, config, the new tokenizer,
            ``transplant.json``); loadable with ``tokenwise.load`` and plain transformers.
        seed: seeds the random rows.
        progress: show progress bars on standard error.

    Returns:
        A :class:`Transplant`.

    Example:
        >>> from tokenwise.testbed import Testbed
        >>> from tokenwise.tokenizers import train
        >>> tok = train(Testbed(0).training_documents()[:2000], 600)
        >>> result = transplant("tw-small", tok)
        >>> result.model.vocab_size, result.sources["shared"] > 300
        (600, True)
    """
    _check(init, k, tau, local_weight)
    if embedder is not None and init != "tokenadapt":
        raise TokenwiseError(f"an embedder is used only by init='tokenadapt', not init={init!r}")
    lm, new_tok = _load_inputs(model, new_tokenizer)
    old_tok = lm.tokenizer
    hf_old = lm.hf_model
    in_old = hf_old.get_input_embeddings().weight.detach().float().cpu()  # (V_old, D)
    head = hf_old.get_output_embeddings()
    tied = head is None or head.weight is hf_old.get_input_embeddings().weight or \
        head.weight.data_ptr() == hf_old.get_input_embeddings().weight.data_ptr()
    matrices = [in_old] if tied else [in_old, head.weight.detach().float().cpu()]
    n_old = in_old.shape[0]

    old_info, new_info = token_bytes(old_tok), token_bytes(new_tok)
    n_new = len(new_tok)
    old_by_bytes: dict[bytes, int] = {}
    for i in range(min(len(old_info.data), n_old)):
        if not old_info.special[i]:
            old_by_bytes.setdefault(old_info.data[i], i)
    specials = _match_special(new_tok, new_info, old_tok, old_info)

    # plan: each new id -> ("copy", old id) or ("new", None)
    copied: dict[int, int] = {}
    todo: list[int] = []
    sources: Counter[str] = Counter()
    for j in range(n_new):
        if new_info.special[j]:
            if j in specials and specials[j] < n_old:
                copied[j] = specials[j]
                sources["special"] += 1
            else:
                todo.append(j)
        elif new_info.data[j] in old_by_bytes:
            copied[j] = old_by_bytes[new_info.data[j]]
            sources["shared"] += 1
        else:
            todo.append(j)

    generator = torch.Generator().manual_seed(seed)
    new_rows = [torch.empty(n_new, m.shape[1]) for m in matrices]
    for rows, m in zip(new_rows, matrices, strict=True):
        mean, std = m.mean(0), m.std(0)
        # fallback rows are drawn first, for every id, so a row's value does not depend on
        # which other rows needed one
        rows.copy_(mean + std * torch.randn(n_new, m.shape[1], generator=generator))
        for j, i in copied.items():
            rows[j] = m[i]

    weights = _plan_rows(todo, init, old_tok, old_info, new_info, in_old, embedder, k, tau,
                         local_weight, progress, sources)
    for rows, m in zip(new_rows, matrices, strict=True):
        mean = m.mean(0)
        for j, plan in weights.items():
            if plan == "mean":
                rows[j] = mean
            elif plan is not None:
                ids, w = plan
                rows[j] = w @ m[ids]

    hf_new = copy.deepcopy(hf_old)
    dtype = hf_new.get_input_embeddings().weight.dtype
    hf_new.resize_token_embeddings(n_new, mean_resizing=False)
    with torch.no_grad():
        emb = hf_new.get_input_embeddings().weight
        emb.copy_(new_rows[0].to(emb.device, dtype))
        if not tied:
            out_head = hf_new.get_output_embeddings()
            out_head.weight.copy_(new_rows[1].to(out_head.weight.device, dtype))
            bias = getattr(out_head, "bias", None)
            if bias is not None:
                bias.zero_()
    if tied:
        hf_new.tie_weights()
    _update_ids(hf_new, new_tok)
    hf_new.requires_grad_(True)
    result_lm = LanguageModel(hf_new, new_tok, name=f"{lm.name}+{init}")
    record = {"base_model": lm.name, "init": init, "k": k, "tau": tau,
              "local_weight": local_weight, "seed": seed, "old_vocab": n_old,
              "new_vocab": n_new, "tied": bool(tied), "sources": dict(sorted(sources.items())),
              "embedder": "old input embeddings" if embedder is None else repr(embedder)}
    path = None
    if out is not None:
        path = save_model_dir(result_lm, out, extra={"transplant.json": record})
        result_lm.path = path
    return Transplant(result_lm, path, dict(sorted(sources.items())), init)


def _plan_rows(todo: list[int], init: str, old_tok: Any, old_info: TokenBytes,
               new_info: TokenBytes, in_old: Tensor, embedder: Any, k: int, tau: float,
               local_weight: float, progress: bool, sources: Counter[str]
               ) -> dict[int, Any]:
    """For each new id to make: None (the random row), "mean", or (old ids, weights)."""
    n_old = in_old.shape[0]
    plans: dict[int, Any] = {}
    if init == "random":
        sources["random"] += len(todo)
        return {j: None for j in todo}
    if init == "mean":
        sources["mean"] += len(todo)
        return {j: "mean" for j in todo}
    pieces: dict[int, list[int]] = {}
    for j in progress_bar(todo, desc="old pieces", unit="token", enabled=progress):
        if new_info.special[j]:
            continue
        ids = [i for i in old_pieces(old_tok, old_info, new_info.data[j]) if i < n_old]
        if ids:
            pieces[j] = ids
    if init == "subword_mean":
        for j in todo:
            if j in pieces:
                plans[j] = (pieces[j], torch.full((len(pieces[j]),), 1 / len(pieces[j])))
                sources["subword_mean"] += 1
            else:
                plans[j] = None
                sources["random"] += 1
        return plans

    # TokenAdapt
    candidates = [i for i in range(n_old) if i < len(old_info.special) and not old_info.special[i]]
    if embedder is None:
        own = OldEmbeddingEmbedder(old_tok, in_old)
        embed = _as_embed_fn(own)
        old_vectors = in_old[candidates]  # (C, D)
    else:
        embed = _as_embed_fn(embedder)
        texts = [old_info.text(i) for i in candidates]
        chunks = [embed(texts[s:s + 512]) for s in progress_bar(
            range(0, len(texts), 512), desc="embed old tokens", unit="batch", enabled=progress)]
        old_vectors = torch.cat(chunks)
    targets = [j for j in todo if not new_info.special[j]]
    token_vecs = embed([new_info.text(j) for j in targets]) if targets else None
    piece_ids = sorted({i for j in targets for i in pieces.get(j, [])})
    piece_vecs = dict(zip(piece_ids, embed([old_info.text(i) for i in piece_ids]), strict=True)) \
        if piece_ids else {}
    cand = torch.tensor(candidates)
    neighbours = _nearest(token_vecs, old_vectors, k) if targets else None
    for row, j in enumerate(progress_bar(targets, desc="tokenadapt", unit="token",
                                         enabled=progress)):
        vec = token_vecs[row]  # type: ignore[index]
        local = None
        if j in pieces:
            ids = pieces[j]
            sims = _cos(vec[None], torch.stack([piece_vecs[i] for i in ids]))[0]  # (P,)
            lengths = torch.tensor([len(old_info.data[i]) for i in ids], dtype=torch.float32)
            ratio = lengths / max(1, len(new_info.data[j]))
            local = (ids, _softmax(((_softmax(sims) + ratio) / 2) / tau))
        glob = None
        if float(vec.norm()) > 0:
            values, indices = neighbours[0][row], neighbours[1][row]  # type: ignore[index]
            glob = (cand[indices].tolist(), _softmax(values / tau))
        if local and glob:
            ids = local[0] + glob[0]
            w = torch.cat([local_weight * local[1], (1 - local_weight) * glob[1]])
            plans[j] = (ids, w)
            sources["local+global"] += 1
        elif local or glob:
            plans[j] = local or glob
            sources["local" if local else "global"] += 1
        else:
            plans[j] = None
            sources["random"] += 1
    for j in todo:
        if j not in plans:
            plans[j] = None  # a special token with no counterpart
            sources["random"] += 1
    return plans


def _update_ids(hf_model: Any, tokenizer: Any) -> None:
    config = hf_model.config
    config.vocab_size = len(tokenizer)
    for role in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, role, None)
        setattr(config, role, value)
        gen = getattr(hf_model, "generation_config", None)
        if gen is not None:
            setattr(gen, role, value)
    text_config = getattr(config, "text_config", None)
    if text_config is not None and hasattr(text_config, "vocab_size"):
        text_config.vocab_size = len(tokenizer)
