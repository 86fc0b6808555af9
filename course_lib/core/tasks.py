"""A verifiable course task: extract a person's fields from free text into JSON.

Every example is generated from a seed, so splits repeat exactly, and the answer is
known, so exact match on the parsed JSON measures a model honestly. The sentences vary
in wording, order, number style and which fields they mention, so a model has to learn
the mapping rather than one template.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

FIELDS = ("name", "age", "city", "job")
INSTRUCTION = 'Reply with only a JSON object giving the name, age, city and job of the person, with the keys "name", "age", "city", "job" (null if not given).'

_FIRST = (
    "Ana Maria Tomás Priya Kenji Olga Liam Fatima Noah Chloé Mateo Aisha Lars Mei Diego Zoe Omar Ingrid "
    "Rafael Yuki Amara Finn Leila Sven Nadia Jonas Carmen Ravi Elif Hugo Sofia Kwame Hana Pablo Greta "
    "Tariq Lucia Emil Anya Bruno Ines José Marta Ibrahim Clara Felix Naomi Aziz Petra Luca Maya Oskar"
).split()
_LAST = (
    "Silva Novak Kowalski Tanaka Haddad Okafor Jensen Rossi Müller García Chen Dubois Singh Ivanova "
    "Costa Larsen Nakamura Moreau Ali Fischer Romero Kim Berg Mensah Petrov Lindqvist Alvarez Park"
).split()
_CITIES = (
    "Lisbon|Warsaw|Osaka|Beirut|Lagos|Aarhus|Turin|Munich|Valencia|Taipei|Lyon|Pune|Kazan|Porto|Bergen|"
    "Kyoto|Nantes|Cairo|Leipzig|Seville|Busan|Uppsala|Accra|Sofia|Gothenburg|Córdoba|Daejeon|Graz|"
    "São Paulo|New York|Cape Town|Buenos Aires|Kuala Lumpur|Mexico City"
).split("|")
_JOBS = (
    "nurse|baker|architect|pilot|teacher|plumber|data analyst|chef|lawyer|electrician|librarian|"
    "photographer|software engineer|farmer|dentist|journalist|carpenter|pharmacist|translator|"
    "bus driver|marine biologist|accountant|firefighter|violinist|civil engineer|florist|mechanic|"
    "veterinarian|tailor|game designer"
).split("|")
_NUMBER_WORDS = {
    20: "twenty", 21: "twenty-one", 22: "twenty-two", 23: "twenty-three", 25: "twenty-five",
    27: "twenty-seven", 30: "thirty", 31: "thirty-one", 34: "thirty-four", 36: "thirty-six",
    40: "forty", 42: "forty-two", 45: "forty-five", 48: "forty-eight", 50: "fifty", 53: "fifty-three",
    57: "fifty-seven", 60: "sixty", 64: "sixty-four", 68: "sixty-eight",
}  # fmt: skip

# Templates by the fields they mention; {age} is filled with digits or words at random.
_TEMPLATES: dict[tuple[str, ...], list[str]] = {
    ("name", "age", "city", "job"): [
        "{name} is a {age}-year-old {job} who lives in {city}.",
        "Meet {name}, {age}, {a_job} from {city}.",
        "{city}-based {job} {name} turned {age} last month.",
        "At {age}, {name} works as {a_job} in {city}.",
        "Name: {name}. Age: {age}. Lives in {city}, works as {a_job}.",
        "Our new neighbour {name} ({age}) moved here from {city} and is {a_job}.",
        "I met {name} in {city}; they are {age} and work as {a_job}.",
        "The {job} {name}, aged {age}, commutes every day across {city}.",
        "After years in {city}, {name} became {a_job} at the age of {age}.",
        "{name} | {age} | {job} | {city}",
    ],
    ("name", "age", "city"): [
        "{name} is {age} years old and lives in {city}.",
        "{name}, {age}, grew up in {city} and never left.",
        "Born {age} years ago, {name} still calls {city} home.",
    ],
    ("name", "age", "job"): [
        "{name} has been {a_job} since turning {age}.",
        "{name}, a {age}-year-old {job}, answered the door.",
        "Applicant: {name}, {age}, current role {job}.",
    ],
    ("name", "city", "job"): [
        "{name} works as {a_job} in {city}.",
        "Ask {name}, the {job} from {city}.",
        "{name} left {city} to find work as {a_job}.",
    ],
    ("name", "job"): [
        "{name} is {a_job}.",
        "Everyone knows {name}, the {job} down the street.",
    ],
    ("name", "city"): [
        "{name} lives in {city}.",
        "Greetings from {city}! - {name}",
    ],
    ("name", "age"): [
        "{name} just celebrated turning {age}.",
        "{name} is {age}.",
    ],
}


@dataclass(frozen=True)
class Example:
    """One task example: the input text and the exact answer."""

    text: str
    answer: dict

    def answer_json(self) -> str:
        """The answer as the compact JSON the model should produce."""
        return answer_to_json(self.answer)


def answer_to_json(answer: dict) -> str:
    """Canonical JSON for an answer: fixed key order, UTF-8 kept as is."""
    return json.dumps({key: answer.get(key) for key in FIELDS}, ensure_ascii=False)


def _sample(rng: random.Random) -> Example:
    fields = rng.choice(list(_TEMPLATES))
    template = rng.choice(_TEMPLATES[fields])
    name = rng.choice(_FIRST) if rng.random() < 0.5 else f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    if rng.random() < 0.2:  # ages in words make the model read, not copy digits
        age = rng.choice(list(_NUMBER_WORDS))
        shown_age = _NUMBER_WORDS[age]
    else:
        age = rng.randint(19, 79)
        shown_age = str(age)
    values = {"name": name, "age": age, "city": rng.choice(_CITIES), "job": rng.choice(_JOBS)}
    article = "an" if values["job"][0] in "aeiou" else "a"
    text = template.format(**{**values, "age": shown_age, "a_job": f"{article} {values['job']}"})
    text = text[0].upper() + text[1:]
    answer = {key: (values[key] if key in fields else None) for key in FIELDS}
    return Example(text=text, answer=answer)


def make_examples(n: int, seed: int = 0) -> list[Example]:
    """`n` distinct examples from a seeded generator."""
    rng = random.Random(seed)
    return distinct(lambda: _sample(rng), n, what="examples")


def distinct(sample: Callable[[], T], n: int, what: str = "examples") -> list[T]:
    """`n` samples with distinct `.text`, in the order drawn; a clear error when the space runs out."""
    seen: set[str] = set()
    out: list[T] = []
    misses = 0
    while len(out) < n:
        example = sample()
        if example.text in seen:
            misses += 1
            if misses > 10_000:  # the space is exhausted, not unlucky: fail instead of spinning
                raise ValueError(f"could not generate {n} distinct {what}; the generator has too few combinations")
            continue
        misses = 0
        seen.add(example.text)
        out.append(example)
    return out


def make_splits(n_train: int = 400, n_val: int = 50, n_test: int = 100, seed: int = 0) -> dict[str, list[Example]]:
    """Train/validation/test splits with no text shared between them."""
    examples = make_examples(n_train + n_val + n_test, seed=seed)
    return {
        "train": examples[:n_train],
        "validation": examples[n_train : n_train + n_val],
        "test": examples[n_train + n_val :],
    }


def answer_schema() -> dict:
    """The JSON schema every answer matches: the four keys, no others; age an integer, the rest text; null if absent."""
    text_or_null = {"type": ["string", "null"]}
    return {"type": "object",
            "properties": {"name": text_or_null, "age": {"type": ["integer", "null"]}, "city": text_or_null,
                           "job": text_or_null},
            "required": list(FIELDS), "additionalProperties": False}


def prompt_messages(example: Example) -> list[dict]:
    """The chat messages that ask for the answer: the instruction as system turn, the text as user turn."""
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": example.text}]


def to_messages(example: Example) -> list[dict]:
    """The full training conversation: the prompt plus the assistant's JSON answer."""
    return prompt_messages(example) + [{"role": "assistant", "content": example.answer_json()}]
