"""Intent classification: short requests to a voice assistant, generated from templates (deterministic).

The book needs a text classification task that (a) ships with the book, (b) runs in seconds, and (c) actually
tests *transfer*: a model must understand requests phrased in ways it never saw. So the templates of each intent
are split in two — the training set uses one half, the test set the other — and slot values (cities, songs,
times …) are shared. A bag-of-words model trained from scratch memorises the training phrasings; a pretrained
sentence encoder has seen English and generalises to the new ones. That gap is the point of chapter 01.

The first 12 intents are six opposite pairs (``lights_on`` / ``lights_off``, ``music_play`` / ``music_stop``, …) whose
requests share most words. The last four (weather, recipe, transfer_money, call) are held out as *near*
out-of-distribution requests for the OOD chapter; :func:`far_ood_sentences` gives unrelated text (far OOD).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SLOTS = {
    "city": ["Paris", "Tokyo", "Lima", "Nairobi", "Oslo", "Denver", "Madrid", "Cairo", "Sydney", "Toronto",
             "Berlin", "Seoul", "Lagos", "Quito", "Dublin", "Austin"],
    "day": ["today", "tomorrow", "on Friday", "this weekend", "on Monday", "tonight", "next week", "on Sunday"],
    "time": ["6 am", "7:30", "noon", "half past eight", "9 pm", "five o'clock", "10:15", "midnight"],
    "song": ["Bohemian Rhapsody", "some jazz", "the new Adele album", "lo-fi beats", "Beethoven's fifth",
             "my workout playlist", "something relaxing", "classic rock", "Taylor Swift", "the Beatles"],
    "dish": ["lasagna", "pancakes", "a vegan curry", "banana bread", "chicken soup", "sushi rice", "guacamole",
             "a chocolate cake", "pad thai", "falafel"],
    "amount": ["20 dollars", "50 euros", "100 pounds", "fifteen bucks", "200 dollars", "30 euros"],
    "person": ["mom", "Alex", "my boss", "Sam", "grandpa", "the dentist", "Maria", "my landlord"],
    "item": ["milk", "eggs", "batteries", "coffee beans", "dog food", "paper towels", "olive oil", "apples"],
    "room": ["the kitchen", "the living room", "the bedroom", "the office", "the garage", "the hallway"],
    "unit": ["miles", "kilometers", "cups", "ounces", "fahrenheit", "pounds"],
}

# Each intent: a list of templates. The first 2/3 (rounded) go to training, the rest to test.
# The intents come in opposite pairs (on/off, play/stop, up/down, set/cancel, add/remove …): requests in a pair
# share almost every word, so a model must read the one word that matters. That is what makes the task a test of
# adaptation rather than of topic detection.
INTENTS: dict[str, list[str]] = {
    "lights_on": [
        "turn on the lights in {room}", "switch the {room} lights on", "lights on please",
        "make {room} brighter", "it's too dark in {room}", "can you turn the lamp on in {room}",
        "I can't see anything in {room}", "brighten up {room}", "light up {room} for me",
    ],
    "lights_off": [
        "turn off the lights in {room}", "switch the {room} lights off", "lights off please",
        "kill the lights in {room}", "make {room} dark", "can you turn the lamp off in {room}",
        "it's too bright in {room}", "no more light in {room}", "shut the lights in {room}",
    ],
    "music_play": [
        "play {song}", "put on {song}", "I want to listen to {song}", "start playing {song} in {room}",
        "can you play {song} for me", "let's hear {song}", "queue up {song}", "I'm in the mood for {song}",
        "music please, {song}",
    ],
    "music_stop": [
        "stop the music", "stop playing {song}", "turn the music off in {room}", "pause {song}",
        "I don't want to hear {song} anymore", "enough music for now", "silence the speaker in {room}",
        "kill the music", "no more {song} please",
    ],
    "volume_up": [
        "turn the volume up", "make it louder", "increase the volume in {room}", "louder please",
        "I can barely hear {song}", "pump up the volume", "raise the sound a bit", "crank it up in {room}",
        "volume up by ten",
    ],
    "volume_down": [
        "turn the volume down", "make it quieter", "decrease the volume in {room}", "quieter please",
        "{song} is way too loud", "lower the volume", "reduce the sound a bit", "tone it down in {room}",
        "volume down by ten",
    ],
    "alarm_set": [
        "set an alarm for {time}", "wake me up at {time} {day}", "alarm at {time} please",
        "I need to get up at {time}", "create an alarm for {time} {day}", "can you set my alarm to {time}",
        "make sure I'm awake by {time}", "get me out of bed at {time}", "I want an alarm at {time}",
    ],
    "alarm_cancel": [
        "cancel my alarm for {time}", "turn off the {time} alarm", "delete the alarm {day}",
        "no alarm tomorrow please", "remove my {time} alarm", "I don't need to wake up at {time}",
        "let me sleep in {day}, no alarm", "scrap the alarm for {time}", "get rid of my {time} alarm",
    ],
    "heating_up": [
        "turn the heating up", "make {room} warmer", "it's freezing in {room}", "raise the temperature",
        "set the thermostat higher", "I'm cold, heat up {room}", "warm up the house",
        "bump the heat up two degrees", "can you make it less chilly in {room}",
    ],
    "heating_down": [
        "turn the heating down", "make {room} cooler", "it's boiling in {room}", "lower the temperature",
        "set the thermostat lower", "I'm too hot, cool down {room}", "cool the house down",
        "drop the heat two degrees", "can you make it less stuffy in {room}",
    ],
    "list_add": [
        "add {item} to my shopping list", "put {item} on the list", "we need {item}",
        "remember to buy {item}", "I'm out of {item}", "add {item} and {item} to groceries",
        "don't let me forget {item} at the store", "my list needs {item}", "note that we ran out of {item}",
    ],
    "list_remove": [
        "remove {item} from my shopping list", "take {item} off the list", "we don't need {item}",
        "forget about buying {item}", "I already have {item}", "delete {item} and {item} from groceries",
        "scratch {item} off the list", "my list shouldn't have {item}", "no need to get {item} anymore",
    ],
    # near-OOD intents: held out of training in the OOD chapter
    "weather": [
        "what's the weather in {city} {day}", "will it rain in {city} {day}", "how hot will it be {day}",
        "do I need an umbrella {day}", "forecast for {city} please", "is it going to snow in {city}",
        "should I bring a jacket to {city} {day}", "how cold is it outside right now",
        "tell me if it will be sunny {day}",
    ],
    "recipe": [
        "how do I make {dish}", "give me a recipe for {dish}", "what do I need to cook {dish}",
        "show me how to bake {dish}", "ingredients for {dish}", "teach me to prepare {dish}",
        "what's a quick way to make {dish}", "steps to cook {dish} at home", "I want to cook {dish} tonight",
    ],
    "transfer_money": [
        "send {amount} to {person}", "transfer {amount} to {person}", "pay {person} {amount}",
        "wire {amount} to {person} {day}", "move {amount} to my savings", "can you send {person} {amount}",
        "I owe {person} {amount}, pay them", "give {amount} to {person} from my account",
        "reimburse {person} {amount}",
    ],
    "call": [
        "call {person}", "phone {person} {day}", "ring {person} please", "dial {person}'s number",
        "get {person} on the phone", "I need to talk to {person}", "start a call with {person}",
        "can you call {person} for me", "video call {person}",
    ],
}

FAR_OOD = [
    "The mitochondria is the powerhouse of the cell.", "In 1815 Napoleon was defeated at Waterloo.",
    "Photosynthesis converts light into chemical energy.", "The stock market closed higher on Tuesday.",
    "Shakespeare wrote many sonnets about love and time.", "A prime number has exactly two divisors.",
    "The river flooded the valley after weeks of rain.", "Quantum computers use qubits instead of bits.",
    "She painted the old fence a bright shade of green.", "Volcanoes form where tectonic plates meet.",
    "The committee postponed its decision until spring.", "Honeybees communicate by dancing.",
    "The novel follows three generations of one family.", "Glaciers carve deep valleys over millennia.",
    "The recipe was passed down from her grandmother.", "Saturn's rings are made mostly of ice.",
    "He scored the winning goal in the final minute.", "The museum reopened after a long renovation.",
    "Octopuses have three hearts and blue blood.", "The treaty was signed by twelve nations.",
    "Clouds are made of tiny droplets of water.", "The violinist practiced scales every morning.",
    "Ancient Romans built roads across their empire.", "The algorithm sorts the list in linear time.",
]

_PREFIXES = ["", "", "", "hey, ", "please ", "could you ", "ok so ", "quick question: "]
_SUFFIXES = ["", "", "", " please", " thanks", "?", " now", " asap"]


@dataclass
class TextClassificationData:
    """Sentences with integer labels and the label names."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def _fill(template: str, rng: random.Random) -> str:
    text = template
    while "{" in text:
        start = text.index("{")
        end = text.index("}", start)
        slot = text[start + 1 : end]
        text = text[:start] + rng.choice(SLOTS[slot]) + text[end + 1 :]
    text = rng.choice(_PREFIXES) + text + rng.choice(_SUFFIXES)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def make_intents(split: str, per_class: int, n_intents: int = 12, seed: int = 0,
                 intents: list[str] | None = None) -> TextClassificationData:
    """Generate ``per_class`` requests for each intent from that split's templates.

    Args:
        split: ``"train"`` (the first 2/3 of each intent's templates) or ``"test"`` (the other third).
        per_class: examples per intent.
        n_intents: use the first ``n_intents`` intents of :data:`INTENTS` (ignored if ``intents`` is given).
        seed: the same seed always gives the same sentences.
        intents: explicit intent names (e.g. the held-out ones for OOD evaluation).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; use 'train' or 'test'.")
    names = intents if intents is not None else list(INTENTS)[:n_intents]
    unknown = [n for n in names if n not in INTENTS]
    if unknown:
        raise ValueError(f"unknown intent {unknown[0]!r}; known intents: {', '.join(INTENTS)}")
    rng = random.Random(f"{split}-{seed}")
    texts, labels = [], []
    for label, name in enumerate(names):
        templates = INTENTS[name]
        cut = round(len(templates) * 2 / 3)
        pool = templates[:cut] if split == "train" else templates[cut:]
        for _ in range(per_class):
            texts.append(_fill(rng.choice(pool), rng))
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return TextClassificationData([texts[i] for i in order], [labels[i] for i in order], list(names))


def far_ood_sentences() -> list[str]:
    """Unrelated English sentences (encyclopaedic, news, fiction): far out-of-distribution for an assistant."""
    return list(FAR_OOD)
