"""The embedded default's data: a small IE instruction set generated from a seed, and its tokenizer.

`ensure_default_assets(cache_dir)` writes, once, into cache_dir:
  sft.jsonl        IEInstruct-style records {"dataset", "id", "messages"} (data/formats.read_sft)
  dpo.json         IEFeedback-style JSON array {"dataset", "id", "messages", "chosen", "rejected"}
  heldout.jsonl    IE test records (NER, relation, event; zero- and few-shot) from another seed,
                   none of whose prompts occurs in sft.jsonl: the default's held-out test set
  heldout_dpo.json held-out preference pairs built the same way as dpo.json from those records
  prompts.jsonl    a prompt pool (with gold answers) for IEFeedback sampling, from a third seed,
                   apart from both the SFT data and the held-out set
  tokenizer.model  a BPE sentencepiece model trained on that text (data/tokenizer.train_tokenizer)
  manifest.json    settings + sha256 of the three files, written last: its presence with matching
                   hashes is what "complete" means, so an interrupted run is simply redone.
Same seed and sizes -> byte-identical files (Python's `random.Random` sequence is stable).

Tasks (answers are deterministic functions of the text and the instruction, so a tiny model can
learn them): NER over person/location/organization/date, relation classification between two
named entities, event detection (trigger: type), each zero-shot or few-shot (demonstration turns
answered with "[Answer]: ...", as ADELIE's few-shot files), some under a system prompt, plus
general chat (arithmetic, upper-casing, word counts). The instruction may ask for a subset of the
types, which changes the answer. DPO pairs: chosen = gold answer, rejected = the gold answer with
one wrong type, one missing span, or one invented span (never equal to the gold).
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from ie_engine.data.files import sha256_file, write_atomic
from ie_engine.data.tokenizer import train_tokenizer

PEOPLE = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Marie Curie", "Niels Bohr", "Emmy Noether",
          "Carl Gauss", "Lise Meitner", "Kurt Godel", "Rosalind Franklin", "John Nash", "Ibn Sina",
          "Hedy Lamarr", "Srinivasa Ramanujan", "Chien-Shiung Wu", "Paul Dirac", "Sofia Kovalevskaya",
          "Max Planck", "Dorothy Hodgkin", "Enrico Fermi", "José Rizal", "Ana Müller"]
PLACES = ["Vienna", "Paris", "Kyoto", "Nairobi", "Lima", "Oslo", "Cairo", "Zürich", "Toronto",
          "Mumbai", "Quito", "Hanoi", "Dublin", "Seville", "Perth", "Tbilisi", "São Paulo", "Bergen"]
ORGS = ["Acme Labs", "Globex", "Initech", "the Red Cross", "Northwind Bank", "Umbrella Corp",
        "the World Bank", "Stark Industries", "Blue Origin Foods", "the City Council",
        "Vandelay Imports", "Oceanic Airlines", "the National Library", "Helios Energy"]
DATES = ["March 3 , 1998", "June 12 , 2004", "1987", "January 2011", "May 9 , 2016", "2020",
         "October 30 , 1975", "August 2008", "December 1 , 2012", "April 2023", "1961"]
SLOTS = {"person": PEOPLE, "location": PLACES, "organization": ORGS, "date": DATES}

NER_SENTENCES = [
    "{person} joined {organization} in {location} on {date} .",
    "On {date} , {person} flew from {location} to {location2} .",
    "{organization} opened a new office in {location} .",
    "{person} and {person2} met at {organization} .",
    "The report was published by {organization} in {date} .",
    "{person} grew up in {location} .",
    "It rained all week , so nobody went outside .",
    "{person} left {organization} in {date} to teach in {location} .",
    "Officials from {organization} and {organization2} signed the deal in {location} .",
]
RELATIONS = {  # name: (head type, tail type, sentence templates with {h} {t})
    "work for": ("person", "organization", ["{h} works for {t} as an analyst .",
                                            "{h} was hired by {t} last spring ."]),
    "born in": ("person", "location", ["{h} was born in {t} .", "{h} , a native of {t} , spoke ."]),
    "located in": ("organization", "location", ["{h} is based in {t} .",
                                                "{h} has its headquarters in {t} ."]),
    "founded by": ("organization", "person", ["{h} was founded by {t} .",
                                              "{t} started {h} with two friends ."]),
    "Not related": ("person", "location", ["{h} read a novel set in {t} .",
                                           "{h} once saw a photo of {t} ."]),
}
EVENTS = {  # type: (triggers, sentence templates with {trigger})
    "Attack": (["attacked", "bombed", "raided"], ["Rebels {trigger} the base near {location} ."]),
    "Election": (["elected", "re-elected"], ["{person} was {trigger} mayor of {location} in {date} ."]),
    "Meet": (["met", "visited"], ["{person} {trigger} {person2} in {location} ."]),
    "Transport": (["traveled", "flew", "moved"], ["{person} {trigger} to {location} on {date} ."]),
    "Marry": (["married", "wed"], ["{person} {trigger} {person2} in {location} ."]),
}
NER_INSTR = [
    "Please extract and classify the named entities in the text according to the categories: "
    "[{options}]. If there are no entities, respond with \"No entities found\". Please give the "
    "answer in the form \"[Answer]: {{entity}}: {{type}}; \".\nText: '{text}'",
    "Given the text: '{text}'\nFind every entity of the types [{options}] and list it with its "
    "type as \"[Answer]: {{entity}}: {{type}}; \". If none, say \"No entities found\".",
]
RE_INSTR = [
    "Find the relation between \"{h}\" and \"{t}\" in the text: '{text}'. Choose from the "
    "categories: [{options}]. If there is no relation, mention it as \"Not related\". Please give "
    "the answer in the tuple form \"[Answer]: ({{subject}}; {{relation}}; {{object}})\".",
    "Text: '{text}'\nWhat is the relation of \"{h}\" to \"{t}\"? Options: [{options}]. Answer "
    "as \"[Answer]: ({{subject}}; {{relation}}; {{object}})\".",
]
ED_INSTR = [
    "Identify the event triggers in the text and classify them into the event types: [{options}]. "
    "If there are no events, respond with \"No events found\". Please give the answer in the form "
    "\"[Answer]: {{trigger}}: {{type}}; \".\nText: '{text}'",
]
SYSTEM = "You are a helpful assistant. Follow the user instruction to extract information."
WORDS = ["river", "lantern", "copper", "meadow", "violin", "harbor", "pepper", "glacier", "orbit"]


NONE = {"ner": "No entities found", "ed": "No events found"}
_SLOT = re.compile(r"\{(person|location|organization|date)\d?\}")


def _fill(rng: random.Random, template: str) -> tuple[str, list[tuple[str, str]]]:
    """Fill {type}/{type2} slots with distinct values; return text and (span, type) in order."""
    used: list[str] = []
    items = []

    def value(m: re.Match) -> str:
        used.append(rng.choice([v for v in SLOTS[m.group(1)] if v not in used]))
        items.append((used[-1], m.group(1)))
        return used[-1]
    return _SLOT.sub(value, template), items


def _ner(rng, options=None):
    """-> (text, gold, options): gold is [(span, type)] restricted to the asked types."""
    options = options or rng.sample(list(SLOTS), rng.randint(1, 4))
    text, items = _fill(rng, rng.choice(NER_SENTENCES))
    return text, [it for it in items if it[1] in options], options


def _ed(rng, options=None):
    options = options or rng.sample(list(EVENTS), rng.randint(2, 5))
    clauses, items = [], []
    for _ in range(rng.choice([1, 1, 2])):
        kind = rng.choice(list(EVENTS))
        triggers, templates = EVENTS[kind]
        trigger = rng.choice(triggers)
        clauses.append(_fill(rng, rng.choice(templates).replace("{trigger}", trigger))[0][:-2])
        items.append((trigger, kind))
    text = " , and then ".join(clauses) + " ."
    return text, [it for it in items if it[1] in options], options


def _re(rng, options=None):
    """-> (text, (head, relation, tail), options); "Not related" is never listed as an option."""
    options = options or rng.sample([r for r in RELATIONS if r != "Not related"], rng.randint(2, 4))
    rel = rng.choice(options + ["Not related"])
    head_kind, tail_kind, templates = RELATIONS[rel]
    h = rng.choice(SLOTS[head_kind])
    t = rng.choice([v for v in SLOTS[tail_kind] if v != h])
    return rng.choice(templates).format(h=h, t=t), (h, rel, t), options


def _answer(task: str, gold) -> str:
    if task == "re":
        return "[Answer]: ({}; {}; {})".format(*gold)
    return "[Answer]: " + ("; ".join(f"{s}: {t}" for s, t in gold) + ";" if gold else NONE[task])


def _user(task: str, rng, text, gold, options, first: bool) -> str:
    opts = ", ".join(options)
    if task == "re":
        if first:
            return rng.choice(RE_INSTR).format(text=text, h=gold[0], t=gold[2], options=opts)
        return f"Text: '{text}'\nEntities: \"{gold[0]}\" and \"{gold[2]}\""
    if first:
        return rng.choice(NER_INSTR if task == "ner" else ED_INSTR).format(text=text, options=opts)
    return f"Text: '{text}'"


def _ie_conversation(rng: random.Random, task: str, n_demos: int):
    """(messages without the last answer, gold answer of the last turn, task, gold, options)."""
    make = {"ner": _ner, "ed": _ed, "re": _re}[task]
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.15 else []
    options = None
    for turn in range(n_demos + 1):
        text, gold, options = make(rng, options)
        messages.append({"role": "user", "content": _user(task, rng, text, gold, options, turn == 0)})
        if turn < n_demos:
            messages.append({"role": "assistant", "content": _answer(task, gold)})
    return messages, text, gold, options


def _copy_source(rng: random.Random) -> str:
    """Something to copy: mostly a random list of the tasks' words and names (nothing to guess
    from, so only copying answers it), else a sentence of the NER task."""
    if rng.random() < 0.25:
        return _fill(rng, rng.choice(NER_SENTENCES))[0]
    pool = sorted({w for v in WORDS + [v for vs in SLOTS.values() for v in vs]
                   + [t for ts, _ in EVENTS.values() for t in ts] for w in v.split()})
    return " ".join(rng.choice(pool) for _ in range(rng.randint(4, 12)))


def _chat(rng: random.Random) -> list[dict]:
    """General chat, mostly copying (what extraction mostly is): repeat a sentence or a list,
    then arithmetic, upper-casing and word counts."""
    messages = []
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice([0, 0, 0, 0, 0, 1, 2, 3])
        if kind == 0:
            s = _copy_source(rng)
            q, ans = f"Repeat exactly: '{s}'", s
        elif kind == 1:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            q, ans = f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
        elif kind == 2:
            w = rng.choice(WORDS + [p.split()[0] for p in PEOPLE])
            q, ans = f"Write the word \"{w}\" in capital letters.", w.upper()
        else:
            s = _fill(rng, rng.choice(NER_SENTENCES))[0]
            q, ans = f"How many words are in this sentence: '{s}'?", f"There are {len(s.split())} words."
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
    return messages


def _corrupt(rng: random.Random, task: str, text: str, gold, options) -> tuple[str, object]:
    """(kind, corrupted gold): one wrong type, one missing span or one invented span."""
    if task == "re":
        h, rel, t = gold
        kind = rng.choice(["wrong_type", "invented"])
        if kind == "wrong_type":
            return kind, (h, rng.choice([r for r in options + ["Not related"] if r != rel]), t)
        pool = SLOTS[RELATIONS[rel][1]]
        return kind, (h, rel, rng.choice([v for v in pool if v not in text]))
    kind = rng.choice(["wrong_type", "missing", "invented"] if gold else ["invented"])
    items = list(gold)
    types = list(SLOTS) if task == "ner" else list(EVENTS)
    if kind == "wrong_type":
        i = rng.randrange(len(items))
        others = [k for k in options if k != items[i][1]] or [k for k in types if k != items[i][1]]
        items[i] = (items[i][0], rng.choice(others))
    elif kind == "missing":
        del items[rng.randrange(len(items))]
    else:
        k = rng.choice(options)
        pool = SLOTS[k] if task == "ner" else EVENTS[k][0] + ["exploded", "negotiated"]
        items.insert(rng.randint(0, len(items)), (rng.choice([v for v in pool if v not in text]), k))
    return kind, items


def generate(seed: int = 0, n_sft: int = 3000, n_dpo: int = 1000) -> tuple[list[dict], list[dict]]:
    """The SFT records and DPO records (as written to sft.jsonl / dpo.json)."""
    rng = random.Random(seed)
    tasks = ["ner"] * 5 + ["re"] * 4 + ["ed"] * 4 + ["chat"] * 7
    sft = []
    for i in range(n_sft):
        task = rng.choice(tasks)
        if task == "chat":
            messages = _chat(rng)
        else:
            n_demos = rng.choice([0, 0, 1, 2, 3, 4])
            messages, _, gold, _ = _ie_conversation(rng, task, n_demos)
            messages.append({"role": "assistant", "content": _answer(task, gold)})
        sft.append({"dataset": f"bundled-{task}", "id": f"{task}-{i:05d}", "messages": messages})
    dpo = []
    for i in range(n_dpo):
        task = rng.choice(["ner", "re", "ed"])
        prompt, text, gold, options = _ie_conversation(rng, task, rng.choice([0, 0, 1, 2]))
        kind, bad = _corrupt(rng, task, text, gold, options)
        chosen, rejected = _answer(task, gold), _answer(task, bad)
        assert chosen != rejected, (task, kind, gold)
        dpo.append({"dataset": f"bundled-{task}", "id": f"dpo-{task}-{i:05d}", "corruption": kind,
                    "messages": prompt,
                    "chosen": prompt + [{"role": "assistant", "content": chosen}],
                    "rejected": prompt + [{"role": "assistant", "content": rejected}]})
    return sft, dpo


def prompt_key(record: dict) -> str:
    """What makes two records the same question: every message but a final assistant answer."""
    msgs = record["messages"]
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    return json.dumps(msgs, sort_keys=True)


def generate_apart(seed: int, n: int, exclude: set[str], prefix: str) -> list[tuple[dict, tuple]]:
    """n IE records (ner/re/ed, 0-3 demonstrations) from `seed` whose prompts are not in
    `exclude` (prompt_key; their keys are added to it), each with (task, text, gold, options)
    of its last turn."""
    rng = random.Random(seed)
    out: list[tuple[dict, tuple]] = []
    while len(out) < n:
        task = rng.choice(["ner", "re", "ed"])
        messages, text, gold, options = _ie_conversation(rng, task, rng.choice([0, 0, 1, 3]))
        record = {"dataset": f"bundled-{task}", "id": f"{prefix}-{task}-{len(out):05d}",
                  "messages": messages + [{"role": "assistant", "content": _answer(task, gold)}]}
        key = prompt_key(record)
        if key not in exclude:
            exclude.add(key)
            out.append((record, (task, text, gold, options)))
    return out


def heldout_pairs(seed: int, made: list[tuple[dict, tuple]]) -> list[dict]:
    """Preference pairs on held-out records: chosen = gold, rejected = a corrupted gold (as dpo.json)."""
    rng = random.Random(seed)
    pairs = []
    for record, (task, text, gold, options) in made:
        prompt = record["messages"][:-1]
        kind, bad = _corrupt(rng, task, text, gold, options)
        chosen, rejected = _answer(task, gold), _answer(task, bad)
        pairs.append({"dataset": record["dataset"], "id": f"dpo-{record['id']}", "corruption": kind,
                      "messages": prompt, "chosen": prompt + [{"role": "assistant", "content": chosen}],
                      "rejected": prompt + [{"role": "assistant", "content": rejected}]})
    return pairs


def ensure_default_assets(cache_dir: str | os.PathLike, seed: int = 0, n_sft: int = 3000,
                          n_dpo: int = 1000, vocab_size: int = 2000, n_heldout: int = 150,
                          n_prompts: int = 400) -> dict[str, str]:
    """Generate (once) and return {"sft", "dpo", "heldout", "heldout_dpo", "prompts", "tokenizer"}
    paths inside cache_dir."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    paths = {"sft": cache / "sft.jsonl", "dpo": cache / "dpo.json", "heldout": cache / "heldout.jsonl",
             "heldout_dpo": cache / "heldout_dpo.json", "prompts": cache / "prompts.jsonl",
             "tokenizer": cache / "tokenizer.model"}
    settings = {"version": 2, "seed": seed, "n_sft": n_sft, "n_dpo": n_dpo, "n_heldout": n_heldout,
                "n_prompts": n_prompts, "vocab_size": vocab_size}
    manifest = cache / "manifest.json"
    try:
        saved = json.loads(manifest.read_text())
        if saved["settings"] == settings and all(
                p.is_file() and sha256_file(p) == saved["sha256"][k] for k, p in paths.items()):
            return {k: str(p) for k, p in paths.items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or stale: (re)generate
    sft, dpo = generate(seed, n_sft, n_dpo)
    write_atomic(paths["sft"], "".join(json.dumps(r) + "\n" for r in sft))
    write_atomic(paths["dpo"], json.dumps(dpo, indent=1) + "\n")
    seen = {prompt_key(r) for r in sft} | {prompt_key(r) for r in dpo}
    heldout = generate_apart(seed + 1_000_003, n_heldout, seen, "test")
    prompts = generate_apart(seed + 2_000_003, n_prompts, seen, "pool")
    write_atomic(paths["heldout"], "".join(json.dumps(r) + "\n" for r, _ in heldout))
    write_atomic(paths["heldout_dpo"], json.dumps(heldout_pairs(seed + 3, heldout), indent=1) + "\n")
    write_atomic(paths["prompts"], "".join(json.dumps(r) + "\n" for r, _ in prompts))
    texts = [f"<|{m['role']}|>\n{m['content']}" for r in sft for m in r["messages"]]
    texts += [m["content"] for r in dpo for m in r["rejected"][-1:]]
    train_tokenizer(texts, vocab_size, paths["tokenizer"])
    hashes = {k: sha256_file(p) for k, p in paths.items()}
    write_atomic(manifest, json.dumps({"settings": settings, "sha256": hashes}, indent=1))
    return {k: str(p) for k, p in paths.items()}
