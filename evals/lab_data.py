"""Seeded data for the knowledge-accessibility lab: fictional facts and the questions that probe them.

Everything here is a pure function of `(size, seed)`: fictional people, companies, places and
products with attributes; one training statement and one training question per fact; a paraphrased
question from templates never used in training; two-hop questions that compose two facts; and
neutral text for perplexity / KL to the base. Names are made of invented syllables so the base
model cannot know the answers (the `none` route measures how often it guesses anyway).

Locality probes are the exception: they are general questions the *base model* answers correctly,
so they depend on the model. `locality_probes` filters a fixed candidate bank through a greedy
answer function and caches the kept list under HOME, keyed by model + seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factflow.errors import UserError

__all__ = [
    "LabFact",
    "TwoHop",
    "Probe",
    "LabData",
    "RELATIONS",
    "make_lab_data",
    "locality_candidates",
    "locality_probes",
    "neutral_texts",
    "MIN_SIZE",
    "MAX_SIZE",
    "same_question",
]

MIN_SIZE = 1
MAX_SIZE = 65536  # 16..4096 on CPU per the lab's brief; larger is fine on a GPU

Kind = Literal["person", "company", "place", "product"]


class _Relation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    statement: str  # the training phrasing, "{s}" and "{o}"
    train_question: str  # the one question phrasing used in training
    paraphrases: tuple[str, ...]  # never used in training


# Training and paraphrase templates are disjoint on purpose: paraphrase recall measures whether a fact
# learned in one phrasing is usable in another (the "reversal/extraction" failure of in-weight learning).
RELATIONS: dict[str, _Relation] = {
    r.name: r
    for r in [
        _Relation(
            name="born_in",
            statement="{s} was born in {o}.",
            train_question="Where was {s} born?",
            paraphrases=("What is the birthplace of {s}?", "In which town did {s} come into the world?"),
        ),
        _Relation(
            name="works_for",
            statement="{s} works for {o}.",
            train_question="Who does {s} work for?",
            paraphrases=("Which company employs {s}?", "What is the name of the employer of {s}?"),
        ),
        _Relation(
            name="profession",
            statement="{s} works as a {o}.",
            train_question="What is the job of {s}?",
            paraphrases=("What does {s} do for a living?", "What is the profession of {s}?"),
        ),
        _Relation(
            name="headquartered_in",
            statement="{s} is headquartered in {o}.",
            train_question="Where is {s} headquartered?",
            paraphrases=(
                "In which city does {s} have its main office?",
                "Where are the headquarters of {s}?",
            ),
        ),
        _Relation(
            name="founded_in",
            statement="{s} was founded in {o}.",
            train_question="When was {s} founded?",
            paraphrases=("In what year was {s} established?", "What year did {s} start?"),
        ),
        _Relation(
            name="country",
            statement="{s} is a city in {o}.",
            train_question="Which country is {s} in?",
            paraphrases=("In what country is the city of {s}?", "{s} lies in which nation?"),
        ),
        _Relation(
            name="made_by",
            statement="{s} is made by {o}.",
            train_question="Who makes {s}?",
            paraphrases=("Which company manufactures {s}?", "{s} is produced by which company?"),
        ),
        _Relation(
            name="color",
            statement="{s} is {o} in color.",
            train_question="What color is {s}?",
            paraphrases=("Which colour does {s} have?", "What is the colour of {s}?"),
        ),
    ]
}

_SYLLABLES = (
    "ka", "ve", "lor", "quan", "tis", "dra", "mel", "brin", "sor", "zel", "tho", "vam", "rik", "nel",
    "por", "gar", "fen", "lu", "mo", "xan", "bel", "cor", "dun", "fal", "gri", "hal", "jor", "kel",
    "mar", "nor", "osk", "pel", "rav", "sil", "tor", "ulm", "vor", "wen", "yar", "zor",
)
_COMPANY_SUFFIX = ("Dynamics", "Works", "Labs", "Holdings", "Systems", "Foundry", "Industries", "Group")
_PRODUCT_KIND = ("lamp", "kettle", "scooter", "drone", "watch", "backpack", "camera", "speaker")
_PROFESSIONS = (
    "glassblower", "cartographer", "beekeeper", "locksmith", "violinist", "geologist",
    "tailor", "astronomer", "carpenter", "pharmacist", "sculptor", "librarian",
)
_COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white")

_NEUTRAL = (
    "The kitchen smelled of fresh bread and coffee when the family sat down for breakfast.",
    "Rain fell softly on the roof all afternoon, and the children played board games inside.",
    "A good night's sleep helps the body recover and keeps the mind sharp the next day.",
    "The train left the station on time and crossed the river just before sunset.",
    "She planted tomatoes, beans and a row of sunflowers along the garden fence.",
    "Regular exercise, such as walking or swimming, improves heart health over time.",
    "The library was quiet except for the sound of pages turning and a distant clock.",
    "He wrote a short letter to his grandmother and walked to the post office to mail it.",
    "Most birds build their nests in spring, using twigs, grass and soft feathers.",
    "The teacher asked the students to read the first chapter before the next class.",
    "In winter the lake freezes over, and people come from nearby towns to skate on it.",
    "Water boils at a lower temperature high in the mountains because the air pressure is lower.",
    "The market opens early on Saturdays, and farmers sell vegetables, cheese and honey.",
    "After dinner they washed the dishes together and talked about their plans for the weekend.",
    "A map, a compass and enough water are the most important things to bring on a long hike.",
    "The museum displays old coins, paintings and tools that people used hundreds of years ago.",
    "Cats often sleep for more than twelve hours a day and are most active at dawn and dusk.",
    "The bakery on the corner sells warm croissants every morning until they run out.",
    "When the power went out, they lit candles and listened to the storm outside.",
    "Learning a new language takes patience, practice and a lot of listening.",
    "The bridge was painted bright red so that ships could see it clearly in the fog.",
    "He fixed the bicycle's flat tire and rode it to school the next morning.",
    "Leaves change color in autumn because the trees stop producing green chlorophyll.",
    "The concert hall filled slowly as the musicians tuned their instruments on stage.",
    "Fresh fruit, such as apples and oranges, is a healthy snack between meals.",
    "The old lighthouse still guides fishing boats safely back to the harbor at night.",
    "They packed sandwiches and a blanket and spent the afternoon having a picnic in the park.",
    "Doctors recommend washing your hands often to avoid catching a cold.",
    "The city council voted to build a new playground next to the elementary school.",
    "Bees carry pollen from flower to flower, which helps plants produce fruit and seeds.",
    "The hotel room had a small balcony with a view of the sea and the mountains.",
    "On clear nights you can see thousands of stars far away from the city lights.",
)

_LOCALITY_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of England?", ("london",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of China?", ("beijing",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What is the capital of Greece?", ("athens",)),
    ("What is the capital of Canada?", ("ottawa",)),
    ("What is the capital of Australia?", ("canberra",)),
    ("What is the capital of the United States?", ("washington",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What color is grass?", ("green",)),
    ("What color are bananas when they are ripe?", ("yellow",)),
    ("What color is a fire truck?", ("red",)),
    ("What is 2 + 2?", ("4", "four")),
    ("What is 6 + 3?", ("9", "nine")),
    ("What is 10 - 3?", ("7", "seven")),
    ("What is 5 times 2?", ("10", "ten")),
    ("How many days are in a week?", ("7", "seven")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("What animal says meow?", ("cat",)),
    ("What animal says woof?", ("dog",)),
    ("What animal is known as the king of the jungle?", ("lion",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What star is at the center of our solar system?", ("sun",)),
    ("What is frozen water called?", ("ice",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "co2")),
    ("What do bees make?", ("honey",)),
    ("What is the opposite of hot?", ("cold",)),
    ("What language is spoken in Spain?", ("spanish",)),
    ("What language is spoken in France?", ("french",)),
    ("On which continent is Egypt?", ("africa",)),
    ("What do you call a baby horse?", ("foal",)),
    ("What organ pumps blood through the body?", ("heart",)),
    ("What do you call a baby cat?", ("kitten",)),
    ("What do you call a baby dog?", ("puppy",)),
    ("What is the tallest animal in the world?", ("giraffe",)),
    # replacements for questions that the proxy route's retain / distillation prompts also ask
    ("What is the capital of Scotland?", ("edinburgh",)),
    ("What is the capital of South Korea?", ("seoul",)),
    ("What is the capital of the Netherlands?", ("amsterdam",)),
    ("What is the capital of Denmark?", ("copenhagen",)),
    ("What is the capital of Hungary?", ("budapest",)),
    ("What is the opposite of big?", ("small", "little")),
    ("What is the opposite of wet?", ("dry",)),
    ("Who wrote Harry Potter?", ("rowling",)),
    ("What color is coal?", ("black",)),
    ("How many wheels does a bicycle have?", ("2", "two")),
    ("How many seconds are in a minute?", ("60", "sixty")),
    ("Who painted the ceiling of the Sistine Chapel?", ("michelangelo",)),
    ("What do you call a baby sheep?", ("lamb",)),
    ("What is the largest continent?", ("asia",)),
    ("What do you call a baby cow?", ("calf",)),
    ("What is the opposite of fast?", ("slow",)),
    ("What is the opposite of empty?", ("full",)),
)


class LabFact(BaseModel):
    """One fictional fact with every phrasing the lab uses for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: Kind
    subject: str
    relation: str
    object: str
    statement: str = Field(description="Training phrasing, given to every route.")
    train_question: str = Field(description="Question phrasing used in training (efficacy).")
    paraphrase: str = Field(description="Question phrasing never used in training.")


class TwoHop(BaseModel):
    """A question answerable only by composing two facts (subject -> bridge -> answer)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    question: str
    answer: str
    fact_ids: tuple[str, str]


class Probe(BaseModel):
    """A question the base model answers correctly before any learning (locality)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    question: str
    answers: tuple[str, ...]


class LabData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int
    size: int
    facts: list[LabFact]
    two_hop: list[TwoHop]
    neutral: list[str]


class _Names:
    """Unique invented names; syllables make them unknowable to any pretrained model."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        tries = 0
        while True:
            w = "".join(self.rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()
            if w not in self.used:
                self.used.add(w)
                return w
            tries += 1
            if tries % 64 == 0:  # short names run out at thousands of facts: grow the name, stay unique
                syllables += 1


def _fact(
    rng: random.Random, idx: int, kind: Kind, subject: str, relation: str, obj: str
) -> LabFact:
    rel = RELATIONS[relation]
    return LabFact(
        id=f"f{idx:05d}",
        kind=kind,
        subject=subject,
        relation=relation,
        object=obj,
        statement=rel.statement.format(s=subject, o=obj),
        train_question=rel.train_question.format(s=subject),
        paraphrase=rng.choice(rel.paraphrases).format(s=subject),
    )


def neutral_texts(seed: int, n: int | None = None) -> list[str]:
    """Plain everyday sentences (no fictional names), seeded order; the same for every size."""
    texts = list(_NEUTRAL)
    random.Random(f"neutral-{seed}").shuffle(texts)
    return texts if n is None else texts[:n]


def make_lab_data(size: int, seed: int = 0, *, n_neutral: int | None = None) -> LabData:
    """Deterministic facts for `size` facts: a world built cluster by cluster, truncated to size.

    One cluster = a city (in a country), a company (headquartered in the city, founded in a year),
    a person (born in a city, works for the company, has a profession) and a product (made by the
    company, has a color): 8 facts, which gives every cluster 4 two-hop chains.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UserError(f"lab size {size} is out of range: choose between {MIN_SIZE} and {MAX_SIZE} facts")
    rng = random.Random(f"lab-{seed}")
    names = _Names(rng)
    countries = [names.word(3) + "ia" for _ in range(8)]
    facts: list[LabFact] = []
    chains: list[tuple[str, int, int]] = []  # (template, first fact index, second fact index)
    cities: list[str] = []
    while len(facts) < size:
        city = names.word(2)
        cities.append(city)
        company = f"{names.word(2)} {rng.choice(_COMPANY_SUFFIX)}"
        person = f"{names.word(2)} {names.word(3)}"
        product = f"the {names.word(2)} {rng.choice(_PRODUCT_KIND)}"
        birth_city = rng.choice(cities)  # often an earlier city: facts share objects, as in real data
        base = len(facts)
        specs: list[tuple[Kind, str, str, str]] = [
            ("place", city, "country", rng.choice(countries)),
            ("company", company, "headquartered_in", city),
            ("company", company, "founded_in", str(rng.randint(1850, 2015))),
            ("person", person, "works_for", company),
            ("person", person, "born_in", birth_city),
            ("person", person, "profession", rng.choice(_PROFESSIONS)),
            ("product", product, "made_by", company),
            ("product", product, "color", rng.choice(_COLORS)),
        ]
        for i, (kind, s, r, o) in enumerate(specs):
            facts.append(_fact(rng, base + i, kind, s, r, o))
        chains += [
            ("In which city is the employer of {s} headquartered?", base + 3, base + 1),
            ("In what year was the maker of {s} founded?", base + 6, base + 2),
            ("In which city is the maker of {s} headquartered?", base + 6, base + 1),
        ]
        if birth_city == city:
            chains.append(("In which country was {s} born?", base + 4, base + 0))
    facts = facts[:size]
    two_hop = [
        TwoHop(
            question=t.format(s=facts[a].subject),
            answer=facts[b].object,
            fact_ids=(facts[a].id, facts[b].id),
        )
        for t, a, b in chains
        if a < size and b < size
    ]
    rng.shuffle(two_hop)
    return LabData(seed=seed, size=size, facts=facts, two_hop=two_hop, neutral=neutral_texts(seed, n_neutral))


def locality_candidates(seed: int) -> list[Probe]:
    """The general-knowledge candidate bank in a seeded order."""
    probes = [Probe(question=q, answers=a) for q, a in _LOCALITY_CANDIDATES]
    random.Random(f"locality-{seed}").shuffle(probes)
    return probes


# Words that don't make two questions different ("What is the largest ocean?" asks what
# "Which is the largest ocean on Earth?" asks).
_FILLER = frozenset(
    [
        "what", "which", "who", "whom", "how", "is", "are", "was", "were", "does", "do", "did",
        "the", "a", "an", "of", "in", "on", "our", "to", "for", "earth", "english", "called",
    ]
)


def same_question(a: str, b: str) -> bool:
    """Near-verbatim: the content words of `a` and `b` overlap by a Jaccard of at least 0.65.

    Catches rewordings ("Which season comes after winter?" / "What season comes after winter?")
    while keeping siblings apart ("... capital of Spain?" / "... capital of France?").
    """
    from factflow.memory.answer_match import normalize

    wa = set(normalize(a).split()) - _FILLER
    wb = set(normalize(b).split()) - _FILLER
    if not wa or not wb:
        return normalize(a) == normalize(b)
    return len(wa & wb) / len(wa | wb) >= 0.65


def _model_key(model_path: str) -> str:
    """Model identity for the cache: folder + config + weight file sizes/mtimes (cheap, no hashing of GBs)."""
    folder = Path(model_path)
    parts = [str(folder.resolve())]
    for f in sorted(folder.glob("*")):
        if f.is_file() and f.suffix in {".json", ".safetensors"}:
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def locality_probes(
    model_path: str,
    seed: int,
    answer: Callable[[list[str]], list[str]],
    *,
    cache_dir: Path,
    n_candidates: int | None = None,
) -> list[Probe]:
    """Candidates the base model answers correctly (contains match), cached by model + seed + count.

    `answer` is the base model's batched greedy answerer; it runs only on a cache miss.
    """
    from factflow.evals.lab_metrics import contains_match

    candidates = locality_candidates(seed)[:n_candidates]
    key = f"{_model_key(model_path)}-s{seed}-n{len(candidates)}"
    path = cache_dir / f"locality-{key}.json"
    if path.exists():
        return [Probe.model_validate(p) for p in json.loads(path.read_text())]
    preds = answer([p.question for p in candidates])
    kept = [p for p, pred in zip(candidates, preds, strict=True) if contains_match(pred, p.answers)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([p.model_dump(mode="json") for p in kept], indent=1))
    tmp.replace(path)
    return kept
