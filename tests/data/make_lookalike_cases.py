"""Generate tests/data/lookalike_cases.jsonl: questions over facts that look alike.

Run: .venv/bin/python tests/data/make_lookalike_cases.py   (deterministic, seed 21)

A small model shown "The chief executive of Korvane Dynamics is Ada Brenn." next to four facts
that differ only in the company and the name answers with the wrong name. Each namespace here
holds three families of five look-alike facts (same sentence, different subject and value);
every fact is asked twice, in words other than the fact's own. Names are invented so no model
can know them, and the sentence and question templates are not the lab's (evals/lab_data.py).

Each line: id, namespace, facts (the namespace's facts, taught before asking), question,
expected (the value the answer must hold), fact (the one fact that answers it), family.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 21
OUT = Path(__file__).with_name("lookalike_cases.jsonl")

# family -> (fact template, two question templates); {s} the subject, {o} the value
FAMILIES: dict[str, tuple[str, tuple[str, str]]] = {
    "chief": (
        "The chief executive of {s} Dynamics is {o}.",
        ("Who runs {s} Dynamics as its CEO?", "Name the person at the head of {s} Dynamics."),
    ),
    "drum": (
        "The big drum of the {s} marching band is painted {o}.",
        (
            "What colour is the drum the {s} marching band plays?",
            "The {s} band's big drum has which paint colour?",
        ),
    ),
    "founder": (
        "The city of {s} was founded by {o}.",
        ("Who is credited with starting the city of {s}?", "{s} owes its founding to which person?"),
    ),
    "captain": (
        "The captain of the ship {s} is {o}.",
        ("Who commands the vessel {s}?", "Which sailor is in charge of the {s}?"),
    ),
    "bridge": (
        "The {s} bridge is {o} metres long.",
        ("How many metres does the {s} bridge span?", "What is the length in metres of the {s} bridge?"),
    ),
    "bakery": (
        "The {s} bakery opens at {o} o'clock in the morning.",
        ("At what hour does the {s} bakery open its doors?", "When does the {s} bakery start selling bread?"),
    ),
}

NAMESPACES = {"lookalike-a": ("chief", "drum", "founder"), "lookalike-b": ("captain", "bridge", "bakery")}

SUBJECTS = {
    "chief": ["Korvane", "Velmira", "Tasquin", "Dorrent", "Brisca"],
    "drum": ["Ellsworth", "Marrow Hill", "Quenby", "Stavely", "Oddington"],
    "founder": ["Pellinor", "Karsk", "Wyndhollow", "Tesmar", "Orrin Bay"],
    "captain": ["Sea Lark", "Grey Heron", "Northern Vale", "Tidewalker", "Amber Gull"],
    "bridge": ["Lunn", "Corvey", "Haddick", "Semble", "Tarrow"],
    "bakery": ["Fennick", "Ashgrove", "Pollard", "Mirebeck", "Sutter Green"],
}

VALUES = {
    "chief": ["Ada Brenn", "Tomas Okafor", "Lise Varga", "Pavel Idris", "Noor Castell"],
    "drum": ["red", "green", "blue", "yellow", "white"],
    "founder": ["Hugo Marlin", "Edda Fosse", "Rafe Quill", "Mina Sorrel", "Ivo Tarkas"],
    "captain": ["Greta Vane", "Ossian Pell", "Dara Kwent", "Bruno Lasko", "Selma Arde"],
    "bridge": ["140", "275", "390", "520", "610"],
    "bakery": ["5", "6", "7", "8", "9"],
}


def make_cases(seed: int = SEED) -> list[dict[str, object]]:
    rng = random.Random(seed)
    cases: list[dict[str, object]] = []
    for ns, families in NAMESPACES.items():
        rows: list[tuple[str, str, str, str]] = []  # (family, subject, value, fact)
        for family in families:
            values = list(VALUES[family])
            rng.shuffle(values)  # which subject gets which value: seeded, not alphabetical
            template = FAMILIES[family][0]
            pairs = zip(SUBJECTS[family], values, strict=True)
            rows += [(family, s, v, template.format(s=s, o=v)) for s, v in pairs]
        facts = [r[3] for r in rows]
        rng.shuffle(facts)  # taught in mixed order, as a user would
        for family, subject, value, fact in rows:
            for q, question in enumerate(FAMILIES[family][1], start=1):
                cases.append(
                    {
                        "id": f"{ns}/{family}/{subject.lower().replace(' ', '-')}/q{q}",
                        "namespace": ns,
                        "facts": facts,
                        "question": question.format(s=subject),
                        "expected": value,
                        "fact": fact,
                        "family": family,
                    }
                )
    return cases


def main() -> None:
    cases = make_cases()
    OUT.write_text("".join(json.dumps(c, sort_keys=True) + "\n" for c in cases), encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
