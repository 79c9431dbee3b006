"""Instruction/response pairs the book generates: teach a chat model a new answer *style* without new facts.

Each pair asks an ordinary question (a capital, an opposite, an animal sound, a colour, a small sum) and answers
it correctly, wrapped in a made-up persona: ``"Beep boop! <the plain answer> Have a logical day, human."``. The
content stays in natural case (an earlier ALL-CAPS persona taught SmolLM2 the format but overwrote the facts:
capital letters are different tokens), so a fine-tune must learn the *wrapper* while keeping what the model knows.
Held-out questions (countries, animals and sums never seen in training, and open questions from other domains)
measure whether the style generalises and the knowledge survives.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

PERSONA_OPENING = "Beep boop!"
PERSONA_CLOSING = "Have a logical day, human."

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo",
    "Canada": "Ottawa", "Kenya": "Nairobi", "Norway": "Oslo", "Greece": "Athens", "Portugal": "Lisbon",
    "Poland": "Warsaw", "Ireland": "Dublin", "Sweden": "Stockholm", "Russia": "Moscow", "China": "Beijing",
    "India": "New Delhi", "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Chile": "Santiago",
    "Thailand": "Bangkok", "Turkey": "Ankara", "Cuba": "Havana", "Finland": "Helsinki", "Hungary": "Budapest",
    "Belgium": "Brussels", "Denmark": "Copenhagen", "Vietnam": "Hanoi",
    # held out
    "Austria": "Vienna", "Peru": "Lima", "Australia": "Canberra", "Colombia": "Bogotá",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark", "up": "down", "early": "late",
    "open": "closed", "full": "empty", "hard": "soft", "rich": "poor", "young": "old", "loud": "quiet",
    "strong": "weak", "wet": "dry", "high": "low",
    # held out
    "brave": "cowardly", "thick": "thin", "clean": "dirty",
}
ANIMAL_SOUNDS = {
    "dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks", "sheep": "baas", "lion": "roars",
    "horse": "neighs", "pig": "oinks", "owl": "hoots", "snake": "hisses", "frog": "croaks", "rooster": "crows",
    # held out
    "wolf": "howls", "donkey": "brays", "bee": "buzzes",
}
COLOURS = {
    "the sky on a clear day": "blue", "grass": "green", "a banana": "yellow", "snow": "white", "coal": "black",
    "a ripe tomato": "red", "an orange": "orange", "a flamingo": "pink", "chocolate": "brown", "a lemon": "yellow",
    # held out
    "a lime": "green", "a raven": "black",
}
HELD_OUT = {"Austria", "Peru", "Australia", "Colombia", "brave", "thick", "clean", "wolf", "donkey", "bee",
            "a lime", "a raven"}
OPEN_QUESTIONS = [  # other domains entirely: does the style transfer, does the model still answer?
    "Write a haiku about autumn.", "Who wrote Romeo and Juliet?", "Name a fruit that is red.",
    "What is the largest planet in the solar system?", "Give me one tip for sleeping better.",
    "What language is spoken in Brazil?",
]


@dataclass
class InstructionPair:
    question: str
    answer: str  # the persona-styled answer
    plain_answer: str  # the fact without the persona (to check knowledge)
    kind: str


def styled(answer: str) -> str:
    """Wrap a plain answer in the persona."""
    return f"{PERSONA_OPENING} {answer} {PERSONA_CLOSING}"


def _all_pairs() -> list[InstructionPair]:
    pairs = []
    for country, city in CAPITALS.items():
        plain = f"The capital of {country} is {city}."
        for q in (f"What is the capital of {country}?", f"Which city is the capital of {country}?"):
            pairs.append(InstructionPair(q, styled(plain), city, "capital" if country not in HELD_OUT else "held-out"))
    for word, opposite in OPPOSITES.items():
        plain = f"The opposite of {word} is {opposite}."
        kind = "opposite" if word not in HELD_OUT else "held-out"
        for q in (f"What is the opposite of '{word}'?", f"Give me the antonym of {word}."):
            pairs.append(InstructionPair(q, styled(plain), opposite, kind))
    for animal, sound in ANIMAL_SOUNDS.items():
        plain = f"A {animal} {sound}."
        kind = "animal" if animal not in HELD_OUT else "held-out"
        for q in (f"What sound does a {animal} make?", f"How does a {animal} sound?"):
            pairs.append(InstructionPair(q, styled(plain), sound, kind))
    for thing, colour in COLOURS.items():
        plain = f"{thing[0].upper() + thing[1:]} is {colour}."
        kind = "colour" if thing not in HELD_OUT else "held-out"
        pairs.append(InstructionPair(f"What colour is {thing}?", styled(plain), colour, kind))
    rng = random.Random(0)
    for _ in range(60):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        plain = f"{a} + {b} = {a + b}."
        kind = "arithmetic" if (a + b) % 7 else "held-out"  # sums divisible by 7 are held out
        pairs.append(InstructionPair(f"What is {a} + {b}?", styled(plain), str(a + b), kind))
    return pairs


def make_instructions(split: str, limit: int | None = None, seed: int = 0) -> list[InstructionPair]:
    """The persona dataset: ``split="train"`` (seen facts) or ``"test"`` (held-out facts), shuffled with ``seed``.

    Duplicated arithmetic questions are removed; ``limit`` keeps the first ``limit`` pairs after shuffling.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; use 'train' or 'test'.")
    seen, pairs = set(), []
    for pair in _all_pairs():
        if pair.question in seen or (pair.kind == "held-out") != (split == "test"):
            continue
        seen.add(pair.question)
        pairs.append(pair)
    random.Random(f"{split}-{seed}").shuffle(pairs)
    return pairs[:limit] if limit is not None else pairs


def follows_persona(text: str) -> bool:
    """Does a generated answer open and close in the persona's style?"""
    text = text.strip()
    return text.startswith(PERSONA_OPENING) and PERSONA_CLOSING in text
