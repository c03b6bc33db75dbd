"""`quickstart`: a small data-to-text task that lorafit generates itself (no download, no data dir).

Structured pet-adoption records, in the E2E NLG style, become one-sentence listings:

    name[Biscuit], species[dog], age[3 years], temperament[playful], goodWith[children], city[Leeds]
    -> "Biscuit is a playful 3-year-old dog in Leeds who gets on well with children."

Records and sentences come from a seeded generator (same data on every machine, every run), with a
few sentence patterns so the model must learn the mapping, not one template. A base model has never
seen this format; a few minutes of LoRA training on 2 CPU cores teaches it, which is the point of
the quickstart: the validation loss falls visibly and the outputs change before your eyes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from lorafit.recipe.schema import DataConfig
from lorafit.tasks.types import EvalItem, GenerationExample, Task

NAMES = (
    "Biscuit Luna Milo Pepper Ziggy Hazel Otis Clover Mochi Juniper Rufus Nala Pickles Willow Toffee "
    "Basil Poppy Jasper Maple Ginger Olive Bruno Daisy Finn Ivy Loki Rosie Sage Tiger Winnie"
).split()
SPECIES = ("dog", "cat", "rabbit", "guinea pig", "parrot", "ferret")
TEMPERAMENTS = ("playful", "calm", "shy", "curious", "gentle", "energetic", "affectionate", "independent")
GOOD_WITH = ("children", "other dogs", "cats", "older people", "first-time owners")
CITIES = ("Leeds", "Bristol", "York", "Cardiff", "Norwich", "Glasgow", "Bath", "Derby")
SPLIT_SIZES = {"train": 3000, "dev": 200}
SPLIT_SEEDS = {"train": 11, "dev": 23}


def age_phrase(months: int) -> tuple[str, str]:
    """('3 years', '3-year-old') style MR value and adjective for an age in months."""
    if months < 12:
        return f"{months} months", f"{months}-month-old"
    years = months // 12
    return (f"{years} year" if years == 1 else f"{years} years"), f"{years}-year-old"


def make_record(rng: random.Random) -> dict:
    """One random pet record (age in months; goodWith and fee only sometimes)."""
    months = rng.choice([3, 6, 9]) if rng.random() < 0.25 else 12 * rng.randint(1, 12)
    record = {
        "name": rng.choice(NAMES),
        "species": rng.choice(SPECIES),
        "age": months,
        "temperament": rng.choice(TEMPERAMENTS),
        "city": rng.choice(CITIES),
    }
    if rng.random() < 0.6:
        record["goodWith"] = rng.choice(GOOD_WITH)
    if rng.random() < 0.4:
        record["fee"] = rng.choice(("no fee", "£40", "£75", "£120"))
    return record


def meaning_representation(record: dict) -> str:
    """E2E-style MR: key[value] pairs joined by commas."""
    age, _ = age_phrase(record["age"])
    values = {**record, "age": age}
    return ", ".join(f"{k}[{values[k]}]" for k in ("name", "species", "age", "temperament", "goodWith", "fee", "city")
                     if k in values)


def sentence(record: dict, rng: random.Random) -> str:
    """One listing sentence in one of three patterns."""
    _, adjective = age_phrase(record["age"])
    name, species, mood, city = record["name"], record["species"], record["temperament"], record["city"]
    article = "an" if mood[0] in "aeiou" else "a"
    pattern = rng.randrange(3)
    if pattern == 0:
        text = f"{name} is {article} {mood} {adjective} {species} in {city}"
        if "goodWith" in record:
            text += f" who gets on well with {record['goodWith']}"
    elif pattern == 1:
        text = f"Meet {name}, {article} {mood} {species} aged {age_phrase(record['age'])[0]}, waiting for a home in {city}"
        if "goodWith" in record:
            text += f"; good with {record['goodWith']}"
    else:
        text = f"In {city}, {name} the {species} is looking for a home: {adjective} and {mood}"
        if "goodWith" in record:
            text += f", happy around {record['goodWith']}"
    if "fee" in record:
        text += ", adoption fee: " + record["fee"] if record["fee"] != "no fee" else ", with no adoption fee"
    return text + "."


def format_prompt(mr: str) -> str:
    """The prompt the model sees; the completion (the listing) follows "Listing:"."""
    return f"Write a one-sentence adoption listing for this pet.\n{mr}\nListing:"


def examples(split: str) -> list[GenerationExample]:
    """The split's examples, the same on every machine (seeded per split)."""
    rng = random.Random(SPLIT_SEEDS[split])
    out = []
    for _ in range(SPLIT_SIZES[split]):
        record = make_record(rng)
        out.append(GenerationExample(prompt=format_prompt(meaning_representation(record)),
                                     completion=" " + sentence(record, rng)))
    return out


def load_train(data_dir: Path | None, split: str, options: DataConfig) -> list[GenerationExample]:
    """The split's examples (quickstart needs no data directory or options)."""
    return examples(split)


def load_eval(data_dir: Path | None, split: str, options: DataConfig) -> list[EvalItem]:
    """One item per example, its listing the single reference."""
    return [EvalItem(prompt=e.prompt, references=(e.completion.strip(),)) for e in examples(split)]


def score(predictions: Sequence[str], items: Sequence[EvalItem]) -> dict:
    """Corpus BLEU (sacrebleu, lowercase 13a, 0-1 scale) and exact-match rate."""
    import sacrebleu

    refs = [item.references[0] for item in items]
    bleu = sacrebleu.corpus_bleu(list(predictions), [refs], lowercase=True, tokenize="13a").score / 100
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, refs, strict=True)) / max(len(refs), 1)
    return {"bleu": bleu, "exact_match": exact}


TASK = Task(
    name="quickstart",
    kind="generation",
    num_labels=0,
    splits=("train", "dev"),
    load_train=load_train,
    load_eval=load_eval,
    score=score,
    main_metric="bleu",
    needs_data_dir=False,
)
