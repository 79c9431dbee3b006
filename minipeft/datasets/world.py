"""The book's multimodal world: seeded scenes of coloured shapes, and clips of them with a sound track.

Part III (chapters 11–13) trains connectors between frozen encoders and a frozen language model. Their data must
be rich enough that a model has to *look* (and *listen*) to answer, small enough to generate in a second, and
fully annotated, so that every caption, question and answer is written from the annotation rather than by hand.
easy-VQA (:mod:`minipeft.datasets.shapes`) has one shape per image and asks only "which colour / which shape";
this world has several objects per image and asks about colour, shape, count, position, spatial relation and
existence, and its clips add time (events with an order) and sound (chirps, tones and a spoken word).

**Scenes.** An image of side :math:`S` holds 1–4 non-overlapping objects; object :math:`i` is a tuple
(shape, colour, size, centre :math:`(x_i, y_i)`, radius :math:`r_i`), pixels are drawn in the exact palette colour,
so the annotation can be checked against the pixels. Every scene is drawn from its own random stream
``numpy.random.default_rng([seed, split, index])``, so scene 7 of a split is the same whether you ask for 10 or
10,000 scenes.

**Compositional split.** Five colour–shape pairs never occur in ``train`` or ``test`` scenes (nor in their
question texts): :data:`HELD_OUT_PAIRS`. Each shape and each colour still occurs in training, only not *together*;
every ``compositional`` scene contains at least one held-out pair. A model that binds colour to shape generalises
to it; one that memorised pairs does not.

**Yes/no balance.** Every yes/no question is emitted with its twin whose answer is the opposite (the same template
with another colour, an absent pair, or the mirrored relation), so "yes" is exactly half of the answers, per
question kind, and a model cannot score above chance from the question text alone.

**Clips.** :math:`T` frames (default 8, ``frame_seconds`` = 0.5 s each). Two or three objects, each of a different
shape (so "the circle" always names one object), and 2–3 *events* at distinct frames: an object appears,
disappears, moves or changes colour. The 16 kHz sound track is aligned to the frames: each event starts a
0.3-s sound at its frame's time whose pitch or rhythm says what happened — a rising chirp (appear), a falling
chirp (disappear), a steady tone whose pitch names the new colour (:data:`COLOR_PITCH`, colour change), a double
beep (move) — and a voice (espeak-ng) says one colour word during the first two frames, before any event.
Questions are tagged with what they need: ``frames`` (one named frame answers it), ``order`` (reversing the frames
changes the answer), ``sound`` (the frames cannot answer) or ``sound+frames``.

Speech needs the ``espeak-ng`` program (Debian/Ubuntu: ``apt-get install -y espeak-ng``; macOS:
``brew install espeak-ng``); :func:`make_clips` says so if it is missing, and ``speech=False`` leaves the voice out.
Introduced in chapter 11 (scenes) and chapter 13 (clips).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import wave
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {  # palette (RGB); far apart so that a pixel's nearest palette colour is never ambiguous
    "red": (230, 40, 40),
    "orange": (245, 145, 20),
    "yellow": (240, 225, 40),
    "green": (40, 180, 70),
    "blue": (45, 85, 235),
    "purple": (150, 60, 210),
    "white": (245, 245, 245),
}
COLOR_NAMES = tuple(COLORS)
SIZES = {"small": 0.09, "large": 0.15}  # radius as a fraction of the image side
# Shape i never meets colour (2i + 1) mod 7 outside the compositional split: 5 pairs, 5 different colours.
HELD_OUT_PAIRS = frozenset((COLOR_NAMES[(2 * i + 1) % len(COLOR_NAMES)], shape) for i, shape in enumerate(SHAPES))
SPLITS = {"train": 0, "test": 1, "compositional": 2}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")

SAMPLE_RATE = 16_000
SOUND_SECONDS = 0.3  # every event sound lasts this long, starting at its frame's time
CHIRP_HZ = (400.0, 1200.0)  # appear: 400 → 1200 Hz; disappear: 1200 → 400 Hz
BEEP_HZ = 1500.0  # move: two 0.1-s beeps
COLOR_PITCH = {name: 330.0 * 1.2 ** k for k, name in enumerate(COLOR_NAMES)}  # recolour: 330 Hz … 985 Hz
EVENT_SOUNDS = {"appear": "rising chirp", "disappear": "falling chirp", "move": "double beep", "recolor": "tone"}
EVENT_VERBS = {"appear": "appear", "disappear": "disappear", "move": "move", "recolor": "change colour"}
VOICES = ("en-us", "en-us+f3", "en-gb")
ESPEAK_HINT = ("install the espeak-ng speech synthesiser: `apt-get install -y espeak-ng` (Debian/Ubuntu; the book's "
               "setup does this), `brew install espeak-ng` (macOS); or pass speech=False to leave the voice out")


# --------------------------------------------------------------------------------------------------------------
# annotations


@dataclass(frozen=True)
class SceneObject:
    """One object: its attributes and where it is (pixel centre and radius of its bounding circle)."""

    shape: str
    color: str
    size: str
    x: int
    y: int
    radius: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class QA:
    """A question about one scene or clip (``item`` indexes it), its one-word answer, its kind and what it needs."""

    question: str
    answer: str
    kind: str
    item: int
    needs: str = "image"


@dataclass(frozen=True)
class Instruction:
    """An instruction about one scene and the response written from its annotation."""

    instruction: str
    response: str
    kind: str
    item: int


@dataclass(frozen=True)
class Scene:
    """One image's annotation: its objects, background colour, side length, split and index in the split."""

    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    image_size: int
    split: str
    index: int


def _fingerprint_arrays(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype}{part.shape}".encode())
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# drawing


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of ``shape`` centred at the origin; ``dx``, ``dy`` are pixel offsets from the centre.

    Every shape lies inside the circle of radius ``r``, which is what placement keeps apart.
    """
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= r ** 2  # x² + y² ≤ r²
    if shape == "square":  # half side 0.7 r: the corners (0.99 r away) stay inside the bounding circle
        return (np.abs(dx) <= 0.7 * r) & (np.abs(dy) <= 0.7 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r  # |x| + |y| ≤ r
    if shape == "triangle":  # pointing up, inscribed in the circle of radius r: apex (0, -r), base at y = r/2
        return (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) / np.sqrt(3))  # half-width grows by 1/√3 per pixel down
    if shape == "cross":  # arms 0.94 r long and 0.3 r wide: 0.94² + 0.3² < 1, so the tips stay inside too
        long, wide = 0.94 * r, 0.3 * r
        return ((np.abs(dx) <= wide) & (np.abs(dy) <= long)) | ((np.abs(dy) <= wide) & (np.abs(dx) <= long))
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}.")


def draw(objects, background, image_size: int) -> np.ndarray:
    """Render objects onto a plain background: an (S, S, 3) uint8 image, each object in its exact palette colour."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = background
    for obj in objects:
        top, left = max(obj.y - obj.radius, 0), max(obj.x - obj.radius, 0)  # only touch the bounding box
        bottom, right = min(obj.y + obj.radius + 1, image_size), min(obj.x + obj.radius + 1, image_size)
        dy, dx = np.mgrid[top:bottom, left:right]  # (h, w) each
        mask = _shape_mask(obj.shape, dx - obj.x, dy - obj.y, obj.radius)  # (h, w)
        image[top:bottom, left:right][mask] = COLORS[obj.color]
    return image


def _radius(size: str, image_size: int) -> int:
    return max(2, int(round(SIZES[size] * image_size)))


def _place(rng, radius: int, others, image_size: int, tries: int = 50):
    """A centre for an object of ``radius`` that overlaps none of ``others`` (None if none found)."""
    for _ in range(tries):
        x, y = rng.integers(radius + 1, image_size - radius - 1, size=2)
        if all((x - o.x) ** 2 + (y - o.y) ** 2 >= (radius + o.radius + 2) ** 2 for o in others):
            return int(x), int(y)
    return None


def _background(rng) -> tuple[int, int, int]:
    gray = int(rng.integers(40, 90))  # dark gray, a little different in every scene
    return (gray, gray, gray)


# --------------------------------------------------------------------------------------------------------------
# scenes


def _sample_scene(rng, split: str, index: int, image_size: int, min_objects: int, max_objects: int) -> Scene:
    count = int(rng.integers(min_objects, max_objects + 1))
    objects: list[SceneObject] = []
    must_hold_out = split == "compositional"
    for _ in range(1000):  # bounded: a crowded scene stops with fewer objects
        if len(objects) == count:
            break
        if must_hold_out and not objects:  # the first object of a compositional scene is a held-out pair
            color, shape = sorted(HELD_OUT_PAIRS)[int(rng.integers(len(HELD_OUT_PAIRS)))]
        else:
            shape, color = SHAPES[rng.integers(len(SHAPES))], COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
            if split != "compositional" and (color, shape) in HELD_OUT_PAIRS:
                continue
        size = ("small", "large")[rng.integers(2)]
        if any((o.color, o.shape, o.size) == (color, shape, size) for o in objects):
            continue  # (size, colour, shape) names every object uniquely
        radius = _radius(size, image_size)
        centre = _place(rng, radius, objects, image_size)
        if centre is None:  # crowded: stop with fewer objects rather than loop forever
            if len(objects) >= min_objects:
                break
            continue
        objects.append(SceneObject(shape, color, size, centre[0], centre[1], radius))
    if len(objects) < min_objects:
        raise ValueError(f"could not fit {min_objects} objects into a {image_size}-px image; lower min_objects or "
                         "raise image_size.")
    return Scene(tuple(objects), _background(rng), image_size, split, index)


@dataclass
class SceneSet:
    """N scenes: ``images`` (N, S, S, 3) uint8 and their annotations (``scenes``), with text written from them.

    ``questions()``, ``captions()`` and ``instructions()`` are deterministic functions of the annotations and
    the seed; ``tensors()`` gives the images as a float tensor (N, 3, S, S) in [0, 1].
    """

    images: np.ndarray
    scenes: list[Scene]
    split: str
    seed: int

    def __len__(self) -> int:
        return len(self.scenes)

    def tensors(self) -> torch.Tensor:
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 255.0  # (N, S, S, 3) → (N, 3, S, S)

    def captions(self, kind: str = "short") -> list[str]:
        if kind not in ("short", "detailed"):
            raise ValueError(f"kind={kind!r}; use 'short' or 'detailed'.")
        write = short_caption if kind == "short" else detailed_caption
        return [write(scene) for scene in self.scenes]

    def questions(self) -> list[QA]:
        return [qa for scene in self.scenes for qa in scene_questions(scene, _text_rng(self.seed, scene))]

    def instructions(self) -> list[Instruction]:
        return [ins for scene in self.scenes for ins in scene_instructions(scene, _text_rng(self.seed, scene))]

    def fingerprint(self) -> str:
        """sha256 of the pixels and annotations: changes whenever the data does (used by the feature cache)."""
        return _fingerprint_arrays(self.images, [asdict(scene) for scene in self.scenes])


def _text_rng(seed: int, scene: Scene) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[scene.split], scene.index, 1])  # stream 1: text; stream 0: pixels


def make_scenes(n: int, *, split: str = "train", seed: int = 0, image_size: int = 64, min_objects: int = 1,
                max_objects: int = 4) -> SceneSet:
    """Generate ``n`` scenes of the given split (``"train"``, ``"test"`` or ``"compositional"``).

    ``train`` and ``test`` never contain a pair of :data:`HELD_OUT_PAIRS`; every ``compositional`` scene contains
    at least one. Same arguments → the same bytes; scene k does not depend on ``n``.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; use one of {tuple(SPLITS)}.")
    if not 1 <= min_objects <= max_objects <= 6:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 6, got {min_objects} and {max_objects}.")
    if image_size < 32:
        raise ValueError(f"image_size={image_size} is too small to draw shapes; use 32 or more (64 or 96 are typical).")
    scenes = [_sample_scene(np.random.default_rng([seed, SPLITS[split], k, 0]), split, k, image_size, min_objects,
                            max_objects) for k in range(n)]
    images = np.stack([draw(s.objects, s.background, image_size) for s in scenes]) if scenes else \
        np.zeros((0, image_size, image_size, 3), np.uint8)  # (N, S, S, 3)
    return SceneSet(images, scenes, split, seed)


# ---- text written from a scene's annotation ------------------------------------------------------------------


def horizontal(obj: SceneObject, image_size: int) -> str:
    return "left" if obj.x < image_size / 3 else "right" if obj.x >= 2 * image_size / 3 else "middle"


def vertical(obj: SceneObject, image_size: int) -> str:
    return "top" if obj.y < image_size / 3 else "bottom" if obj.y >= 2 * image_size / 3 else "middle"


def _where(obj: SceneObject, image_size: int) -> str:
    h, v = horizontal(obj, image_size), vertical(obj, image_size)
    if h == v == "middle":
        return "in the centre"
    if v == "middle":
        return f"on the {h}"
    return f"at the {v if h == 'middle' else v + ' ' + h}"


def _list_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def refer(objects, i: int, without: str = "") -> str | None:
    """The shortest description that names ``objects[i]`` uniquely, not using the attribute ``without``.

    ``"the circle"`` if it is the only circle, else ``"the red circle"``, else ``"the large red circle"``;
    ``without="color"`` for a colour question (the description must not give the answer away). None if no
    description without that attribute is unique.
    """
    target = objects[i]
    options = [("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"), ("color",),
               ("size", "color")]
    for attributes in options:
        if without in attributes:
            continue
        matches = [o for o in objects if all(getattr(o, a) == getattr(target, a) for a in attributes)]
        if len(matches) == 1:
            words = [getattr(target, a) for a in attributes]
            return "the " + " ".join(words) + ("" if "shape" in attributes else " object")
    return None


def short_caption(scene: Scene) -> str:
    """"A red circle and a blue square." — the objects from left to right."""
    ordered = sorted(scene.objects, key=lambda o: o.x)
    text = _list_words([_article(o.name) for o in ordered]) + "."
    return text[0].upper() + text[1:]


def detailed_caption(scene: Scene) -> str:
    """Count, then each object (size, colour, shape, where) from left to right, then one spatial relation."""
    ordered = sorted(scene.objects, key=lambda o: o.x)
    n = len(ordered)
    parts = [f"There {'is one object' if n == 1 else f'are {NUMBER_WORDS[n]} objects'} on a gray background."]
    for o in ordered:
        phrase = _article(f"{o.size} {o.color} {o.shape}")
        parts.append(f"{phrase[0].upper() + phrase[1:]} is {_where(o, scene.image_size)}.")
    pairs = _separated_pairs(scene, "x")
    if pairs:
        a, b = pairs[0]
        parts.append(f"The {scene.objects[a].name} is left of the {scene.objects[b].name}.")
    return " ".join(parts)


def _separated_pairs(scene: Scene, axis: str) -> list[tuple[int, int]]:
    """Pairs (i, j) with object i clearly before j along ``axis`` (left of / above), by at least 15% of the side."""
    gap = 0.15 * scene.image_size
    objs = scene.objects
    return [(i, j) for i in range(len(objs)) for j in range(len(objs))
            if i != j and getattr(objs[j], axis) - getattr(objs[i], axis) >= gap
            and refer(objs, i) is not None and refer(objs, j) is not None]


def _allowed(color: str, shape: str, split: str) -> bool:
    """Outside the compositional split, no text may name a held-out colour–shape pair."""
    return split == "compositional" or (color, shape) not in HELD_OUT_PAIRS


def scene_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """Every question the annotation supports, with one-word answers; yes/no questions come in opposite twins."""
    objs, k, size, qa = scene.objects, scene.index, scene.image_size, []
    for i, o in enumerate(objs):
        ref = refer(objs, i, without="color")
        if ref is not None:  # colour: open question, then a yes/no twin (true colour, another allowed colour)
            qa.append(QA(f"What colour is {ref}?", o.color, "color", k))
            others = [c for c in COLOR_NAMES if c != o.color and _allowed(c, o.shape, scene.split)]
            wrong = others[rng.integers(len(others))]
            qa.append(QA(f"Is {ref} {o.color}?", "yes", "color_yesno", k))
            qa.append(QA(f"Is {ref} {wrong}?", "no", "color_yesno", k))
        ref = refer(objs, i, without="shape")
        if ref is not None:
            qa.append(QA(f"What shape is {ref}?", o.shape, "shape", k))
        ref = refer(objs, i)
        if ref is not None:
            h, v = horizontal(o, size), vertical(o, size)
            if h != "middle":
                qa.append(QA(f"Is {ref} on the left or on the right?", h, "position", k))
            if v != "middle":
                qa.append(QA(f"Is {ref} at the top or at the bottom?", v, "position", k))
    qa.append(QA("How many objects are there?", NUMBER_WORDS[len(objs)], "count", k))
    color = objs[rng.integers(len(objs))].color
    qa.append(QA(f"How many {color} objects are there?", NUMBER_WORDS[sum(o.color == color for o in objs)], "count", k))
    shape = objs[rng.integers(len(objs))].shape
    qa.append(QA(f"How many {_plural(shape)} are there?", NUMBER_WORDS[sum(o.shape == shape for o in objs)], "count",
                 k))
    for axis, (before, after) in (("x", ("left", "right")), ("y", ("above", "below"))):
        pairs = _separated_pairs(scene, axis)
        if not pairs:
            continue
        i, j = pairs[rng.integers(len(pairs))]
        a, b = refer(objs, i), refer(objs, j)  # a is left of (above) b
        if axis == "x":
            qa.append(QA(f"Is {a} to the left or to the right of {b}?", "left", "relation", k))
            qa.append(QA(f"Is {b} to the left or to the right of {a}?", "right", "relation", k))
        else:
            qa.append(QA(f"Is {a} above or below {b}?", "above", "relation", k))
            qa.append(QA(f"Is {b} above or below {a}?", "below", "relation", k))
        word = (before, after)[rng.integers(2)]  # both words, half the time each: the word alone tells nothing
        relation = word + (" of" if axis == "x" else "")
        qa.append(QA(f"Is {a} {relation} {b}?", "yes" if word == before else "no", "relation_yesno", k))
        qa.append(QA(f"Is {b} {relation} {a}?", "no" if word == before else "yes", "relation_yesno", k))
    present = objs[rng.integers(len(objs))]
    absent = [(c, s) for c in COLOR_NAMES for s in SHAPES
              if _allowed(c, s, scene.split) and not any((o.color, o.shape) == (c, s) for o in objs)]
    color, shape = absent[rng.integers(len(absent))]
    qa.append(QA(f"Is there {_article(present.name)}?", "yes", "exists", k))
    qa.append(QA(f"Is there {_article(color + ' ' + shape)}?", "no", "exists", k))
    return qa


_DESCRIBE_SHORT = ("Describe the image in one sentence.", "What is in this picture? Answer briefly.",
                   "Give a short caption for the image.")
_DESCRIBE_LONG = ("Describe the image in detail.", "Describe every object in the picture and where it is.",
                  "Write a detailed description of this image.")


def scene_instructions(scene: Scene, rng: np.random.Generator) -> list[Instruction]:
    """Instruction–response pairs: short and detailed description, objects left to right, colours present."""
    ordered = sorted(scene.objects, key=lambda o: o.x)
    k = scene.index
    colors = sorted({o.color for o in scene.objects}, key=COLOR_NAMES.index)
    return [
        Instruction(_DESCRIBE_SHORT[rng.integers(len(_DESCRIBE_SHORT))], short_caption(scene), "caption", k),
        Instruction(_DESCRIBE_LONG[rng.integers(len(_DESCRIBE_LONG))], detailed_caption(scene), "detail", k),
        Instruction("List the objects from left to right, separated by commas.",
                    ", ".join(o.name for o in ordered), "list", k),
        Instruction("Which colours appear in the image? Name them in rainbow order.", ", ".join(colors), "colors", k),
    ]


# --------------------------------------------------------------------------------------------------------------
# clips: frames + sound


@dataclass(frozen=True)
class ClipEvent:
    """What happens at ``frame`` (the first frame that shows it), and the sound that starts at ``time`` seconds."""

    kind: str  # "appear" | "disappear" | "move" | "recolor"
    frame: int
    time: float
    shape: str  # the object's shape: unique within a clip, so "the circle" names it
    before: str  # colour before the event ("" for appear)
    after: str  # colour after the event ("" for disappear)
    direction: str  # "left" | "right" | "up" | "down" for move, else ""
    sound: str  # EVENT_SOUNDS[kind]
    pitch: tuple[float, float]  # start and end frequency of the sound (Hz)


@dataclass
class Clip:
    frames: np.ndarray  # (T, S, S, 3) uint8
    audio: np.ndarray  # (samples,) float32 in [-1, 1] at SAMPLE_RATE
    states: list[tuple[SceneObject, ...]]  # the objects visible in each frame
    events: list[ClipEvent]  # ordered by frame
    word: str  # the colour the voice says ("" without speech)
    word_span: tuple[float, float]  # seconds
    voice: str
    background: tuple[int, int, int]
    index: int
    frame_seconds: float


_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _sample_clip_events(rng, frames: int, image_size: int, n_events: int):
    """Objects with distinct shapes and ``n_events`` events at distinct frames ≥ 2: (states per frame, events)."""
    shapes = [str(s) for s in rng.permutation(SHAPES)]
    start = int(rng.integers(2, 4))
    objects: list[SceneObject] = []
    while len(objects) < start:
        size = ("small", "large")[rng.integers(2)]
        radius = _radius(size, image_size)
        centre = _place(rng, radius, objects, image_size)
        if centre is None:
            raise RuntimeError("could not place the clip's starting objects; use a larger image_size.")
        objects.append(SceneObject(shapes.pop(), COLOR_NAMES[rng.integers(len(COLOR_NAMES))], size, *centre, radius))
    event_frames = sorted(rng.choice(np.arange(2, frames), size=n_events, replace=False).tolist())
    current = list(objects)
    touched: set[str] = set()  # one event per object, so "when the circle changed" names one event
    events, changes = [], []
    for frame in event_frames:
        for _ in range(20):
            kind = ("appear", "disappear", "move", "recolor")[rng.integers(4)]
            free = [o for o in current if o.shape not in touched]
            if kind == "appear" and shapes:
                size = ("small", "large")[rng.integers(2)]
                radius = _radius(size, image_size)
                centre = _place(rng, radius, current, image_size)
                if centre is None:
                    continue
                new = SceneObject(shapes.pop(), COLOR_NAMES[rng.integers(len(COLOR_NAMES))], size, *centre, radius)
                current = current + [new]
                event = (kind, new.shape, "", new.color, "")
            elif kind == "disappear" and free and len(current) > 1:
                gone = free[rng.integers(len(free))]
                current = [o for o in current if o is not gone]
                event = (kind, gone.shape, gone.color, "", "")
            elif kind == "move" and free:
                obj = free[rng.integers(len(free))]
                step = int(round(0.3 * image_size))
                moved = None
                for direction in rng.permutation(list(_DIRECTIONS)):
                    dx, dy = _DIRECTIONS[direction]
                    x, y = obj.x + dx * step, obj.y + dy * step
                    inside = obj.radius + 1 <= x <= image_size - obj.radius - 2 and \
                        obj.radius + 1 <= y <= image_size - obj.radius - 2
                    clear = all((x - o.x) ** 2 + (y - o.y) ** 2 >= (obj.radius + o.radius + 2) ** 2
                                for o in current if o is not obj)
                    if inside and clear:
                        moved = (SceneObject(obj.shape, obj.color, obj.size, x, y, obj.radius), str(direction))
                        break
                if moved is None:
                    continue
                current = [moved[0] if o is obj else o for o in current]
                event = (kind, obj.shape, obj.color, obj.color, moved[1])
            elif kind == "recolor" and free:
                obj = free[rng.integers(len(free))]
                new_color = [c for c in COLOR_NAMES if c != obj.color][rng.integers(len(COLOR_NAMES) - 1)]
                current = [SceneObject(o.shape, new_color, o.size, o.x, o.y, o.radius) if o is obj else o
                           for o in current]
                event = (kind, obj.shape, obj.color, new_color, "")
            else:
                continue
            touched.add(event[1])
            events.append((frame, *event))
            changes.append((frame, tuple(current)))
            break
        else:
            raise RuntimeError("could not find a valid event; this should not happen with image_size >= 48.")
    states, state = [], tuple(objects)
    for t in range(frames):
        for frame, snapshot in changes:
            if frame == t:
                state = snapshot
        states.append(state)
    return states, events


def _envelope(n: int, fade: int) -> np.ndarray:
    """1 in the middle, raised-cosine fades of ``fade`` samples at both ends (no clicks)."""
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    env[:fade], env[n - fade:] = ramp, ramp[::-1]
    return env


def event_sound(kind: str, new_color: str = "") -> tuple[np.ndarray, tuple[float, float]]:
    """The 0.3-s sound of an event and its (start, end) frequency in Hz."""
    n = int(SOUND_SECONDS * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("appear", "disappear"):
        f0, f1 = CHIRP_HZ if kind == "appear" else CHIRP_HZ[::-1]
        # linear chirp: f(t) = f0 + (f1 - f0) t / D, phase φ(t) = 2π (f0 t + (f1 - f0) t² / (2D))
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * SOUND_SECONDS))
        return 0.3 * np.sin(phase) * _envelope(n, 160), (f0, f1)
    if kind == "recolor":
        f = COLOR_PITCH[new_color]
        return 0.3 * np.sin(2 * np.pi * f * t) * _envelope(n, 160), (f, f)
    if kind == "move":  # two 0.1-s beeps with a 0.1-s gap: a rhythm, not a pitch
        beep = int(0.1 * SAMPLE_RATE)
        wave_ = np.zeros(n)
        for start in (0, 2 * beep):
            wave_[start:start + beep] = 0.3 * np.sin(2 * np.pi * BEEP_HZ * t[:beep]) * _envelope(beep, 80)
        return wave_, (BEEP_HZ, BEEP_HZ)
    raise ValueError(f"unknown event kind {kind!r}; use one of {tuple(EVENT_SOUNDS)}.")


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def resample(signal: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Band-limited resampling through the spectrum: keep the frequencies below both Nyquist limits.

    With :math:`X = \\mathrm{rfft}(x)` of :math:`n` samples and :math:`m = n \\cdot r'/r` output samples,
    :math:`y = \\frac{m}{n}\\,\\mathrm{irfft}(X_{0..m/2}, m)`: the same waveform sampled at :math:`r'` (an ideal
    low-pass filter when :math:`r' < r`, so nothing above the new Nyquist frequency aliases).
    """
    n = len(signal)
    m = int(round(n * new_rate / rate))
    spectrum = np.fft.rfft(signal)  # (n // 2 + 1,)
    keep = min(len(spectrum), m // 2 + 1)
    return np.fft.irfft(spectrum[:keep], m) * (m / n)  # (m,); irfft divides by m, the forward sum had n terms


@lru_cache(maxsize=64)
def spoken_word(word: str, voice: str = "en-us") -> np.ndarray:
    """``word`` spoken by espeak-ng (voice ``voice``, 170 words/min), silence trimmed, resampled to 16 kHz, peak 0.5."""
    if not espeak_available():
        raise FileNotFoundError(f"the espeak-ng program is not on PATH, so the clips cannot speak: {ESPEAK_HINT}.")
    result = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", "170", word], capture_output=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"espeak-ng failed for {word!r} with voice {voice!r}: {result.stderr.decode().strip()}")
    raw = result.stdout
    data = raw.index(b"data") + 8  # --stdout writes a streaming WAV header with a bogus length: read to the end
    with wave.open(io.BytesIO(raw[:data]), "rb") as header:
        rate, width = header.getframerate(), header.getsampwidth()
    if width != 2:
        raise RuntimeError(f"espeak-ng wrote {8 * width}-bit audio; expected 16-bit.")
    samples = np.frombuffer(raw[data:data + (len(raw) - data) // 2 * 2], dtype="<i2").astype(np.float64) / 32768
    loud = np.flatnonzero(np.abs(samples) > 0.02)
    samples = samples[loud[0]:loud[-1] + 1]  # trim leading/trailing silence
    samples = resample(samples, rate, SAMPLE_RATE)  # espeak-ng speaks at 22,050 Hz
    return (0.5 * samples / np.abs(samples).max()).astype(np.float32)


def _sample_clip(rng, index: int, frames: int, image_size: int, frame_seconds: float, n_events: tuple[int, int],
                 speech: bool) -> Clip:
    states, raw_events = _sample_clip_events(rng, frames, image_size, int(rng.integers(n_events[0], n_events[1] + 1)))
    background = _background(rng)
    duration = frames * frame_seconds
    audio = np.zeros(int(round(duration * SAMPLE_RATE)))
    events = []
    for frame, kind, shape, before, after, direction in raw_events:
        sound, pitch = event_sound(kind, after)
        start = int(round(frame * frame_seconds * SAMPLE_RATE))  # the sound starts when the frame is shown
        audio[start:start + len(sound)] += sound[:len(audio) - start]
        events.append(ClipEvent(kind, frame, frame * frame_seconds, shape, before, after, direction,
                                EVENT_SOUNDS[kind], pitch))
    # The voice names a colour; even clips name one visible in the last frame, odd clips one that is not,
    # so "does the voice name a colour you see at the end?" is balanced exactly.
    last = {o.color for o in states[-1]}
    pool = sorted(last) if index % 2 == 0 else [c for c in COLOR_NAMES if c not in last]
    word = pool[rng.integers(len(pool))]
    voice = VOICES[rng.integers(len(VOICES))]
    span = (0.0, 0.0)
    if speech:
        spoken = spoken_word(word, voice)
        start = int(0.05 * SAMPLE_RATE)
        room = int(round(2 * frame_seconds * SAMPLE_RATE)) - start - int(0.05 * SAMPLE_RATE)  # before frame 2
        if len(spoken) > room:
            raise ValueError(f"the spoken word {word!r} lasts {len(spoken) / SAMPLE_RATE:.2f} s but only "
                             f"{room / SAMPLE_RATE:.2f} s precede the first event; use frame_seconds >= 0.5.")
        audio[start:start + len(spoken)] += spoken
        span = (start / SAMPLE_RATE, (start + len(spoken)) / SAMPLE_RATE)
    pictures = np.stack([draw(state, background, image_size) for state in states])  # (T, S, S, 3)
    return Clip(pictures, np.clip(audio, -1, 1).astype(np.float32), states, events, word, span,
                voice if speech else "", background, index, frame_seconds)


@dataclass
class ClipSet:
    """N clips: ``frames`` (N, T, S, S, 3) uint8, ``audio`` (N, samples) float32 at 16 kHz, and annotations."""

    frames: np.ndarray
    audio: np.ndarray
    clips: list[Clip]
    split: str
    seed: int
    speech: bool = field(default=True)

    def __len__(self) -> int:
        return len(self.clips)

    def tensors(self) -> torch.Tensor:
        frames = torch.from_numpy(self.frames)  # (N, T, S, S, 3) uint8
        return frames.permute(0, 1, 4, 2, 3).float() / 255.0  # (N, T, 3, S, S) in [0, 1]

    def captions(self, kind: str = "short") -> list[str]:
        if kind not in ("short", "detailed"):
            raise ValueError(f"kind={kind!r}; use 'short' or 'detailed'.")
        return [clip_caption(c, detailed=kind == "detailed", speech=self.speech) for c in self.clips]

    def questions(self) -> list[QA]:
        return [qa for c in self.clips for qa in clip_questions(
            c, np.random.default_rng([self.seed, SPLITS[self.split], c.index, 1]), speech=self.speech)]

    def fingerprint(self) -> str:
        return _fingerprint_arrays(self.frames, self.audio,
                                   [(c.word, c.voice, [asdict(e) for e in c.events]) for c in self.clips])


def make_clips(n: int, *, split: str = "train", seed: int = 0, frames: int = 8, image_size: int = 64,
               frame_seconds: float = 0.5, events: tuple[int, int] = (2, 3), speech: bool = True) -> ClipSet:
    """Generate ``n`` clips (see the module docstring). ``speech=True`` needs espeak-ng on PATH."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r}; clips have 'train' and 'test' splits.")
    if not 1 <= events[0] <= events[1] <= frames - 2:
        raise ValueError(f"events={events} must satisfy 1 <= min <= max <= frames - 2 = {frames - 2} "
                         "(events happen at distinct frames from 2 on).")
    if frame_seconds < SOUND_SECONDS:
        raise ValueError(f"frame_seconds={frame_seconds} is shorter than an event sound ({SOUND_SECONDS} s); "
                         "use frame_seconds >= 0.5.")
    if speech and not espeak_available():
        raise FileNotFoundError(f"make_clips(speech=True) needs the espeak-ng program, which is not on PATH: "
                                f"{ESPEAK_HINT}.")
    clips = [_sample_clip(np.random.default_rng([seed, SPLITS[split], k, 0]), k, frames, image_size, frame_seconds,
                          events, speech) for k in range(n)]
    samples = int(round(frames * frame_seconds * SAMPLE_RATE))
    pictures = np.stack([c.frames for c in clips]) if clips else np.zeros((0, frames, image_size, image_size, 3),
                                                                          np.uint8)  # (N, T, S, S, 3)
    audio = np.stack([c.audio for c in clips]) if clips else np.zeros((0, samples), np.float32)  # (N, samples)
    return ClipSet(pictures, audio, clips, split, seed, speech)


def _event_phrase(e: ClipEvent) -> str:
    if e.kind == "appear":
        return f"a {e.after} {e.shape} appears"
    if e.kind == "disappear":
        return f"the {e.before} {e.shape} disappears"
    if e.kind == "move":
        return f"the {e.before} {e.shape} moves {e.direction}"
    return f"the {e.before} {e.shape} turns {e.after}"


def clip_caption(clip: Clip, detailed: bool = False, speech: bool = True) -> str:
    """Short: the events in order ("a red circle appears, then the blue square moves left."); detailed: with
    the starting objects, the times and the sounds, and the spoken word."""
    phrases = [_event_phrase(e) for e in clip.events]
    if not detailed:
        text = ", then ".join(phrases) + "."
        return text[0].upper() + text[1:]
    start = _list_words([_article(o.name) for o in sorted(clip.states[0], key=lambda o: o.x)])
    parts = [f"At first there {'is' if len(clip.states[0]) == 1 else 'are'} {start}."]
    if speech and clip.word:
        parts.append(f'A voice says "{clip.word}".')
    for e, phrase in zip(clip.events, phrases):
        parts.append(f"At {e.time:.1f} s {phrase}, with {_article(e.sound)}.")
    return " ".join(parts)


def clip_questions(clip: Clip, rng: np.random.Generator, speech: bool = True) -> list[QA]:
    """Questions about a clip, tagged with what they need: frames, order, sound, or sound+frames."""
    k, events, qa = clip.index, clip.events, []
    first, last = clip.states[0], clip.states[-1]
    qa.append(QA("How many objects are there in the first frame?", NUMBER_WORDS[len(first)], "count", k, "frames"))
    qa.append(QA("How many objects are there in the last frame?", NUMBER_WORDS[len(last)], "count", k, "frames"))
    for e in events:
        if e.kind == "appear":
            qa.append(QA("Which object appears?", e.shape, "appear", k, "order"))
        elif e.kind == "disappear":
            qa.append(QA("Which object disappears?", e.shape, "disappear", k, "order"))
        elif e.kind == "move":
            qa.append(QA(f"Which way does the {e.shape} move?", e.direction, "direction", k, "order"))
        else:
            qa.append(QA(f"What colour does the {e.shape} turn?", e.after, "recolor", k, "order"))
            qa.append(QA(f"What colour is the {e.shape} at the start?", e.before, "recolor", k, "order"))
    qa.append(QA("Which object changes first?", events[0].shape, "first", k, "order"))
    qa.append(QA("Which object changes last?", events[-1].shape, "last", k, "order"))
    i, j = sorted(rng.choice(len(events), size=2, replace=False).tolist())
    a, b = events[i], events[j]  # a happens before b
    qa.append(QA(f"Does the {a.shape} {EVENT_VERBS[a.kind]} before the {b.shape} {EVENT_VERBS[b.kind]}?", "yes",
                 "order_yesno", k, "order"))
    qa.append(QA(f"Does the {b.shape} {EVENT_VERBS[b.kind]} before the {a.shape} {EVENT_VERBS[a.kind]}?", "no",
                 "order_yesno", k, "order"))
    if speech and clip.word:
        qa.append(QA("Which colour does the voice say?", clip.word, "word", k, "sound"))
        seen = "yes" if clip.word in {o.color for o in last} else "no"
        qa.append(QA("Does the voice name the colour of an object in the last frame?", seen, "word_seen", k,
                      "sound+frames"))
    return qa
