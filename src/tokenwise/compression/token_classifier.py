"""LLMLingua-2: keep the words a token classifier marks as worth keeping.

Pan et al., 2024, "LLMLingua-2: Data Distillation for Efficient and Faithful Task-Agnostic
Prompt Compression" (arXiv 2403.12968; ref: microsoft/LLMLingua). A bidirectional encoder
with a two-label head (0 = drop, 1 = keep) reads the text in chunks of at most its maximum
length; a word's keep probability is the mean (or first) of its sub-tokens'
``softmax(logits)[:, 1]``.

What is the reference's, and kept: the chunking (windows of ``max_length - 1`` tokens that
back off to the last ``"."``/``"\\n"`` token, the closing separator dropped when a window is
full), the word boundaries (WordPiece: a piece without ``##``; SentencePiece/byte-level: a
piece with the space marker, or a punctuation piece), the per-chunk token-weighted percentile
``int(100·(1-rate)+1)`` with ``percentile="chunk"``, and the context filter's
``(rate+1)/2``. What differs, on purpose: post-processing is vectorised over the whole text
(one tokenizer call, numpy merges) instead of a Python loop per token; words are spans of
the original text, so nothing is re-decoded; a Han character starts a new word even where
the tokenizer has no space marker, and pieces that share a character (the bytes of a CJK
character in a byte-level vocabulary) stay in one word, so words never overlap; force
tokens and ``keep_digits`` force whole words (the reference forces single tokens, which a
word's other tokens then average away); the default ``percentile="global"`` meets the rate
on the target tokenizer; in a byte-level vocabulary a whitespace piece ("Ċ" for a line
break) opens a word and holds no text, and a line-break piece is a chunk end like ``"\n"``
(the reference glues ".", "Ċ", "The" into one word and never ends a chunk there); and a
classifier trained with its question first reads ``question=`` before every chunk
(:attr:`question_template`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import string
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenwise.compression import words
from tokenwise.compression.base import SelectiveCompressor, WordScores
from tokenwise.errors import ModelNotFoundError, TokenwiseError, UnsafeCheckpointError

TOKEN_TO_WORD = ("mean", "first")
_SPACE_RE = re.compile(r"\s")
_LONE_SPACE_RE = re.compile(r"(?<=\S) (?=\S)")
_ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl")
# Pre-tokenizers that split at every whitespace character, and normalizers that map each
# character on its own: with both, a text cut at spaces tokenizes as the whole does.
_SPACE_SPLITTERS = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
_LOCAL_NORMALIZERS = ("BertNormalizer", "Lowercase", "StripAccents", "NFD", "NFKD")
# Encoders whose transformers code takes a 4-D attention mask as given (checked in tests).
_BROADCAST_MASK_TYPES = ("bert", "roberta", "xlm-roberta")
#: Built-in classifiers by name. ``tw-keep`` (149k parameters) was trained on the testbed's
#: needle memos, each preceded by its question line ("Q: What is the code of X?"), by the
#: command in its ``training.json``: give it the question line first and it keeps the line
#: that answers it. It is the default model.
BUILTIN_CLASSIFIERS = {"tw-keep": Path(__file__).parent / "builtin" / "tw-keep"}
DEFAULT_CLASSIFIER = "tw-keep"
# Byte-level BPE stands for each whitespace byte by a printable character: space "Ġ",
# "\t" "ĉ", "\n" "Ċ", "\v" "ċ", "\f" "Č", "\r" "č".
_BYTE_SPACES = frozenset("ĠĉĊċČč")


class TokenClassifierCompressor(SelectiveCompressor):
    """LLMLingua-2 over any local Hugging Face token-classification model.

    Args:
        model: a built-in classifier name (default ``"tw-keep"``, see
            :data:`BUILTIN_CLASSIFIERS`), a local directory holding a
            ``...ForTokenClassification`` model (safetensors) and its tokenizer (e.g. an
            LLMLingua-2 model), or such a model object (then pass ``tokenizer``).
        tokenizer: a fast tokenizer for a model object (read from the directory otherwise).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; default: where the model is, or CPU.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` or a torch dtype for a directory.
        batch_size: chunks per forward pass.
        max_length: tokens per chunk, special tokens included (default: the model's limit).
        token_to_word: ``"mean"`` or ``"first"`` sub-token probability per word.
        chunk_end_tokens: tokens a chunk may end on when it backs off from a full window.
        question_template: how a classifier trained to read its question sees ``question=``:
            a format string with ``{question}`` whose text is put before every chunk (not
            into the output), e.g. ``"Q: {question}\n"``; None: the question is not read.
            Default ``"auto"``: ``"Q: {question}\n"`` for a classifier whose
            ``training.json`` says it was trained with the question first (tw-keep), else
            None (LLMLingua-2 models are question-agnostic). A text that already opens with
            that line is read as it is.
        force_question_words: with ``question=``, keep the question's keywords wherever they
            occur (:func:`tokenwise.compression.words.question_words`: function words and
            wh-words are left to the classifier). Off by default: the classifier does not
            read the question (as in LLMLingua-2), and a keyword found in every line would
            take the budget; turn it on to make a question shape what is kept.
        progress: show a progress bar over batches.

    Example:
        >>> comp = TokenClassifierCompressor()  # the built-in tw-keep
        >>> r = comp.compress("The code of Tavoun is 917. The code of Brelix is 382.",
        ...                   rate=0.5, protect=False)
        >>> 0 < r.tokens_after <= r.tokens_before // 2 + 1
        True
    """

    name = "token_classifier"
    forced_score = 1.0
    threshold_range = (0.0, 1.0)
    defer_read_ahead = True
    #: characters per piece when a long text is tokenized in parallel pieces.
    piece_chars = 8192

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        token_to_word: str = "mean",
        chunk_end_tokens: tuple[str, ...] = (".", "\n"),
        question_template: str | None = "auto",
        force_question_words: bool = False,
        progress: bool = False,
    ):
        if model is None:
            model = DEFAULT_CLASSIFIER
        if isinstance(model, str) and model in BUILTIN_CLASSIFIERS:
            model = BUILTIN_CLASSIFIERS[model]
        if token_to_word not in TOKEN_TO_WORD:
            raise TokenwiseError(f"token_to_word={token_to_word!r}: allowed {TOKEN_TO_WORD}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TokenwiseError(f"batch_size={batch_size!r}: must be an integer >= 1")
        trained_layout = None
        if isinstance(model, (str, os.PathLike)):
            self.model, self.tokenizer, path = _load_dir(model, dtype)
            self.model_name = path.name
            trained_layout = _trained_layout(path)
        else:
            if tokenizer is None:
                raise TokenwiseError("a model object needs its tokenizer: pass tokenizer=")
            _check_head(model, type(model).__name__)
            self.model, self.tokenizer = model, tokenizer
            self.model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if not getattr(self.tokenizer, "is_fast", False):
            raise TokenwiseError(
                f"tokenizer {type(self.tokenizer).__name__} is not a fast (Rust) tokenizer; "
                "character offsets are needed to map tokens to words. Load it with "
                "AutoTokenizer.from_pretrained(DIR) (tokenizer.json)"
            )
        if device is not None:
            from tokenwise.models.loading import pick_device

            self.model.to(pick_device(device))
        self.model.eval()
        limit = _model_max_length(self.model, self.tokenizer)
        if max_length is None:
            max_length = limit
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not (
                4 <= max_length <= limit):
            raise TokenwiseError(f"max_length={max_length!r}: allowed 4..{limit} (the model's "
                                 "limit, special tokens included)")
        self.max_length = max_length
        self.batch_size = batch_size
        self.token_to_word = token_to_word
        self.chunk_end_tokens = tuple(chunk_end_tokens)
        self.progress = progress
        self.force_question_words = bool(force_question_words)
        if question_template == "auto":
            question_template = ("Q: {question}\n" if trained_layout == "question first"
                                 else None)
        if question_template is not None and (not isinstance(question_template, str)
                                              or "{question}" not in question_template):
            raise TokenwiseError(f"question_template={question_template!r}: give a string "
                                 "with '{question}' in it, None, or 'auto'")
        self.question_template = question_template
        self._vocab = _vocab_flags(self.tokenizer, self.chunk_end_tokens)
        self._split_mode = _split_mode(self.tokenizer.backend_tokenizer)
        config = self.model.config
        self._broadcast_mask = (getattr(config, "model_type", "") in _BROADCAST_MASK_TYPES and
                                getattr(config, "_attn_implementation", "") in ("sdpa", "eager"))
        tok = self.tokenizer
        self._cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        self._sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id
        self._pad = pad if pad is not None else (self._sep if self._sep is not None else 0)

    def __repr__(self) -> str:
        return (f"TokenClassifierCompressor({self.model_name!r}, max_length={self.max_length}, "
                f"token_to_word={self.token_to_word!r})")

    def check_force_tokens(self, force_tokens: tuple[str, ...]) -> None:
        """Reject force tokens the classifier's tokenizer cannot represent (unknown pieces)."""
        unk = self.tokenizer.unk_token_id
        for tok in force_tokens:
            ids = self.tokenizer(tok, add_special_tokens=False)["input_ids"]
            if not ids or (unk is not None and unk in ids):
                raise TokenwiseError(
                    f"force token {tok!r} does not tokenize with {self.model_name}'s tokenizer "
                    f"(got {self.tokenizer.convert_ids_to_tokens(ids)}); a force token must be "
                    "text the classifier can read"
                )

    # -- scoring -----------------------------------------------------------------------------

    def score_words(self, texts: list[str], *, question: str | None = None) -> WordScores:
        """Keep probability of every word of ``texts`` under the classifier.

        Args:
            texts: the segments to score (each chunked on its own).
            question: read through :attr:`question_template` (before every chunk), if the
                classifier has one; otherwise unused.

        Returns:
            the words' spans and scores; ``groups`` numbers the model's chunks.
        """
        t0 = time.perf_counter()
        seg_ids, seg_offsets = self._encode(texts)
        prefixes = self._question_prefixes(texts, question)
        chunks = []  # (segment, start, stop) token ranges
        for s, ids in enumerate(seg_ids):
            is_end = self._vocab.chunk_end[ids]
            room = self.max_length - 2 - len(prefixes[s])
            chunks.extend((s, a, b) for a, b in reference_chunks(len(ids), is_end, room))
        t1 = time.perf_counter()
        self.read_ahead()  # the target tokenizer may use the CPU while the model runs
        probs = self._keep_probabilities(seg_ids, chunks, prefixes)  # (N,) chunk tokens
        t2 = time.perf_counter()
        out = self._merge(texts, seg_ids, seg_offsets, chunks, probs)
        t3 = time.perf_counter()
        out.timings = {"tokenize": t1 - t0, "model": t2 - t1, "merge": t3 - t2}
        return out

    def _question_prefixes(self, texts: list[str], question: str | None) -> list[np.ndarray]:
        """Token ids put before every chunk of each text (empty: none)."""
        none = np.zeros(0, dtype=np.int64)
        if self.question_template is None or not question or not question.strip():
            return [none] * len(texts)
        line = self.question_template.format(question=question.strip())
        ids = np.asarray(self.tokenizer(line, add_special_tokens=False)["input_ids"],
                         dtype=np.int64)
        if len(ids) > (self.max_length - 2) // 2:
            raise TokenwiseError(
                f"the question takes {len(ids)} of the classifier's {self.max_length} tokens "
                "per chunk (at most half may go to it); shorten it or pass "
                "question_template=None")
        head = line.strip()
        return [none if t.lstrip().startswith(head) else ids for t in texts]

    def _encode(self, texts: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Token ids and ``(T, 2)`` character offsets of each text.

        A long text is cut at spaces into pieces the Rust tokenizer encodes in parallel,
        where that cannot change the tokens (see :func:`_split_mode`).
        """
        pieces, owners, bases = [], [], []
        for i, text in enumerate(texts):
            cuts = (_space_cuts(text, self.piece_chars, self._split_mode == "marker")
                    if self._split_mode else [0, len(text)])
            for a, b in itertools.pairwise(cuts):
                pieces.append(text[a:b])
                owners.append(i)
                bases.append(a)
        backend = self.tokenizer.backend_tokenizer
        if backend.truncation is None and backend.padding is None:
            # The Rust tokenizer directly (what the transformers call runs, less its
            # wrapping); special-token text in the input is read as text.
            if not backend.encode_special_tokens:
                backend.encode_special_tokens = True
            encodings = backend.encode_batch(pieces, add_special_tokens=False)
        else:
            encodings = self.tokenizer(pieces, add_special_tokens=False,
                                       return_offsets_mapping=True, split_special_tokens=True,
                                       verbose=False).encodings
        ids: list[list[np.ndarray]] = [[] for _ in texts]
        offsets: list[list[np.ndarray]] = [[] for _ in texts]
        for e, i, base in zip(encodings, owners, bases, strict=True):
            n = len(e.ids)
            ids[i].append(np.asarray(e.ids, dtype=np.int64))
            flat = np.fromiter(itertools.chain.from_iterable(e.offsets), np.int64, 2 * n)
            offsets[i].append(flat.reshape(n, 2) + base)
        return ([np.concatenate(x) if x else np.zeros(0, np.int64) for x in ids],
                [np.concatenate(x) if x else np.zeros((0, 2), np.int64) for x in offsets])

    @torch.inference_mode()
    def _keep_probabilities(self, seg_ids: list[np.ndarray], chunks: list[tuple[int, int, int]],
                            prefixes: list[np.ndarray] | None = None) -> np.ndarray:
        """Keep probability of every chunk token, in chunk order.

        Chunks are batched longest first, so a batch pads its rows to lengths close to
        their own (less padded attention than batching in text order). ``prefixes``: token
        ids read before each text's chunks (a question), not scored.
        """
        device = next(self.model.parameters()).device
        cls_len = 1 if self._cls is not None else 0
        rows, firsts = [], []
        for s, a, z in chunks:
            row = seg_ids[s][a:z]
            if prefixes is not None and len(prefixes[s]):
                row = np.concatenate([prefixes[s], row])
            firsts.append(cls_len + (len(prefixes[s]) if prefixes is not None else 0))
            if self._cls is not None:
                row = np.concatenate([[self._cls], row])
            if self._sep is not None:
                row = np.concatenate([row, [self._sep]])
            rows.append(row[:self.max_length])  # a full window loses its separator
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out: list[np.ndarray | None] = [None] * len(rows)
        batches = range(0, len(order), self.batch_size)
        if self.progress and len(batches) > 2:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="classifying", unit="batch")
        for b in batches:
            part = order[b:b + self.batch_size]
            width = len(rows[part[0]])
            ids = np.full((len(part), width), self._pad, dtype=np.int64)  # (B, T)
            mask = np.zeros((len(part), width), dtype=np.int64)  # (B, T)
            for i, c in enumerate(part):
                ids[i, :len(rows[c])] = rows[c]
                mask[i, :len(rows[c])] = 1
            logits = self.model(input_ids=torch.from_numpy(ids).to(device),
                                attention_mask=self._attention_mask(mask, device)).logits
            p_keep = torch.softmax(logits.float(), dim=-1)[..., 1].cpu().numpy()  # (B, T)
            for i, c in enumerate(part):
                n_content = chunks[c][2] - chunks[c][1]
                out[c] = p_keep[i, firsts[c]:firsts[c] + n_content]
        if not out:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _attention_mask(self, mask: np.ndarray, device: torch.device) -> torch.Tensor | None:
        """The padding mask in the cheapest form the model takes.

        Given a 2-D mask, transformers builds a ``(B, 1, T, T)`` mask, which costs more than
        the attention itself for a small encoder; a broadcast ``(B, 1, 1, T)`` additive mask
        (or none when nothing is padded) gives the same outputs.
        """
        if not self._broadcast_mask:
            return torch.from_numpy(mask).to(device)
        if mask.all():
            return None
        keep = torch.from_numpy(mask).to(device).bool()[:, None, None, :]  # (B, 1, 1, T)
        dtype = next(self.model.parameters()).dtype
        additive = torch.zeros(keep.shape, dtype=dtype, device=device)
        return additive.masked_fill_(~keep, torch.finfo(dtype).min)

    def _merge(self, texts: list[str], seg_ids: list[np.ndarray], seg_offsets: list[np.ndarray],
               chunks: list[tuple[int, int, int]], probs: np.ndarray) -> WordScores:
        all_starts, all_ends, all_seg, all_groups, all_scores = [], [], [], [], []
        pos = 0
        flags = self._vocab
        for s, text in enumerate(texts):
            ids, off = seg_ids[s], seg_offsets[s]
            n = len(ids)
            if n == 0:
                continue
            cps = words.code_points(text)
            p = probs[pos:pos + n]
            pos += n
            begin = flags.begins_word[ids].copy()  # (n,)
            t_start, t_end = off[:, 0], off[:, 1]
            # A bare space-marker piece ("▁") holds no text of its own, whatever its offsets.
            empty = (t_start >= t_end) | flags.bare_marker[ids]
            if flags.by_offsets:
                begin |= np.concatenate([[True], t_start[1:] > t_end[:-1]])
            chunk_starts = np.asarray([a for c_s, a, _ in chunks if c_s == s], dtype=np.int64)
            if flags.glue_after is not None:
                glue = flags.glue_after[ids]  # (n,) whitespace pieces
                begin[1:] &= ~glue[:-1]
                # Whitespace that ends a chunk (or the text) belongs to the word before it,
                # so no chunk ends on an empty word.
                stops = np.append(chunk_starts[1:], n)[
                    np.searchsorted(chunk_starts, np.arange(n), side="right") - 1]  # (n,)
                solid = np.where(glue, n, np.arange(n))
                next_solid = np.minimum.accumulate(solid[::-1])[::-1]  # (n,)
                begin &= ~(glue & (next_solid >= stops))
            # A Han character starts a word unless it follows a bare space-marker piece
            # (SentencePiece vocabularies have no space marker inside Chinese text).
            first_cp = cps[np.clip(t_start, 0, max(len(cps) - 1, 0))]
            cjk = words.is_han(first_cp) & ~empty
            prev_empty = np.concatenate([[False], empty[:-1]])
            begin |= cjk & ~prev_empty
            # Pieces that share a character (the bytes of one CJK character in a byte-level
            # vocabulary) belong to one word, or words would overlap and repeat that character.
            begin &= ~_shares_character(t_start, t_end, empty)
            begin[chunk_starts] = True  # a chunk always starts a word (the reference requires it)
            group = np.searchsorted(chunk_starts, np.arange(n), side="right") - 1  # (n,)
            firsts = np.flatnonzero(begin)  # (W,)
            if self.token_to_word == "mean":
                sizes = np.diff(np.append(firsts, n)).astype(np.float32)
                score = np.add.reduceat(p, firsts) / sizes
            else:
                score = p[firsts]
            w_start = np.minimum.reduceat(np.where(empty, np.iinfo(np.int64).max, t_start),
                                          firsts)
            w_end = np.maximum.reduceat(t_end, firsts)
            # A word made only of empty pieces has no text of its own: place it at its end.
            w_start = np.minimum(w_start, w_end)
            w_start, w_end = words.strip_spans(cps, w_start, w_end)
            # A chunk may still cut through a character; the later word then gives up what
            # the earlier one holds, so no character is ever kept twice.
            w_start, w_end = words.disjoint_spans(w_start, w_end)
            all_starts.append(w_start)
            all_ends.append(w_end)
            all_seg.append(np.full(len(firsts), s, dtype=np.int64))
            all_groups.append(group[firsts])
            all_scores.append(score.astype(np.float32, copy=False))
        if not all_starts:
            z = np.zeros(0, dtype=np.int64)
            return WordScores(z, z.copy(), z.copy(), np.zeros(0, np.float32), z.copy())
        # Chunk numbers are per text; make them global so no chunk spans two texts.
        groups, offset = [], 0
        for g in all_groups:
            groups.append(g + offset)
            offset += int(g.max()) + 1 if len(g) else 0
        return WordScores(
            starts=np.concatenate(all_starts), ends=np.concatenate(all_ends),
            segment=np.concatenate(all_seg), scores=np.concatenate(all_scores),
            groups=np.concatenate(groups),
        )


def _shares_character(t_start: np.ndarray, t_end: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: no word may begin at this piece, since the next piece with text starts
    before an earlier piece with text ends (both cover part of one character)."""
    n = len(t_start)
    if n == 0:
        return np.zeros(0, dtype=bool)
    ends = np.where(empty, np.iinfo(np.int64).min, t_end)
    reach = np.concatenate([[np.iinfo(np.int64).min], np.maximum.accumulate(ends)[:-1]])
    overlapping = ~empty & (t_start < reach)  # (n,) a piece with text inside an earlier one
    # The first piece with text at or after each position (n: none).
    solid = np.where(empty, n, np.arange(n))
    next_solid = np.minimum.accumulate(solid[::-1])[::-1]  # (n,)
    return np.append(overlapping, False)[next_solid]


def _split_mode(backend: Any) -> str | None:
    """How a text may be cut into pieces that tokenize as the whole does, if at all.

    ``"space"``: a WordPiece tokenizer whose pre-tokenizer splits at whitespace (tokens
    never cross a space) and whose normalizer works per character: cut at any whitespace.
    ``"marker"``: byte-level BPE with the GPT-2 split rule (a space joins the word after
    it, a run of spaces stays apart; digits may be split one by one first) and no
    normalizer: cut before a single space between two non-spaces, where the rule always
    splits. None: do not cut.
    """
    normalizer = backend.normalizer
    kind = type(backend.model).__name__
    if kind == "WordPiece":
        local = normalizer is None or type(normalizer).__name__ in _LOCAL_NORMALIZERS
        spaced = type(backend.pre_tokenizer).__name__ in _SPACE_SPLITTERS
        return "space" if local and spaced else None
    if kind != "BPE" or normalizer is not None or backend.pre_tokenizer is None:
        return None
    try:
        spec = json.loads(backend.pre_tokenizer.__getstate__())
    except (TypeError, ValueError, AttributeError):
        return None
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    kinds = [p.get("type") for p in parts]
    if kinds not in (["ByteLevel"], ["Digits", "ByteLevel"]) or not parts[-1].get("use_regex"):
        return None
    return "marker"


def _space_cuts(text: str, size: int, single: bool = False) -> list[int]:
    """Cut points ``[0, ..., len(text)]``, each later cut at the first space after ``size``
    more characters (no cut inside a run of non-space characters). ``single``: only before
    a ``" "`` with a non-space on both sides."""
    cuts, pos, n = [0], size, len(text)
    pattern = _LONE_SPACE_RE if single else _SPACE_RE
    while pos < n:
        m = pattern.search(text, pos)
        if m is None:
            break
        cuts.append(m.start())
        pos = m.start() + size
    cuts.append(n)
    return cuts


def reference_chunks(n: int, is_end: np.ndarray, max_tokens: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, stop)`` of LLMLingua-2's chunks.

    A window reaches ``max_tokens`` past its start (so it may hold ``max_tokens + 1``
    tokens) and backs off to the last end token after its first; the final window holds at
    most ``max_tokens`` tokens.

    Args:
        n: tokens in the text.
        is_end: ``(n,)`` bool, tokens a chunk may end on.
        max_tokens: the model's length less its two special tokens.

    Example:
        >>> ends = np.array([0, 0, 1, 0, 0, 0, 0, 1, 0, 0], bool)
        >>> reference_chunks(10, ends, 4)
        [(0, 3), (3, 8), (8, 10)]
    """
    out, st = [], 0
    while st < n:
        if st + max_tokens > n - 1:
            out.append((st, n))
            break
        ed = st + max_tokens
        hits = np.flatnonzero(is_end[st + 1:ed + 1])
        if hits.size:
            ed = st + 1 + int(hits[-1])
        out.append((st, ed + 1))
        st = ed + 1
    return out


class _VocabFlags:
    """Per-vocabulary-id facts, computed once per tokenizer."""

    def __init__(self, begins_word: np.ndarray, chunk_end: np.ndarray, by_offsets: bool,
                 bare_marker: np.ndarray, glue_after: np.ndarray | None = None):
        self.begins_word = begins_word
        self.chunk_end = chunk_end
        self.by_offsets = by_offsets
        self.bare_marker = bare_marker
        # Pieces after which the next piece continues the same word (None: no such piece).
        self.glue_after = glue_after


def _vocab_flags(tokenizer: Any, chunk_end_tokens: tuple[str, ...]) -> _VocabFlags:
    return _vocab_flags_cached(tokenizer, tuple(chunk_end_tokens))


@lru_cache(maxsize=4)
def _vocab_flags_cached(tokenizer: Any, chunk_end_tokens: tuple[str, ...]) -> _VocabFlags:
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    pieces = ["" if p is None else p for p in pieces]
    backend = tokenizer.backend_tokenizer
    model_kind = type(backend.model).__name__
    decoder_kind = type(backend.decoder).__name__ if backend.decoder is not None else ""
    ends = set(chunk_end_tokens)
    chunk_end = np.fromiter((p in ends for p in pieces), dtype=bool, count=size)
    punct = string.punctuation
    if model_kind == "WordPiece":
        prefix = getattr(backend.model, "continuing_subword_prefix", "##") or "##"
        begins = np.fromiter((not p.startswith(prefix) for p in pieces), dtype=bool, count=size)
        return _VocabFlags(begins, chunk_end, False, np.zeros(size, dtype=bool))
    marker = {"Metaspace": "▁", "ByteLevel": "Ġ"}.get(decoder_kind)
    if marker is None:
        sample = pieces[: min(size, 5000)]
        marker = "▁" if sum(p.startswith("▁") for p in sample) > 50 else (
            "Ġ" if sum(p.startswith("Ġ") for p in sample) > 50 else None)
    if marker is None:  # unknown scheme: a space before a piece starts a word
        begins = np.fromiter((p in punct for p in pieces), dtype=bool, count=size)
        return _VocabFlags(begins, chunk_end, True, np.zeros(size, dtype=bool))
    # The reference's rule: a piece with the space marker, or a punctuation piece. (Its test
    # is `piece in string.punctuation`, a substring test, kept for agreement.)
    begins = np.fromiter((p.startswith(marker) or p in punct for p in pieces), dtype=bool,
                         count=size)
    bare = np.fromiter((p == marker for p in pieces), dtype=bool, count=size)
    if marker == "Ġ":
        # Byte-level pieces: a line break carries no space marker, so the reference's rule
        # would glue ".", "Ċ", "The" into one word ".\nThe" (and a force phrase at a line
        # start would never match). A piece of whitespace bytes opens the next word and holds
        # no text of its own, as a bare marker does (the trainer labels it with that word).
        spaces = np.fromiter((bool(p) and all(c in _BYTE_SPACES for c in p) for p in pieces),
                             dtype=bool, count=size)
        opens = np.fromiter((p[:1] in _BYTE_SPACES for p in pieces), dtype=bool,
                            count=size)
        begins |= opens
        bare |= spaces
        if "\n" in ends:
            chunk_end |= spaces & np.fromiter(("Ċ" in p for p in pieces), dtype=bool,
                                              count=size)
        # What follows a whitespace piece joins it (so "\n\n", "\n " open one word).
        return _VocabFlags(begins, chunk_end, False, bare, glue_after=spaces)
    return _VocabFlags(begins, chunk_end, False, bare)


def _trained_layout(path: Path) -> str | None:
    """The ``layout`` a tokenwise-trained classifier records in its training.json, if any."""
    try:
        info = json.loads((path / "training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info.get("layout") if isinstance(info, dict) else None


def _check_head(model: Any, what: str) -> None:
    config = getattr(model, "config", None)
    cls = type(model).__name__
    if config is None or not cls.endswith("ForTokenClassification"):
        raise TokenwiseError(
            f"{what} is a {cls}, not a token-classification model; LLMLingua-2 needs a "
            "...ForTokenClassification model with labels (0 = drop, 1 = keep)"
        )
    if getattr(config, "num_labels", 0) < 2:
        raise TokenwiseError(
            f"{what} has num_labels={config.num_labels}; LLMLingua-2 needs 2 labels "
            "(0 = drop, 1 = keep)"
        )


def _load_dir(model: str | os.PathLike[str], dtype: Any) -> tuple[Any, Any, Path]:
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    from tokenwise.models import resolve

    try:
        name, path = resolve(model)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"token classifier {os.fspath(model)!r} not found: give a built-in classifier "
            f"({', '.join(BUILTIN_CLASSIFIERS)}) or a local directory with a "
            f"...ForTokenClassification model ({exc})") from None
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{str(path)!r} has no config.json")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForTokenClassification") for a in archs):
        raise TokenwiseError(
            f"model {name!r} ({', '.join(archs) or config.model_type}) has no token-"
            "classification head; LLMLingua-2 needs a ...ForTokenClassification model with "
            "labels (0 = drop, 1 = keep)"
        )
    files = [p.name for p in path.iterdir() if p.is_file()]
    if not any(f.endswith(".safetensors") for f in files):
        raise UnsafeCheckpointError(
            f"{str(path)!r} has no *.safetensors weights; tokenwise loads safetensors only "
            "(convert with model.save_pretrained(DIR, safe_serialization=True))"
        )
    from tokenwise.models.loading import pick_dtype, quiet_weights_loading

    # the one dtype rule of models/, except that no dtype means float32 on any device here
    torch_dtype = pick_dtype("float32" if dtype is None else dtype, torch.device("cpu"))

    with quiet_weights_loading():
        hf = AutoModelForTokenClassification.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    _check_head(hf, repr(name))
    return hf, tokenizer, path


def _model_max_length(model: Any, tokenizer: Any) -> int:
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if getattr(config, "model_type", "") in _ROBERTA_LIKE:
            # RoBERTa numbers positions from padding_idx + 1: two rows are never used.
            positions -= (getattr(config, "pad_token_id", 1) or 1) + 1
    else:
        positions = None
    limit = getattr(tokenizer, "model_max_length", None)
    limit = limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None
    candidates = [x for x in (positions, limit) if x]
    return min(candidates) if candidates else 512
