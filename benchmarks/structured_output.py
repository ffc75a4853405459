"""Structured output (JSON): the grammar engines alone, and our sampler in ``tw.generate``.

Issue 18, "Measure": per-token overhead of structured output against free generation, on the
built-in tw-small (V = 1,024) and on a real model, SmolLM2-135M-Instruct (V = 49,152; Q4 GGUF
weights dequantised to float32, figures differ from the bf16 originals), and ours against the
grammar engine alone. Three JSON targets: two schemas (``person``: nested object, array,
enum, required fields, strings with escapes; ``orders``: an array of objects with enums,
numbers, booleans and a nested array) and free JSON (OpenAI's ``json_object``: any object).

(a) Each engine alone (xgrammar, llguidance, outlines-core), on one valid document per target
    tokenized by the model's own tokenizer: the tokenizer set-up time (once per model), the
    compile time per target, and the per-token cost of walking the document: the mask of
    allowed tokens (a packed bitmask) then the advance by the document's token. The walk also
    checks correctness: every document token must be allowed, an end id must be allowed at
    the end and nowhere before, and no special token (``<s>``, ``<|im_start|>``, ...) may be
    allowed anywhere (special tokens are not JSON text; a decoder that skips them would lose
    what the grammar saw).
(b) Our :class:`tokenwise.sampling.JsonGrammar` (llguidance) on the same walk, per token:
    the sampler's call on a ``(1, V)`` logits row (mask unpacked and applied) plus
    ``observe``, without and with reading ``constrained_entropy``; ratio to the engine alone.
(c) ``tw.generate`` with ``Chain([JsonGrammar(...), Temperature(0.8)])`` against free
    generation with ``Temperature(0.8)`` alone, from the same prompt (SmolLM2: a chat asking
    for the JSON): ms per decode step after the first (the model's forward, the sampler, the
    records), batch 1, seeds fixed. Untimed: each constrained output is parsed and checked
    against the schema (a small validator here, independent of the engines), the mean model
    and constrained entropies per token are kept, and the grammar placed after
    ``TopP(0.95)`` (where a truncating step can drop every token the grammar allows) is run
    once per seed.

Timing: engines, and constrained/free runs, alternate round by round (median of
``--repeats``), with ``--threads`` torch threads; read the ratios, absolute times on a shared
CPU move between runs.

Run (defaults are the full run):
    .venv/bin/python benchmarks/structured_output.py
    .venv/bin/python benchmarks/structured_output.py --model tw-small --repeats 3 \
        --gen-repeats 1   # pilot
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

import tokenwise as tw
from tokenwise.errors import TokenwiseError
from tokenwise.models.chat_template import encode_template
from tokenwise.sampling import Chain, Temperature, TopP
from tokenwise.sampling.grammar import MAX_WHITESPACE, JsonGrammar, json_grammar

MODELS = ("tw-small", "smollm2-135m")
ENGINES = ("xgrammar", "llguidance", "outlines-core")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                           "zip": {"type": "string"}},
            "required": ["street", "city"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
        "note": {"type": "string"},
    },
    "required": ["name", "age", "role", "address", "tags", "note"],
    "additionalProperties": False,
}
ORDERS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "status": {"enum": ["open", "paid", "shipped"]},
            "total": {"type": "number"},
            "gift": {"type": "boolean"},
            "items": {"type": "array", "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"], "additionalProperties": False}},
        },
        "required": ["id", "status", "total", "gift", "items"],
        "additionalProperties": False,
    },
}
#: target -> (schema, or None for json_object; one valid document)
TARGETS = {
    "person": (PERSON, {
        "name": "Ada Lovelace", "age": 36, "role": "admin",
        "address": {"street": "12 St James's Square", "city": "London", "zip": "SW1Y 4JH"},
        "tags": ["mathematician", "writer", "analyst"],
        "note": "She wrote: \"The Analytical Engine weaves algebraic patterns\"\n\tcafé ☕",
    }),
    "orders": (ORDERS, [
        {"id": 1001, "status": "paid", "total": 59.5, "gift": False,
         "items": [{"sku": "A-17", "qty": 2}, {"sku": "B-3", "qty": 1}]},
        {"id": 1002, "status": "shipped", "total": 1249.0, "gift": True,
         "items": [{"sku": "Z-900", "qty": 1}]},
        {"id": 1003, "status": "open", "total": 7.25, "gift": False, "items": []},
    ]),
    "json_object": (None, {
        "title": "Notes", "count": 3, "ok": True, "missing": None,
        "values": [1, 2.5, -3e-2, {"deep": ["a", "b\\c"]}],
        "meta": {"author": {"first": "Grace", "last": "Hopper"}, "year": 1952},
    }),
}
PROMPTS = {
    "tw-small": "{",
    "smollm2-135m": "Reply with JSON only. Describe a person (name, age, role, address, tags, "
                    "note) or a list of orders.\n",
}
FREE_PROMPT = {
    "tw-small": "The capital of France is",
    "smollm2-135m": "Once upon a time, in a small village by the sea, there lived",
}


# -- engine adapters: set-up, compile, walk ---------------------------------------------

def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte <-> unicode table, reversed (byte-level BPE token text -> bytes)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def special_ids(tok) -> list[int]:
    ids = set(tok.all_special_ids)
    ids |= {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return sorted(ids)


class XGrammar:
    name = "xgrammar"

    def setup(self, tok, vocab, ends, threads):
        import xgrammar as xgr
        self.xgr, self.vocab, self.threads = xgr, vocab, threads
        self.info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab,
                                                       stop_token_ids=sorted(ends))

    def compile(self, schema):
        # a fresh compiler each time: its cache would make the second compile free
        compiler = self.xgr.GrammarCompiler(self.info, max_threads=self.threads,
                                            cache_enabled=False)
        # strict_mode=False: JSON Schema's own additionalProperties default (strict would
        # turn {"type": "object"} into "{}" only); the whitespace bound is ours
        return compiler.compile_json_schema(schema or {"type": "object"}, strict_mode=False,
                                            any_whitespace=True,
                                            max_whitespace_cnt=MAX_WHITESPACE)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self):
        return self.xgr.allocate_token_bitmask(1, self.vocab)

    def mask(self, m, bm):
        m.fill_next_token_bitmask(bm)

    def advance(self, m, t):
        return m.accept_token(t)


class LLGuidance:
    name = "llguidance"

    def setup(self, tok, vocab, ends, threads):
        import llguidance
        import llguidance.hf
        self.llg, self.vocab = llguidance, vocab
        # not engine_tokenizer(): its cache would make the repeats free
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab, eos_token=sorted(ends))

    def compile(self, schema):
        grammar = json_grammar(schema)  # the sampler's grammar: same whitespace bound
        m = self.llg.LLMatcher(self.tok, grammar, log_level=0)  # builds the parser
        assert not m.is_error(), m.get_error()
        return m

    def matcher(self, template):
        return template.deep_copy()  # as the sampler starts each row

    def bitmask(self):
        return torch.zeros(1, (self.vocab + 31) // 32, dtype=torch.int32)

    def mask(self, m, bm):
        m.unsafe_compute_mask_ptr(bm.data_ptr(), bm.numel() * 4)

    def advance(self, m, t):
        return m.consume_token(t)


class OutlinesCore:
    name = "outlines-core"

    def setup(self, tok, vocab, ends, threads):
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema
        self.oc, self.regex, self.vocab = outlines_core, build_regex_from_schema, vocab
        # Vocabulary.from_pretrained reads the hub; build the byte map here instead
        decoder, skip = _byte_decoder(), set(special_ids(tok)) | set(ends)
        table: dict[bytes, list[int]] = {}
        for text, i in tok.get_vocab().items():
            if i not in skip:
                table.setdefault(bytes(decoder[c] for c in text), []).append(i)
        self.vocabulary = outlines_core.Vocabulary(min(ends), table)

    def compile(self, schema):
        return self.oc.Index(self.regex(json.dumps(schema or {"type": "object"})),
                             self.vocabulary)

    def matcher(self, index):
        return self.oc.Guide(index)

    def bitmask(self):
        return torch.zeros(1, (self.vocab + 31) // 32, dtype=torch.int32)

    def mask(self, m, bm):
        m.write_mask_into(bm.data_ptr(), bm.numel(), 4)

    def advance(self, m, t):
        try:
            m.advance(t, return_tokens=False)
        except ValueError:  # "No next state found": the regex refuses the token
            return False
        return True


ADAPTERS = {"xgrammar": XGrammar, "llguidance": LLGuidance, "outlines-core": OutlinesCore}


def unpack(bm: torch.Tensor, vocab: int) -> torch.Tensor:
    bits = (bm[:, :, None] >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.reshape(bm.shape[0], -1)[:, :vocab].bool()


def walk(engine, compiled, doc_ids, ends, specials, check: bool) -> dict:
    """Mask then advance for each document token; with ``check``, the correctness counts."""
    m, bm = engine.matcher(compiled), engine.bitmask()
    t_mask = t_adv = 0.0
    bad = {"document_token_refused": 0, "end_allowed_early": 0, "special_allowed_steps": 0,
           "end_refused_at_end": 0}
    end_list = sorted(ends)
    walked = 0
    for t in doc_ids:
        t0 = time.perf_counter()
        engine.mask(m, bm)
        t1 = time.perf_counter()
        ok = engine.advance(m, t)
        t2 = time.perf_counter()
        t_mask += t1 - t0
        t_adv += t2 - t1
        walked += 1
        if check:
            allowed = unpack(bm, engine.vocab)[0]
            bad["end_allowed_early"] += int(bool(allowed[end_list].any()))
            bad["special_allowed_steps"] += int(bool(allowed[specials].any()))
            if not (ok and allowed[t]):
                # the engine refuses valid JSON: the rest of the document cannot be walked
                bad["document_token_refused"] = len(doc_ids) - walked + 1
                bad["first_refused_at"] = walked - 1
                break
        elif not ok:
            break
    if check and not bad["document_token_refused"]:
        engine.mask(m, bm)
        allowed = unpack(bm, engine.vocab)[0]
        bad["end_refused_at_end"] = int(not allowed[end_list].any())
    return {"mask_us": 1e6 * t_mask / walked, "advance_us": 1e6 * t_adv / walked,
            "total_us": 1e6 * (t_mask + t_adv) / walked, "walked_tokens": walked,
            **(bad if check else {})}


def median(xs):
    return statistics.median(xs)


def engines_alone(lm, engines, repeats, compile_repeats, threads) -> dict:
    tok, vocab, ends = lm.tokenizer, lm.vocab_size, set(lm.end_token_ids)
    specials = [i for i in special_ids(tok) if i not in ends and i < vocab]
    out: dict = {"setup_s": {}, "targets": {}}
    adapters = {}
    for name in engines:
        a = ADAPTERS[name]()
        t = time.perf_counter()
        a.setup(tok, vocab, ends, threads)
        out["setup_s"][name] = [time.perf_counter() - t]
        adapters[name] = a
    for _ in range(compile_repeats - 1):  # the set-up again, interleaved
        for name in engines:
            t = time.perf_counter()
            adapters[name].setup(tok, vocab, ends, threads)
            out["setup_s"][name].append(time.perf_counter() - t)
    # the first set-up is the one a process pays; xgrammar caches it, so later ones are free
    out["setup_first_s"] = {n: v[0] for n, v in out["setup_s"].items()}
    out["setup_s"] = {n: median(v) for n, v in out["setup_s"].items()}
    for target, (schema, doc) in TARGETS.items():
        doc_ids = lm.encode(json.dumps(doc, ensure_ascii=False))
        rows: dict = {"document_tokens": len(doc_ids)}
        compile_s: dict = {n: [] for n in engines}
        compiled = {}
        for _ in range(compile_repeats):  # interleaved
            for n in engines:
                t = time.perf_counter()
                compiled[n] = adapters[n].compile(copy.deepcopy(schema))
                compile_s[n].append(time.perf_counter() - t)
        checks = {n: walk(adapters[n], compiled[n], doc_ids, ends, specials, True)
                  for n in engines}
        per_token: dict = {n: [] for n in engines}
        for _ in range(repeats):  # interleaved, round by round
            for n in engines:
                per_token[n].append(walk(adapters[n], compiled[n], doc_ids, ends, specials,
                                         False))
        for n in engines:
            rows[n] = {"compile_s": median(compile_s[n]),
                       "mask_us": median([r["mask_us"] for r in per_token[n]]),
                       "advance_us": median([r["advance_us"] for r in per_token[n]]),
                       "total_us": median([r["total_us"] for r in per_token[n]]),
                       # the best walk: load on a shared CPU only adds time
                       "total_us_best": min(r["total_us"] for r in per_token[n]),
                       **{k: v for k, v in checks[n].items() if not k.endswith("_us")}}
        out["targets"][target] = rows
    return out


# -- a small JSON Schema check (the subset the targets use), independent of the engines --

def violations(value, schema, path="$") -> list[str]:
    """Where ``value`` breaks ``schema`` (type, enum, properties, required,
    additionalProperties, items); [] when it conforms. None: any JSON object."""
    if schema is None:
        return [] if isinstance(value, dict) else [f"{path}: not an object"]
    out = []
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool,
             "null": type(None)}
    kind = schema.get("type")
    if kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        out.append(f"{path}: not an integer")
    elif kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        out.append(f"{path}: not a number")
    elif kind in kinds and (not isinstance(value, kinds[kind])
                            or (kind != "boolean" and isinstance(value, bool))):
        out.append(f"{path}: not a {kind}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in the enum")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                out += violations(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}: unexpected {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += violations(v, schema["items"], f"{path}[{i}]")
    return out


def check_output(text: str, schema) -> str:
    """'valid', 'invalid: ...' or 'unparsed: ...'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"unparsed: {exc}"
    bad = violations(value, schema)
    return "valid" if not bad else f"invalid: {bad[0]}"


# -- (b) our sampler against the engine alone, on the same walk --------------------------

def sampler_vs_engine(lm, repeats) -> dict:
    tok, vocab, ends = lm.tokenizer, lm.vocab_size, set(lm.end_token_ids)
    engine = LLGuidance()
    engine.setup(tok, vocab, ends, 1)
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(0)) * 3
    temperature = Temperature(0.8)
    out = {}
    for target, (schema, doc) in TARGETS.items():
        doc_ids = lm.encode(json.dumps(doc, ensure_ascii=False))
        grammar = JsonGrammar.for_model(lm, schema)
        template = engine.compile(copy.deepcopy(schema))

        def ours(read_entropy, grammar=grammar, doc_ids=doc_ids):
            grammar.reset()
            grammar.observe_prompt([[0]])
            for t in doc_ids:
                grammar(logits)
                if read_entropy:
                    grammar.constrained_entropy  # noqa: B018  (the server reads it)
                grammar.observe(torch.tensor([t]))

        def temperature_only(doc_ids=doc_ids):
            for _ in doc_ids:
                temperature(logits)

        fns = {"engine_alone": lambda t=template, d=doc_ids: walk(engine, t, d, ends, [], False),
               "ours": lambda: ours(False), "ours_with_entropy": lambda: ours(True),
               "temperature_alone": temperature_only}
        times: dict = {k: [] for k in fns}
        for _ in range(repeats):  # interleaved, round by round
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(1e6 * (time.perf_counter() - t) / len(doc_ids))
        row = {k + "_us": median(v) for k, v in times.items()}
        row.update({k + "_us_best": min(v) for k, v in times.items()})
        row["ours_over_engine"] = row["ours_us"] / row["engine_alone_us"]
        row["ours_with_entropy_over_engine"] = (row["ours_with_entropy_us"]
                                                / row["engine_alone_us"])
        out[target] = row
    return out


# -- (c) in tw.generate: constrained against free generation -------------------------------

def json_prompt(lm, target):
    if lm.tokenizer.chat_template is None:
        return PROMPTS.get(lm.name, "{")
    ask = {"person": "Describe a fictional person as JSON with the keys name, age, role "
                     "(admin, user or guest), address (street, city, zip), tags and note.",
           "orders": "List two or three shop orders as a JSON array; each has id, status "
                     "(open, paid or shipped), total, gift and items (sku, qty).",
           "json_object": "Describe your favourite book as a JSON object."}[target]
    return encode_template(lm.tokenizer, [{"role": "user", "content": ask}])


def timed_run(lm, prompt, sampler, seed, max_new) -> tuple[float, int, object]:
    """(decode seconds after the first token, decode steps after the first, generation)."""
    stream = tw.generate(lm, prompt, sampler, seed=seed, max_new_tokens=max_new, stream=True)
    try:
        records = [next(stream)]
    except StopIteration:  # the end of text first: no decode step to time
        return 0.0, 0, []
    t = time.perf_counter()
    for record in stream:
        records.append(record)
    seconds = time.perf_counter() - t
    steps = len(records) - 1 + (len(records) < max_new)  # the EOS step yields no record
    return seconds, steps, records


def in_generate(lm, repeats, seeds, max_new_tokens) -> dict:
    out = {}
    for target, (schema, _) in TARGETS.items():
        grammar = JsonGrammar.for_model(lm, schema)
        prompt = json_prompt(lm, target)
        # tw-small reads 256 tokens: the prompt and the reply must fit
        max_new = min(max_new_tokens, lm.context_length + 1 - len(lm.encode(prompt, add_bos=True)))
        constrained = Chain([grammar, Temperature(0.8)])
        free = Temperature(0.8)
        per_step: dict = {"constrained": [], "free": []}
        steps: dict = {"constrained": [], "free": []}
        for _ in range(repeats):  # interleaved, round by round
            for seed in seeds:
                for kind, sampler in (("constrained", constrained), ("free", free)):
                    seconds, n, _ = timed_run(lm, prompt, sampler, seed, max_new)
                    if n:
                        per_step[kind].append(1e3 * seconds / n)
                        steps[kind].append(n)
        # one untimed pass per seed: the outputs, and both entropies per token
        outputs, model_h, constrained_h = [], [], []
        for seed in seeds:
            stream = tw.generate(lm, prompt, constrained, seed=seed, max_new_tokens=max_new,
                                 stream=True)
            ids = []
            for record in stream:  # the sampler's last call was this record's step
                ids.append(record.id)
                model_h.append(record.entropy)
                constrained_h.append(float(grammar.constrained_entropy[0]))
            text = lm.decode(ids, skip_special_tokens=True)
            outputs.append({"seed": seed, "tokens": len(ids), "complete": grammar.complete[0],
                            "check": check_output(text, schema), "text": text[:400]})
        after_top_p = []
        for seed in seeds:
            chain = Chain([Temperature(0.8), TopP(0.95), JsonGrammar.for_model(lm, schema)])
            try:
                g = tw.generate(lm, prompt, chain, seed=seed, max_new_tokens=max_new)
                after_top_p.append(check_output(g.text, schema))
            except TokenwiseError as exc:
                after_top_p.append(f"error: {str(exc)[:160]}")
        c, f = median(per_step["constrained"]), median(per_step["free"])
        out[target] = {"max_new_tokens": max_new,
                       "constrained_ms_per_step": c, "free_ms_per_step": f,
                       "overhead_ms_per_step": c - f, "ratio": c / f,
                       "median_steps": {k: median(v) for k, v in steps.items()},
                       "valid": sum(o["check"] == "valid" for o in outputs),
                       "runs": len(outputs),
                       "mean_model_entropy": statistics.fmean(model_h) if model_h else None,
                       "mean_constrained_entropy":
                           statistics.fmean(constrained_h) if constrained_h else None,
                       "outputs": outputs,
                       "after_top_p": after_top_p}
    return out


def versions() -> dict:
    out = {}
    for pkg in ("torch", "transformers", "xgrammar", "llguidance", "outlines_core"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, action="append",
                        help="model (repeatable; default both)")
    parser.add_argument("--engine", choices=ENGINES, action="append",
                        help="engine for (a) (repeatable; default all three)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed walks per engine and target (a, b)")
    parser.add_argument("--gen-repeats", type=int, default=2,
                        help="timed generation rounds per seed and target (c)")
    parser.add_argument("--compile-repeats", type=int, default=3,
                        help="timed set-ups and compiles per engine and target")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="generation seeds for (c)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads and xgrammar compile threads")
    parser.add_argument("--skip", choices=("a", "b", "c"), action="append", default=[],
                        help="leave a part out")
    parser.add_argument("--json", default=str(Path(__file__).resolve().parent / "results"
                                              / "structured_output.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"command": " ".join(["benchmarks/structured_output.py", *sys.argv[1:]]),
              "repeats": args.repeats, "gen_repeats": args.gen_repeats,
              "compile_repeats": args.compile_repeats,
              "seeds": args.seeds, "max_new_tokens": args.max_new_tokens,
              "threads": args.threads, "max_whitespace": MAX_WHITESPACE,
              "versions": versions(), "machine": platform.machine(),
              "weights": "smollm2-135m: Q4 GGUF dequantised to float32", "models": {}}
    for name in args.model or list(MODELS):
        lm = tw.load(name)
        res: dict = {"vocab": lm.vocab_size, "tokenizer_len": len(lm.tokenizer),
                     "end_token_ids": sorted(lm.end_token_ids)}
        print(f"\n## {name}: V = {lm.vocab_size}" + (
            "; Q4 GGUF weights, differ from the bf16 originals" if name != "tw-small" else ""),
            flush=True)
        if "a" not in args.skip:
            res["engines"] = engines_alone(lm, args.engine or list(ENGINES), args.repeats,
                                           args.compile_repeats, args.threads)
            print_engines(res["engines"])
        if "b" not in args.skip:
            res["sampler_vs_engine"] = sampler_vs_engine(lm, args.repeats)
            print_sampler(res["sampler_vs_engine"])
        if "c" not in args.skip:
            res["generate"] = in_generate(lm, args.gen_repeats, args.seeds,
                                          args.max_new_tokens)
            print_generate(res["generate"])
        result["models"][name] = res
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.json}")


def print_engines(res) -> None:
    engines = list(res["setup_s"])
    print("\n(a) engines alone; tokenizer set-up s, first (median): "
          + ", ".join(f"{n} {res['setup_first_s'][n]:.3f} ({res['setup_s'][n]:.3f})"
                      for n in engines))
    print("| target | tokens | engine | compile ms | mask us/token | advance us/token | "
          "total us/token (best) | / llguidance | refused doc tokens | end early | "
          "steps allowing a special token | end refused at end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for target, rows in res["targets"].items():
        base = rows.get("llguidance", {}).get("total_us")
        for n in engines:
            r = rows[n]
            ratio = f"{r['total_us'] / base:.2f}x" if base else "-"
            print(f"| {target} | {rows['document_tokens']} | {n} | {1e3 * r['compile_s']:.1f} | "
                  f"{r['mask_us']:.1f} | {r['advance_us']:.1f} | {r['total_us']:.1f} "
                  f"({r['total_us_best']:.1f}) | {ratio} | "
                  f"{r['document_token_refused']} | {r['end_allowed_early']} | "
                  f"{r['special_allowed_steps']} | {r['end_refused_at_end']} |", flush=True)


def print_sampler(res) -> None:
    print("\n(b) JsonGrammar (llguidance) per token: call on (1, V) logits + observe")
    print("| target | engine alone us (best) | ours us (best) | ours + constrained entropy us "
          "(best) | ours / engine | with entropy / engine | Temperature alone us (best) |")
    print("|---|---|---|---|---|---|---|")
    for target, r in res.items():
        cells = [f"{r[k + '_us']:.1f} ({r[k + '_us_best']:.1f})"
                 for k in ("engine_alone", "ours", "ours_with_entropy", "temperature_alone")]
        print(f"| {target} | {cells[0]} | {cells[1]} | {cells[2]} | "
              f"{r['ours_over_engine']:.2f}x | {r['ours_with_entropy_over_engine']:.2f}x | "
              f"{cells[3]} |", flush=True)


def print_generate(res) -> None:
    print("\n(c) tw.generate, batch 1: Chain([JsonGrammar, Temperature(0.8)]) vs "
          "Temperature(0.8), ms per decode step")
    print("| target | constrained ms | free ms | overhead ms | constrained / free | "
          "median steps (constrained, free) | valid JSON | mean entropy: model, constrained |")
    print("|---|---|---|---|---|---|---|---|")
    for target, r in res.items():
        steps = r["median_steps"]
        print(f"| {target} | {r['constrained_ms_per_step']:.2f} | {r['free_ms_per_step']:.2f} | "
              f"{r['overhead_ms_per_step']:.3f} | {r['ratio']:.3f}x | "
              f"{steps['constrained']}, {steps['free']} | {r['valid']} / {r['runs']} | "
              f"{r['mean_model_entropy']:.3f}, {r['mean_constrained_entropy']:.3f} |",
              flush=True)
        for o in r["outputs"]:
            print(f"    seed {o['seed']}: {o['check']}, {o['tokens']} tokens: "
                  f"{o['text'][:120]!r}")
        print(f"    after TopP(0.95): {r['after_top_p']}")


if __name__ == "__main__":
    main()
