"""Generate tests/data/writeback_compositions.jsonl: gate cases for composed knowledge.

Run: .venv/bin/python tests/data/make_composition_cases.py   (deterministic, seed 16)

Templates the first set (`make_writeback_cases.py`, companies and sensors) doesn't use: bridges,
towers, cities, provinces and clubs of invented places. Cases to accept are claims entailed by
composing cited facts: numeric comparisons computed from the cited numbers (units may differ),
two-hop bridges through an entity another cited fact defines, and conjunctions of cited facts.
Cases to reject are the near misses: direction and quantifier flips, unsupported or wrong
comparisons, bridges through the wrong entity, conjunctions with one false part, restatements of
one sentence of a stored multi-sentence chunk, and a claim repeated within one answer (that case
carries `claim_labels`, one label per claim: the first is new, the repeat is not).
"""

from __future__ import annotations

import random

from make_writeback_cases import write_cases  # the sibling script (run from this folder's path)

BRIDGES = ["Orlin Bridge", "Casta Bridge", "Mervik Bridge", "Tollan Bridge", "Pezzo Bridge", "Harrow Bridge"]
TOWERS = ["Vantor Tower", "Silbe Tower", "Krane Tower", "Odessa Spire", "Luma Tower", "Brisk Tower"]
CITIES = ["Quillmar", "Stavenor", "Belcaro", "Ydrin", "Marsk", "Tellura", "Ossmere", "Fennick", "Carrow"]
PROVINCES = ["Zorbia", "Halvania", "Orrland", "Petria", "Luskar", "Vennmark"]
FOUNDERS = ["Ilse Varga", "Rodrigo Paz", "Hanne Solberg", "Kofi Mensah", "Yuki Sato", "Bram Kessel"]
ARCHITECTS = ["Nadia Rahm", "Piet Oorst", "Carla Menz", "Sven Alder", "Ines Brull", "Tariq Haddad"]
CLUBS = ["Harbor Rowing Club", "Falcon Chess Club", "Granite Climbing Club", "Lantern Choir"]


def world(rng: random.Random, i: int) -> tuple[dict[str, str], list[dict]]:
    b1, b2, b3 = rng.sample(BRIDGES, 3)
    t1, t2 = rng.sample(TOWERS, 2)
    c1, c2, c3 = rng.sample(CITIES, 3)
    p1, p2 = rng.sample(PROVINCES, 2)
    f1, f2 = rng.sample(FOUNDERS, 2)
    a1 = rng.choice(ARCHITECTS)
    club1, club2 = rng.sample(CLUBS, 2)
    len1 = rng.randint(900, 1900)  # b1 is always the longer bridge
    len2 = rng.randint(200, 800)
    h1, h2 = rng.randint(200, 330), rng.randint(90, 190)  # t1 is the taller tower
    y1, y2 = rng.randint(1820, 1880), rng.randint(1900, 1990)  # club1 is the older club
    m1, m2 = rng.randint(300, 900), rng.randint(40, 250)  # club1 has more members
    km = len1 >= 1000 and i % 2 == 0  # half the worlds give b1's length in kilometres
    len1_text = f"{len1 / 1000:g} kilometres" if km else f"{len1} metres"
    facts = {
        "b1": f"The {b1} is {len1_text} long.",
        "b2": f"The {b2} is {len2} metres long.",
        "b3": f"The {b3} opened in {rng.randint(1950, 2010)}.",
        "t1": f"The {t1} is {h1} metres tall.",
        "t2": f"The {t2} is {h2} metres tall.",
        "found1": f"{f1} founded {c1} in {rng.randint(1500, 1700)}.",
        "found2": f"{f2} founded {c2}.",
        "cap1": f"{c1} is the capital of {p1}.",
        "cap2": f"The capital of {p2} is {c2}.",
        "design": f"{a1} designed the {t1}.",
        "tallest": f"The {t1} is the tallest building in {c3}.",
        "club1": f"The {club1} was founded in {y1} and has {m1} members.",
        "club2": f"The {club2} was founded in {y2} and has {m2} members.",
        "guide": (
            f"The {b2} crosses the river Aske. Some of its pillars stand on islands. "
            f"Ferries may stop running once the {b2} carries trains. "
            f"Fewer than 40 boats pass under it each day."
        ),
    }
    every = list(facts)
    cases: list[dict] = []

    def add(
        category: str,
        label: str,
        answer: str,
        cite: list[str],
        retrieved: list[str] | None = None,
        claim_labels: list[str] | None = None,
    ) -> None:
        case = {
            "id": f"c{i:02d}-{len(cases):02d}",
            "world": f"c{i:02d}",
            "category": category,
            "label": label,
            "answer": answer,
            "cite": cite,
            "retrieved": every if retrieved is None else retrieved,
        }
        if claim_labels is not None:
            case["claim_labels"] = claim_labels
        cases.append(case)

    acc, rej = "accept", "reject"
    # entailed comparisons: computed from the cited numbers (and units)
    add("composition_comparison", acc, f"The {b1} is longer than the {b2}.", ["b1", "b2"])
    add("composition_comparison", acc, f"The {b2} is shorter than the {b1}.", ["b1", "b2"])
    add("composition_comparison", acc, f"The {t1} is taller than the {t2}.", ["t1", "t2"])
    add("composition_comparison", acc, f"The {club1} is older than the {club2}.", ["club1", "club2"])
    add("composition_comparison", acc, f"The {club1} has more members than the {club2}.", ["club1", "club2"])
    add("composition_comparison", acc, f"The {t1} is {h1 - h2} metres taller than the {t2}.", ["t1", "t2"])
    # entailed two-hop bridges through an entity another cited fact defines
    add("composition_bridge", acc, f"The capital of {p1} was founded by {f1}.", ["found1", "cap1"])
    add("composition_bridge", acc, f"{f2} founded the capital of {p2}.", ["found2", "cap2"])
    add(
        "composition_bridge",
        acc,
        f"The tallest building in {c3} was designed by {a1}.",
        ["design", "tallest"],
    )
    # entailed conjunctions of cited facts
    add(
        "composition_conjunction",
        acc,
        f"The {t1} is {h1} metres tall and the {b2} is {len2} metres long.",
        ["t1", "b2"],
    )
    add(
        "composition_conjunction",
        acc,
        f"{f1} founded {c1}, and {c1} is the capital of {p1}.",
        ["found1", "cap1"],
    )
    add(
        "composition_conjunction", acc, f"{a1} designed the {t1} and {f2} founded {c2}.", ["design", "found2"]
    )
    # direction flips: the computed comparison or the stated time says otherwise
    add("direction_flip", rej, f"The {b1} is shorter than the {b2}.", ["b1", "b2"])
    add("direction_flip", rej, f"The {club1} is younger than the {club2}.", ["club1", "club2"])
    add("direction_flip", rej, f"The {club1} has fewer members than the {club2}.", ["club1", "club2"])
    add("direction_flip", rej, f"The {club1} was founded after {y1}.", ["club1"])
    add("direction_flip", rej, f"The {club2} was founded before {y2}.", ["club2"])
    # quantifier and modality flips against the guide
    add("quantifier_flip", rej, f"All of the pillars of the {b2} stand on islands.", ["guide"])
    add("quantifier_flip", rej, f"Ferries will stop running once the {b2} carries trains.", ["guide"])
    add("quantifier_flip", rej, f"More than 40 boats pass under the {b2} each day.", ["guide"])
    # comparisons the cited numbers don't support
    add("unsupported_comparison", rej, f"The {b1} is longer than the {b3}.", ["b1", "b3"])
    add("unsupported_comparison", rej, f"The {t1} is taller than the {b2}.", ["t1", "b2"])
    add(
        "unsupported_comparison",
        rej,
        f"The {t1} is {h1 - h2 + 25} metres taller than the {t2}.",
        ["t1", "t2"],
    )
    add("unsupported_comparison", rej, f"The {b1} is longer than the {b2}.", ["b1"])
    # bridges through the wrong entity or with the roles swapped
    add("bridge_swap", rej, f"The capital of {p1} was founded by {f2}.", ["found2", "cap1"])
    add("bridge_swap", rej, f"{f1} founded the capital of {p2}.", ["found1", "cap2"])
    add("bridge_swap", rej, f"The capital of {p1} founded {f1}.", ["found1", "cap1"])
    # conjunctions with one unsupported part
    add(
        "conjunction_false_part",
        rej,
        f"The {t1} is {h1} metres tall and the {b2} is {len2 + 50} metres long.",
        ["t1", "b2"],
    )
    add("conjunction_false_part", rej, f"{a1} designed the {t1} and {f1} founded {c2}.", ["design", "found2"])
    # restating one sentence of a stored multi-sentence chunk adds nothing
    add("chunk_sentence_duplicate", rej, f"The {b2} crosses the river Aske.", ["guide"])
    add("chunk_sentence_duplicate", rej, f"Ferries may stop running once the {b2} carries trains.", ["guide"])
    # within one answer: the first claim is new, its repeat is not
    add(
        "repeated_in_answer",
        "mixed",
        f"The {t1} is taller than the {t2}. Indeed, the {t1} is taller than the {t2}.",
        ["t1", "t2"],
        claim_labels=[acc, rej],
    )
    return facts, cases


def main() -> None:
    write_cases(world, n_worlds=6, seed=16, file_name="writeback_compositions.jsonl")


if __name__ == "__main__":
    main()
