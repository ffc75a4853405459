"""LLMLingua-2 speed: `tokenwise.compression` against llmlingua 0.2.2's `compress_prompt`.

Claim checked: on a 10k-word text, with the same token classifier for both,
(a) a small classifier, where llmlingua's per-token Python post-processing weighs most:
    our total time is >= 3x faster. ``builtin`` is the shipped classifier tw-keep (149k
    parameters, byte-level BPE, 256 positions); ``tiny`` (16 wide, 1 layer) and ``small``
    (64 wide, 2 layers) are random BERTs with a WordPiece vocabulary;
(b) a BERT-base-sized classifier (randomly initialised; 12 layers, 768 wide), where the
    model dominates: ours is never slower.
Both are split into model time and everything else. llmlingua's model time is measured by
timing its classifier's forward calls; ours comes from the result's ``timings``.

llmlingua counts tokens with tiktoken's GPT-3.5 encoding, which needs a download; here it
gets the built-in models' tokenizer instead (a direct Rust ``encode`` per word, the cheapest
per-call path), and we count with the same tokenizer. Both run with batch size 50 (the
reference's default; ``--ref-batch-size``) and ours with its own default (16, longest
chunks first; ``--our-batch-size``), in float32 on the same threads, and we check that our
kept words equal llmlingua's (``percentile="chunk"``) before timing; the run stops if they
do not.

llmlingua knows two word rules, picked by the model's name (mBERT's "##", XLM-R's "▁"),
and builds every chunk with the literal tokens "[CLS]", "[SEP]", "[PAD]". For ``builtin``,
inside this benchmark only: tw-keep is copied to a directory named ``xlm-roberta-large-...``
with its special tokens renamed to those literals (same ids, same weights), llmlingua's
XLM-R rule gets the byte-level space marker "Ġ" for "▁", and its window is the model's 256
positions (it assumes 512). The text is given on one line after a space: llmlingua's rule
glues a line break to the next word in a byte-level vocabulary (ours opens a word there),
and its merge needs every chunk to open with a marked piece.

``--device cuda`` runs both on one GPU: ours gets ``device="cuda"``, llmlingua its
``device_map="cuda"`` (both stay float32), and each side's model time is then the sum of its
classifier's forward calls with ``torch.cuda.synchronize()`` before and after each, so work
queued on the GPU is counted as model time, not as the rest (our per-stage comment line keeps
our own ``timings``, whose "model" also holds the softmax and the copy back to the CPU).
``--threads`` stays the number of CPU threads torch uses (tokenizing, merging, the CPU side
of each call).
Everything is offline: the classifiers are built or copied into a temporary directory.

Run:
    .venv/bin/python benchmarks/compression_speed.py                 # every classifier
    .venv/bin/python benchmarks/compression_speed.py --sizes builtin tiny small --repeats 7 \
        --threads 1
    .venv/bin/python benchmarks/compression_speed.py --device cuda --out cuda.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import string
import tempfile
import time
from pathlib import Path

import torch

WORDS = 10_000
SIZES = {
    # name: (hidden, layers, heads); None: the shipped classifier tw-keep
    "builtin": None,
    "tiny": (16, 1, 2),
    "small": (64, 2, 2),
    "base": (768, 12, 12),
}


def make_text(n_words: int, seed: int = 1) -> str:
    """A deterministic testbed text (facts and needle memos) of ``n_words`` words."""
    from tokenwise.testbed.worlds import CorpusConfig, Testbed

    docs = Testbed(seed, corpus=CorpusConfig(fact_repeats=1, markov_docs=0, arithmetic_docs=0,
                                             needle_docs=400)).training_documents()
    lines, count = [], 0
    for doc in docs:
        for line in doc.splitlines():
            n = len(line.split())
            if count + n > n_words:
                lines.append(" ".join(line.split()[: n_words - count]))
                return "\n".join(lines)
            lines.append(line)
            count += n
    return "\n".join(lines)


def build_classifier(directory: Path, text: str, size: str) -> Path:
    """A random BertForTokenClassification with a WordPiece vocabulary trained on ``text``.

    Give it a text other than the one compressed (another seed's world), so that the
    benchmark text splits into several pieces per word as real text does.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.decoder = decoders.WordPiece()
    core.train_from_iterator([text], trainers.WordPieceTrainer(
        vocab_size=2000, show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok = BertTokenizerFast(tokenizer_object=core, do_lower_case=False, model_max_length=512,
                            unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]")
    hidden, layers, heads = SIZES[size]
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=512,
        num_labels=2))
    path = directory / f"bert-base-multilingual-cased-{size}"  # llmlingua picks rules by name
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def builtin_classifier(directory: Path) -> Path:
    """tw-keep, copied with its special tokens named as llmlingua writes them (same ids)."""
    from tokenwise.compression.token_classifier import BUILTIN_CLASSIFIERS

    path = directory / "xlm-roberta-large-tw-keep"  # llmlingua picks rules by name
    shutil.copytree(BUILTIN_CLASSIFIERS["tw-keep"], path)
    names = {"<pad>": "[PAD]", "<s>": "[CLS]", "</s>": "[SEP]"}
    spec = json.loads((path / "tokenizer.json").read_text())
    for tok in spec["added_tokens"]:
        tok["content"] = names.get(tok["content"], tok["content"])
    spec["model"]["vocab"] = {names.get(k, k): v for k, v in spec["model"]["vocab"].items()}
    spec["post_processor"] = json.loads(json.dumps(spec["post_processor"]).replace(
        '"<s>"', '"[CLS]"'))
    (path / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(bos_token="[CLS]", cls_token="[CLS]", eos_token="[SEP]", sep_token="[SEP]",
                  pad_token="[PAD]")
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@contextlib.contextmanager
def byte_level_rule():
    """llmlingua's XLM-R word rule with the byte-level marker "Ġ" for "▁" (inside only)."""
    from llmlingua import prompt_compressor

    def begins(token, model_name, force_tokens, token_map):
        if token in string.punctuation or token in force_tokens or token in set(
                token_map.values()):
            return True
        return token.startswith("Ġ")

    def pure(token, model_name):
        return token.lstrip("Ġ")

    saved = prompt_compressor.is_begin_of_new_word, prompt_compressor.get_pure_token
    prompt_compressor.is_begin_of_new_word, prompt_compressor.get_pure_token = begins, pure
    try:
        yield
    finally:
        prompt_compressor.is_begin_of_new_word, prompt_compressor.get_pure_token = saved


class _Encoding:
    def __init__(self, tokenizer, marker: str = ""):
        self.backend = tokenizer.backend_tokenizer
        self.marker = marker

    def encode(self, text: str) -> list[int]:
        # A byte-level word reaches the counter with its "Ġ" on; count its own text.
        return self.backend.encode(text.lstrip(self.marker) if self.marker else text,
                                   add_special_tokens=False).ids


class Mismatch(Exception):
    """Our decisions differ from llmlingua's, so timing them would compare unequal work."""


def _sync(device: str) -> None:
    """Wait for the GPU's queued work (a no-op on CPU), so a clock reads finished work."""
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(model, device: str, clock: list[float]) -> None:
    """Make ``model``'s forward calls add their (synchronized) seconds to ``clock[0]``."""
    forward = model.forward

    def timed_forward(*args, **kwargs):
        _sync(device)
        t = time.perf_counter()
        out = forward(*args, **kwargs)
        _sync(device)
        clock[0] += time.perf_counter() - t
        return out

    model.forward = timed_forward


def _check_placed(model, device: str, who: str) -> None:
    params = list(model.parameters())
    where = {p.device.type for p in params}
    dtypes = {p.dtype for p in params}
    if where != {device} or dtypes != {torch.float32}:
        raise SystemExit(f"{who}'s classifier is on {where} in {dtypes}; wanted {device} "
                         "in torch.float32")


def run(size: str, text: str, repeats: int, rate: float, our_batch: int | None = None,
        ref_batch: int = 50, device: str = "cpu") -> dict[str, float]:
    from llmlingua import prompt_compressor

    from tokenwise.compression import TokenCounter
    from tokenwise.compression.token_classifier import TokenClassifierCompressor

    counter = TokenCounter.resolve(None)
    builtin = SIZES[size] is None
    marker = "Ġ" if builtin else ""
    if builtin:
        text = " " + " ".join(text.split("\n"))
    with tempfile.TemporaryDirectory() as tmp, (
            byte_level_rule() if builtin else contextlib.nullcontext()):
        path = (builtin_classifier(Path(tmp)) if builtin
                else build_classifier(Path(tmp), make_text(20_000, seed=7), size))
        real = prompt_compressor.tiktoken.encoding_for_model
        prompt_compressor.tiktoken.encoding_for_model = lambda name: _Encoding(
            counter.tokenizer, marker)
        try:
            ref = prompt_compressor.PromptCompressor(
                model_name=str(path), use_llmlingua2=True, device_map=device,
                llmlingua2_config={"max_batch_size": ref_batch})
        finally:
            prompt_compressor.tiktoken.encoding_for_model = real
        # llmlingua's "auto" dtype on "cuda" follows the saved config (float32); make sure.
        ref.model.float()
        ours = TokenClassifierCompressor(path, device=device, **(
            {} if our_batch is None else {"batch_size": our_batch}))
        ref.max_seq_len = ours.max_length  # llmlingua assumes 512 positions
        params = sum(p.numel() for p in ours.model.parameters())
        _check_placed(ref.model, device, "llmlingua")
        _check_placed(ours.model, device, "ours")

        ref_clock, our_clock = [0.0], [0.0]
        _timed(ref.model, device, ref_clock)
        if device == "cuda":
            # On a GPU our own ``timings["model"]`` would count the same finished work (it
            # ends on a copy back to the CPU), but clock both sides the same way.
            _timed(ours.model, device, our_clock)

        def reference_call():
            _sync(device)
            ref_clock[0] = 0.0
            t = time.perf_counter()
            res = ref.compress_prompt(text, rate=rate, return_word_label=True)
            _sync(device)
            return time.perf_counter() - t, ref_clock[0], res

        def our_call(percentile):
            _sync(device)
            our_clock[0] = 0.0
            t = time.perf_counter()
            res = ours.compress(text, rate=rate, percentile=percentile, protect=False,
                                target_model=counter)
            _sync(device)
            model = our_clock[0] if device == "cuda" else res.timings["model"]
            return time.perf_counter() - t, model, res

        # Same decisions first (then the timings compare equal work).
        _, _, ref_res = reference_call()
        _, _, our_res = our_call("chunk")
        pairs = [x.rsplit(" ", 1) for x in ref_res["fn_labeled_original_prompt"].split("\t\t|\t\t")]
        ref_words = [w.lstrip(marker) if marker else w for w, _ in pairs]
        same = (ref_words == our_res.words
                and [int(b) for _, b in pairs] == our_res.keep.astype(int).tolist())
        if not same:
            if ref_words != our_res.words:
                why = f"words differ ({len(ref_words)} theirs, {len(our_res.words)} ours)"
            else:
                flips = sum(int(b) != k for (_, b), k in zip(pairs, our_res.keep, strict=True))
                why = f"{flips} of {len(pairs)} keep decisions differ"
            raise Mismatch(f"{size}: our kept words differ from llmlingua's ({why}); not timed")

        rows: dict[str, list[tuple[float, float]]] = {"llmlingua": [], "ours chunk": [],
                                                       "ours global": []}
        stages: list[dict[str, float]] = []
        for _ in range(repeats):  # interleaved, so load changes hit all three alike
            total, model, _ = reference_call()
            rows["llmlingua"].append((total, model))
            total, model, res = our_call("chunk")
            rows["ours chunk"].append((total, model))
            stages.append(res.timings)
            total, model, res = our_call("global")
            rows["ours global"].append((total, model))
    out = {"params": params, "same": same, "words": len(our_res.words),
           "model_tokens": int(sum(len(x) for x in ours.tokenizer(
               [text], add_special_tokens=False)["input_ids"])),
           "chunk_stages": {k: statistics.median(s[k] for s in stages) for k in stages[0]},
           "ratios": [a[0] / b[0] for a, b in zip(rows["llmlingua"], rows["ours chunk"],
                                                  strict=True)]}
    for name, values in rows.items():
        out[name] = (statistics.median(t for t, _ in values),
                     statistics.median(m for _, m in values))
    out["global_rate"] = res.rate
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--words", type=int, default=WORDS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.33)
    parser.add_argument("--our-batch-size", type=int, default=None,
                        help="chunks per forward pass for ours (default: our default, 16)")
    parser.add_argument("--ref-batch-size", type=int, default=50,
                        help="chunks per forward pass for llmlingua (its default: 50)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads torch uses, for both (default: torch's choice)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where both classifiers run (default: cpu)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the printed lines to this file")
    args = parser.parse_args()
    # Offline always: every model is read from a local directory.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() "
                         f"is False; torch {torch.__version__}, built for CUDA "
                         f"{torch.version.cuda}); use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out.open("w", encoding="utf-8") if args.out else None

    def emit(line: str = "") -> None:
        print(line, flush=True)
        if out is not None:  # line by line, so a cut-off run keeps what it measured
            out.write(line + "\n")
            out.flush()

    import transformers

    where = ("cpu" if args.device == "cpu"
             else f"cuda ({torch.cuda.get_device_name()}, CUDA {torch.version.cuda})")
    text = make_text(args.words)
    emit(f"device: {where}; torch {torch.__version__}, transformers {transformers.__version__}")
    emit(f"text: {len(text.split())} words, rate {args.rate}, torch threads "
         f"{torch.get_num_threads()}, median of {args.repeats}, batch size llmlingua "
         f"{args.ref_batch_size}, ours {args.our_batch_size or 'default (16)'}")
    emit()
    emit("| classifier | params | who | total s | model s | rest s | speed-up (total) |")
    emit("|---|---|---|---|---|---|---|")
    failed = []
    try:
        for size in args.sizes:
            try:
                r = run(size, text, args.repeats, args.rate, args.our_batch_size,
                        args.ref_batch_size, args.device)
            except Mismatch as exc:  # the other sizes still get measured
                emit(f"<!-- {exc} -->")
                failed.append(size)
                continue
            base_total = r["llmlingua"][0]
            for who in ("llmlingua", "ours chunk", "ours global"):
                total, model = r[who]
                emit(f"| {size} | {r['params'] / 1e6:.2f}M | {who} | {total:.3f} | "
                     f"{model:.3f} | {total - model:.3f} | {base_total / total:.2f}x |")
            stages = ", ".join(f"{k} {1000 * v:.1f}" for k, v in r["chunk_stages"].items())
            ratios = ", ".join(f"{x:.2f}" for x in sorted(r["ratios"]))
            emit(f"<!-- {size}: {r['words']} words, {r['model_tokens']} classifier tokens; "
                 f"kept words equal llmlingua's: {r['same']}; global rate met: "
                 f"{r['global_rate']:.4f}; ours chunk, median ms: {stages}; per-repeat "
                 f"llmlingua/ours-chunk ratios: {ratios} -->")
    finally:
        if out is not None:
            out.close()
    if failed:
        raise SystemExit(f"not timed, decisions differ: {', '.join(failed)}")


if __name__ == "__main__":
    main()
