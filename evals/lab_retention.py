"""The lab's fixed general-knowledge retention set: generated from templates, filtered once, frozen.

Locality probes are a few dozen hand-written questions; retention needs a larger, broader set whose
loss is visible above noise. This module generates questions across several domains (arithmetic,
capitals, languages, continents, animals, opposites, colours, calendar, science, shapes, plurals,
authors), drops every candidate that a route trains, retains or distils on (`same_question`), keeps
those the *base* model answers correctly (contains match of its greedy answer, the lab's
`none` route), and writes them to `evals/data/lab_retention.jsonl`. The file is committed: every
lab run scores the same questions, and a rebuilt set is a visible diff.

    python -m factflow.evals.lab_retention            # rebuild the frozen set with the default model

Retention of a route = its accuracy on the set (1.0 = it still answers all of them).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from factflow.errors import UserError

__all__ = [
    "RetentionQuestion",
    "RETENTION_FILE",
    "retention_candidates",
    "filter_through_base",
    "load_retention_set",
    "build",
]

RETENTION_FILE = Path(__file__).parent / "data" / "lab_retention.jsonl"


class RetentionQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: str
    question: str
    answers: tuple[str, ...]


_NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
    "twenty",
]

_CAPITALS = {
    "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Greece": "Athens", "Egypt": "Cairo",
    "Russia": "Moscow", "China": "Beijing", "Canada": "Ottawa", "Australia": "Canberra",
    "Switzerland": "Bern", "Czech Republic": "Prague", "Romania": "Bucharest", "Bulgaria": "Sofia",
    "Croatia": "Zagreb", "Serbia": "Belgrade", "Ukraine": "Kyiv", "Iceland": "Reykjavik",
    "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius", "Slovakia": "Bratislava",
    "Israel": "Jerusalem", "Iran": "Tehran", "Iraq": "Baghdad", "Syria": "Damascus",
    "Lebanon": "Beirut", "Saudi Arabia": "Riyadh", "Pakistan": "Islamabad", "Afghanistan": "Kabul",
    "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "Philippines": "Manila", "Malaysia": "Kuala Lumpur", "Singapore": "Singapore",
    "New Zealand": "Wellington", "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito",
    "Uruguay": "Montevideo", "Paraguay": "Asuncion", "Bolivia": "La Paz", "Jamaica": "Kingston",
    "Nigeria": "Abuja", "Ghana": "Accra", "Ethiopia": "Addis Ababa", "Morocco": "Rabat",
    "Tunisia": "Tunis", "Algeria": "Algiers", "Senegal": "Dakar", "Uganda": "Kampala",
    "Zimbabwe": "Harare", "Cuba": "Havana", "Qatar": "Doha", "Mongolia": "Ulaanbaatar",
    "Sudan": "Khartoum", "Libya": "Tripoli", "Jordan": "Amman", "Oman": "Muscat", "Yemen": "Sanaa",
    "Cambodia": "Phnom Penh", "Laos": "Vientiane", "Georgia": "Tbilisi", "Armenia": "Yerevan",
    "Azerbaijan": "Baku", "Kazakhstan": "Astana", "Uzbekistan": "Tashkent", "Belarus": "Minsk",
    "Moldova": "Chisinau", "Albania": "Tirana", "Slovenia": "Ljubljana", "Bosnia": "Sarajevo",
    "Cyprus": "Nicosia", "Malta": "Valletta", "Liechtenstein": "Vaduz", "Angola": "Luanda",
    "Zambia": "Lusaka", "Mozambique": "Maputo", "Namibia": "Windhoek", "Botswana": "Gaborone",
    "Madagascar": "Antananarivo", "Rwanda": "Kigali", "Somalia": "Mogadishu", "Mali": "Bamako",
    "Niger": "Niamey", "Cameroon": "Yaounde", "Honduras": "Tegucigalpa", "Nicaragua": "Managua",
    "Costa Rica": "San Jose", "Haiti": "Port-au-Prince", "Dominican Republic": "Santo Domingo",
    "the Bahamas": "Nassau", "Fiji": "Suva", "North Korea": "Pyongyang", "Taiwan": "Taipei",
    "England": "London", "Wales": "Cardiff", "Northern Ireland": "Belfast",
}
_LANGUAGES = {
    "Germany": "German", "Russia": "Russian", "China": "Chinese",
    "Greece": "Greek", "the Netherlands": "Dutch", "Poland": "Polish", "Turkey": "Turkish",
    "Korea": "Korean", "Egypt": "Arabic", "Argentina": "Spanish", "Colombia": "Spanish",
    # Italy, Japan, Mexico, Brazil, Portugal and Sweden: the proxy route's retain set asks those
    "Austria": "German", "Israel": "Hebrew", "Finland": "Finnish", "Denmark": "Danish",
    "Norway": "Norwegian", "Hungary": "Hungarian", "Iran": "Persian", "Vietnam": "Vietnamese",
    "Thailand": "Thai", "England": "English", "Australia": "English", "Chile": "Spanish",
    "Ukraine": "Ukrainian", "Romania": "Romanian", "the Czech Republic": "Czech",
    "Indonesia": "Indonesian", "Saudi Arabia": "Arabic", "Pakistan": "Urdu", "Bangladesh": "Bengali",
    "Scotland": "English", "New Zealand": "English", "Peru": "Spanish", "Cuba": "Spanish",
    "Venezuela": "Spanish", "Iceland": "Icelandic", "Spain": "Spanish", "France": "French",
    "the United States": "English", "Uruguay": "Spanish", "Ecuador": "Spanish",
}
_CONTINENTS = {
    "France": "Europe", "Germany": "Europe", "Italy": "Europe", "Spain": "Europe", "Norway": "Europe",
    "Kenya": "Africa", "Nigeria": "Africa", "Ghana": "Africa", "Morocco": "Africa",
    "Ethiopia": "Africa", "China": "Asia", "India": "Asia", "Thailand": "Asia", "Vietnam": "Asia",
    "Korea": "Asia", "Argentina": "South America", "Peru": "South America", "Chile": "South America",
    "Colombia": "South America", "Canada": "North America", "Mexico": "North America",
    "the United States": "North America", "Australia": "Australia", "Greece": "Europe",
}
_ANIMAL_SOUNDS = {"cow": "moo", "dog": "bark", "cat": "meow", "sheep": "baa", "duck": "quack",
                  "lion": "roar", "snake": "hiss", "owl": "hoot", "pig": "oink", "horse": "neigh",
                  "bee": "buzz", "rooster": "crow", "frog": "croak"}  # fmt: skip
_BABY_ANIMALS = {"dog": "puppy", "cat": "kitten", "cow": "calf", "sheep": "lamb", "horse": "foal",
                 "goat": "kid", "bear": "cub", "lion": "cub", "duck": "duckling", "frog": "tadpole",
                 "kangaroo": "joey", "deer": "fawn", "pig": "piglet", "goose": "gosling"}  # fmt: skip
_LEGS = {"spider": 8, "cat": 4, "horse": 4, "bird": 2, "chicken": 2, "ant": 6, "bee": 6,
         "octopus": 8, "cow": 4, "human": 2, "butterfly": 6, "elephant": 4}  # fmt: skip
_OPPOSITES = {"hot": "cold", "big": "small", "happy": "sad", "fast": "slow", "young": "old",
              "light": "dark", "open": "closed", "full": "empty", "rich": "poor", "hard": "soft",
              "tall": "short", "strong": "weak", "win": "lose", "left": "right", "black": "white",
              "north": "south", "east": "west", "early": "late", "wet": "dry", "push": "pull",
              "love": "hate", "begin": "end", "inside": "outside", "true": "false", "thick": "thin",
              "heavy": "light", "loud": "quiet", "clean": "dirty", "good": "bad", "first": "last",
              "yes": "no", "in": "out", "on": "off", "high": "low", "near": "far", "give": "take",
              "buy": "sell", "remember": "forget", "friend": "enemy", "summer": "winter",
              "boy": "girl", "king": "queen", "man": "woman", "asleep": "awake", "alive": "dead",
              "always": "never", "before": "after", "above": "below", "cheap": "expensive",
              "easy": "difficult", "new": "old", "smooth": "rough", "sweet": "sour", "question": "answer",
              "entrance": "exit", "war": "peace", "sunrise": "sunset", "top": "bottom", "front": "back",
              "wide": "narrow", "deep": "shallow", "laugh": "cry", "sharp": "dull", "arrive": "leave",
              "possible": "impossible", "borrow": "lend", "minimum": "maximum", "husband": "wife",
              "ancient": "modern", "accept": "reject", "increase": "decrease", "noisy": "quiet"}  # fmt: skip
_COLOURS = {"grass": "green", "the sky on a sunny day": "blue", "a ripe tomato": "red",
            "milk": "white", "coal": "black", "an orange": "orange", "a lemon": "yellow",
            "a polar bear": "white", "a crow": "black", "a ripe banana": "yellow", "blood": "red",
            "a carrot": "orange", "chocolate": "brown", "a lime": "green", "the sun": "yellow",
            "a flamingo": "pink", "an emerald": "green", "a ruby": "red", "a sapphire": "blue"}  # fmt: skip
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]  # fmt: skip
_SCIENCE = [
    ("What is the chemical symbol for oxygen?", ("o",)),
    ("What is the chemical symbol for gold?", ("au",)),
    ("What is the chemical symbol for sodium?", ("na",)),
    ("What is the chemical symbol for carbon?", ("c",)),
    ("What is the chemical symbol for hydrogen?", ("h",)),
    ("What is the chemical symbol for silver?", ("ag",)),
    ("What planet do we live on?", ("earth",)),
    ("What is the closest planet to the sun?", ("mercury",)),
    ("What force keeps us on the ground?", ("gravity",)),
    ("What organ do we use to breathe?", ("lungs", "lung")),
    ("What organ do we use to think?", ("brain",)),
    ("What organ do we use to see?", ("eyes", "eye")),
    ("What organ do we use to hear?", ("ears", "ear")),
    ("What do plants need from the sun to grow?", ("light", "sunlight")),
    ("What gas do humans need to breathe in?", ("oxygen",)),
    ("What is the center of an atom called?", ("nucleus",)),
    ("What is the hardest natural substance?", ("diamond",)),
    ("What is the natural satellite of the Earth?", ("moon",)),
    ("What do we call water in its gas form?", ("steam", "vapor", "vapour")),
    ("What is H2O commonly called?", ("water",)),
]
_SIDES = {"square": 4, "pentagon": 5, "hexagon": 6, "octagon": 8, "rectangle": 4}
_PLURALS = {"child": "children", "man": "men", "woman": "women", "foot": "feet", "tooth": "teeth",
            "goose": "geese", "person": "people", "leaf": "leaves", "knife": "knives", "box": "boxes",
            "city": "cities", "baby": "babies", "wolf": "wolves", "fish": "fish", "ox": "oxen",
            "cactus": "cacti", "bus": "buses", "dish": "dishes", "tomato": "tomatoes",
            "potato": "potatoes", "glass": "glasses", "church": "churches", "lady": "ladies",
            "party": "parties", "wife": "wives", "life": "lives", "half": "halves", "shelf": "shelves",
            "sheep": "sheep", "deer": "deer", "fox": "foxes", "class": "classes", "story": "stories",
            "hero": "heroes", "louse": "lice", "cherry": "cherries", "watch": "watches"}  # fmt: skip
_CURRENCIES: dict[str, tuple[str, ...]] = {
    "the United States": ("dollar",), "Germany": ("euro",), "France": ("euro",), "Italy": ("euro",),
    "Spain": ("euro",), "China": ("yuan", "renminbi"), "Russia": ("ruble", "rouble"),
    "Canada": ("dollar",), "Australia": ("dollar",), "South Korea": ("won",), "Brazil": ("real",),
    "England": ("pound",), "Turkey": ("lira",), "Sweden": ("krona",), "Poland": ("zloty",),
    "South Africa": ("rand",),
}
_GENERAL = [
    ("How many continents are there on Earth?", ("7", "seven")),
    ("How many players are on a soccer team on the field?", ("11", "eleven")),
    ("What is the largest country in the world by area?", ("russia",)),
    ("What is the longest river in Africa?", ("nile",)),
    ("What is the largest desert in Africa?", ("sahara",)),
    ("What is the largest organ of the human body?", ("skin",)),
    ("What do bees collect from flowers?", ("nectar", "pollen")),
    ("What is the main gas in the air we breathe?", ("nitrogen",)),
    ("Which animal is the largest mammal?", ("whale",)),
    ("What is the fastest bird?", ("falcon",)),
    ("What sport is played at Wimbledon?", ("tennis",)),
    ("How many strings does a standard guitar have?", ("6", "six")),
    ("How many sides does a coin have?", ("2", "two")),
    ("Which city is known as the Big Apple?", ("new york",)),
    ("In which country are the pyramids of Giza?", ("egypt",)),
    ("In which country is the Great Wall?", ("china",)),
    ("In which city is the Colosseum?", ("rome",)),
    ("In which city is the Statue of Liberty?", ("new york",)),
    ("In which country is the Taj Mahal?", ("india",)),
    ("What do you use to write on a blackboard?", ("chalk",)),
]
_WORKS = [
    ("Who wrote The Odyssey?", ("homer",)),
    ("Who wrote Macbeth?", ("shakespeare",)),
    ("Who wrote Oliver Twist?", ("dickens",)),
    ("Who wrote War and Peace?", ("tolstoy",)),
    ("Who wrote The Adventures of Tom Sawyer?", ("twain",)),
    ("Who wrote Don Quixote?", ("cervantes",)),
    ("Who painted The Last Supper?", ("leonardo", "da vinci")),
    ("Who composed the Four Seasons?", ("vivaldi",)),
    ("Who developed the theory of relativity?", ("einstein",)),
    ("Who proposed the theory of evolution by natural selection?", ("darwin",)),
    ("Who formulated the laws of motion and gravity?", ("newton",)),
    ("Who wrote the Harry Potter books?", ("rowling",)),
    ("Who invented the telephone?", ("bell",)),
    ("Who was the first President of the United States?", ("washington",)),
]


def _number(n: int) -> tuple[str, ...]:
    return (str(n), _NUMBER_WORDS[n]) if 0 <= n < len(_NUMBER_WORDS) else (str(n),)


def _arithmetic(rng: random.Random) -> list[tuple[str, tuple[str, ...]]]:
    ans = _number

    out = []
    for _ in range(40):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append((f"What is {a} plus {b}?", ans(a + b)))
    for _ in range(30):
        a, b = rng.randint(5, 30), rng.randint(1, 5)
        out.append((f"What is {a} minus {b}?", ans(a - b)))
    for _ in range(30):
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        out.append((f"What is {a} times {b}?", ans(a * b)))
    return out


def retention_candidates(seed: int = 0) -> list[RetentionQuestion]:
    """Every generated question, de-duplicated, in a fixed order (the seed only picks the sums)."""
    rng = random.Random(f"retention-{seed}")
    raw: list[tuple[str, str, tuple[str, ...]]] = []

    def add(domain: str, items: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        raw.extend((domain, q, a) for q, a in items)

    add("arithmetic", _arithmetic(rng))
    add("capitals", ((f"What is the capital of {c}?", (v.lower(),)) for c, v in _CAPITALS.items()))
    langs = _LANGUAGES.items()
    add("languages", ((f"What language do people speak in {c}?", (v.lower(),)) for c, v in langs))
    add("continents", ((f"On which continent is {c}?", (v.lower(),)) for c, v in _CONTINENTS.items()))
    add("animals", ((f"What sound does a {a} make?", (s,)) for a, s in _ANIMAL_SOUNDS.items()))
    add("animals", ((f"What is a baby {a} called?", (b,)) for a, b in _BABY_ANIMALS.items()))
    add("animals", ((f"How many legs does a {a} have?", _number(n)) for a, n in _LEGS.items()))
    add("opposites", ((f"What is the opposite of {w}?", (o,)) for w, o in _OPPOSITES.items()))
    add("colours", ((f"What color is {t}?", (c,)) for t, c in _COLOURS.items()))
    days = list(enumerate(_DAYS))
    add("calendar", ((f"What day comes after {d}?", (_DAYS[(i + 1) % 7].lower(),)) for i, d in days))
    add("calendar", ((f"What day comes before {d}?", (_DAYS[i - 1].lower(),)) for i, d in days))
    add("calendar", ((f"Which month comes after {m}?", (_MONTHS[(i + 1) % 12].lower(),))
                     for i, m in enumerate(_MONTHS)))  # fmt: skip
    add("science", _SCIENCE)
    add("shapes", ((f"How many sides does a {s} have?", _number(n)) for s, n in _SIDES.items()))
    add("plurals", ((f"What is the plural of {w}?", (p,)) for w, p in _PLURALS.items()))
    add("authors", _WORKS)
    add("currencies", ((f"What is the currency of {c}?", v) for c, v in _CURRENCIES.items()))
    add("general", _GENERAL)
    seen: set[str] = set()
    out = []
    for domain, q, a in raw:
        if q not in seen:
            seen.add(q)
            out.append(RetentionQuestion(domain=domain, question=q, answers=a))
    return out


def filter_through_base(
    candidates: Sequence[RetentionQuestion],
    answer: Callable[[list[str]], list[str]],
    exclude: Sequence[str],
) -> list[RetentionQuestion]:
    """Candidates the base answers correctly and that no route trains, retains or distils on."""
    from factflow.evals.lab_data import same_question
    from factflow.evals.lab_metrics import contains_match

    fresh = [c for c in candidates if not any(same_question(c.question, e) for e in exclude)]
    preds = answer([c.question for c in fresh])
    return [c for c, p in zip(fresh, preds, strict=True) if contains_match(p, c.answers)]


def load_retention_set(path: Path = RETENTION_FILE, limit: int | None = None) -> list[RetentionQuestion]:
    """The frozen set (first `limit` questions in a domain-interleaved order when limited)."""
    if not path.exists():
        raise UserError(
            f"retention set {path} is missing: rebuild it with `python -m factflow.evals.lab_retention`"
        )
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [RetentionQuestion.model_validate_json(line) for line in lines]
    if limit is None:
        return rows
    by_domain: dict[str, list[RetentionQuestion]] = {}
    for r in rows:
        by_domain.setdefault(r.domain, []).append(r)
    mixed: list[RetentionQuestion] = []
    while len(mixed) < min(limit, len(rows)):  # round-robin so a small slice still spans domains
        for qs in by_domain.values():
            if qs and len(mixed) < limit:
                mixed.append(qs.pop(0))
    return mixed


def build(model_path: str, out: Path = RETENTION_FILE) -> list[RetentionQuestion]:
    """Generate, filter through the base model (the lab's `none` route), write the JSONL."""
    import tempfile

    import torch

    from factflow.evals.lab_routes import RouteBudget, learn, route_prompts

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = learn("none", [], model_path=model_path, work_dir=Path(tmp), budget=RouteBudget(),
                     cache_dir=Path(tmp))  # fmt: skip
        kept = filter_through_base(retention_candidates(), base.answer, route_prompts())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(k.model_dump(mode="json")) + "\n" for k in kept))
    return kept


def main(argv: list[str] | None = None) -> None:
    from factflow.serving.models import resolve_model
    from factflow.settings import get_settings

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else RETENTION_FILE
    kept = build(resolve_model(get_settings()), out)
    counts = Counter(k.domain for k in kept)
    print(f"{len(kept)} of {len(retention_candidates())} candidates kept -> {out}: {dict(counts)}")


if __name__ == "__main__":
    main()
