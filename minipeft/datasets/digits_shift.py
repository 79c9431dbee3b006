"""Digits under a real domain shift: printed digits rendered from fonts versus real handwriting.

Introduced in chapter 20 (transfer-learning baselines). Every digit here is an 8×8 image of counts 0–16, the
format of scikit-learn's bundled ``load_digits`` (1,797 real handwritten digits from 43 writers, UCI "Optical
Recognition of Handwritten Digits"): each 32×32 binary bitmap was cut into 4×4 blocks and each block's number of
"on" pixels became one feature. We render printed digits from the fonts that ship with matplotlib (DejaVu, STIX,
Computer Modern; their licences are in matplotlib's ``mpl-data/fonts/ttf``) and push them through *the same*
32×32 → 8×8 block counting, so the two domains share the input space and differ only in how the digits look —
the SynDigits → MNIST setting of the domain-adaptation literature, small enough for one CPU core.

Domains (the names :func:`load_domain` accepts):

* ``"hand"``  — the real handwritten digits (no one here generated them);
* ``"fonts"`` — printed digits from every bundled font;
* ``"sans"`` / ``"serif"`` — printed digits from the sans-serif / serif fonts only (a style shift inside print).

Rendering is deterministic given the seed: font, size jitter, rotation, stroke width and placement are drawn
from ``numpy.random.default_rng(seed)``. Nothing is cached on disk; rendering takes a few seconds per thousand
digits on one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DOMAINS = ("hand", "fonts", "sans", "serif")

# Which bundled font files make up each printed domain (matplotlib's mpl-data/fonts/ttf).
SANS_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "cmss10.ttf",
)
SERIF_FONTS = (
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmb10.ttf", "cmti10.ttf",
)


@dataclass
class DigitsDomain:
    """One domain's digits: ``X`` (N, 64) block counts in [0, 16] (float64), ``y`` (N,) labels 0–9."""

    name: str
    X: np.ndarray
    y: np.ndarray

    @property
    def images(self) -> np.ndarray:
        """The digits as (N, 8, 8) images, for plotting."""
        return self.X.reshape(-1, 8, 8)  # (N, 64) -> (N, 8, 8)

    def __len__(self) -> int:
        return len(self.y)


def font_directory() -> Path:
    """Where matplotlib keeps its bundled TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=64)
def _font(file_name: str, size: int):
    from PIL import ImageFont

    path = font_directory() / file_name
    if not path.exists():
        raise FileNotFoundError(f"bundled font {path} is missing; reinstall matplotlib (it ships the DejaVu, STIX "
                                "and Computer Modern fonts this data set renders).")
    return ImageFont.truetype(str(path), size)


def block_counts(bitmap: np.ndarray) -> np.ndarray:
    """UCI's preprocessing: a 32×32 binary bitmap → 64 counts of "on" pixels in non-overlapping 4×4 blocks."""
    if bitmap.shape != (32, 32):
        raise ValueError(f"bitmap has shape {bitmap.shape}; block counting needs a 32×32 bitmap.")
    blocks = bitmap.reshape(8, 4, 8, 4)  # (32, 32) -> (8 block rows, 4, 8 block cols, 4)
    return blocks.sum(axis=(1, 3)).reshape(64).astype(np.float64)  # (8, 8) counts in 0..16 -> (64,)


def render_digit(digit: int, font_file: str, rng: np.random.Generator) -> np.ndarray:
    """Render one printed digit with random size, rotation and stroke, as 64 block counts."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (96, 96), 0)
    draw = ImageDraw.Draw(canvas)
    font = _font(font_file, int(rng.integers(44, 60)))
    stroke = int(rng.integers(0, 4))  # thicker strokes, like pens of different widths
    draw.text((48, 48), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    box = canvas.getbbox()  # the glyph's bounding box (left, upper, right, lower)
    glyph = canvas.crop(box)
    # UCI normalised each digit to the 32×32 box: fill the height, keep the aspect ratio, centre horizontally.
    height = int(rng.integers(28, 33))
    width = max(4, min(32, round(glyph.width * height / glyph.height * rng.uniform(0.85, 1.15))))
    glyph = glyph.resize((width, height), Image.BILINEAR)
    bitmap = Image.new("L", (32, 32), 0)
    bitmap.paste(glyph, ((32 - width) // 2 + int(rng.integers(-1, 2)), (32 - height) // 2))
    return block_counts(np.asarray(bitmap) > 127)  # binarise as the UCI scanner did


def render_digits(n_per_class: int, fonts: tuple[str, ...] = SANS_FONTS + SERIF_FONTS, seed: int = 0,
                  name: str = "fonts") -> DigitsDomain:
    """``n_per_class`` printed examples of each digit 0–9, fonts drawn uniformly from ``fonts``."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class={n_per_class}; render at least one digit per class.")
    if not fonts:
        raise ValueError("fonts is empty; pass font file names from minipeft.datasets.digits_shift.font_directory().")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)  # (10 * n_per_class,)
    rng.shuffle(labels)
    X = np.stack([render_digit(int(d), fonts[int(rng.integers(len(fonts)))], rng) for d in labels])  # (N, 64)
    return DigitsDomain(name, X, labels)


@lru_cache(maxsize=1)
def _handwritten() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def load_domain(name: str, n_per_class: int | None = None, seed: int = 0) -> DigitsDomain:
    """One domain's digits (see the module docstring for the names).

    ``n_per_class`` examples per digit (``None`` for the handwritten domain: all 1,797; printed domains need a
    number). For ``"hand"`` the subset is drawn with ``seed``; for printed domains ``seed`` drives rendering.
    """
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; choose one of {DOMAINS}.")
    if name == "hand":
        X, y = _handwritten()
        if n_per_class is None:
            return DigitsDomain(name, X.copy(), y.copy())
        rng = np.random.default_rng(seed)
        available = np.bincount(y).min()
        if n_per_class > available:
            raise ValueError(f"n_per_class={n_per_class} but the rarest handwritten digit has {available} examples.")
        keep = np.concatenate([rng.choice(np.flatnonzero(y == c), n_per_class, replace=False) for c in range(10)])
        rng.shuffle(keep)
        return DigitsDomain(name, X[keep], y[keep])
    if n_per_class is None:
        raise ValueError(f"domain {name!r} is rendered on demand; pass n_per_class (e.g. 60).")
    fonts = {"fonts": SANS_FONTS + SERIF_FONTS, "sans": SANS_FONTS, "serif": SERIF_FONTS}[name]
    return render_digits(n_per_class, fonts, seed=seed, name=name)


@dataclass
class ShiftTask:
    """A domain-adaptation task: labelled source, unlabelled target (for adaptation) and a held-out target test.

    ``target_train.y`` is kept for analysis only; an unsupervised method must never read it.
    """

    name: str
    source: DigitsDomain
    target_train: DigitsDomain
    target_test: DigitsDomain


def make_shift_task(source: str, target: str, n_per_class: int = 60, seed: int = 0) -> ShiftTask:
    """Source ``n_per_class`` labelled digits per class; target split into adaptation and test halves.

    The handwritten target uses all 1,797 digits, split in two halves at random with ``seed``; a printed target
    renders ``n_per_class`` digits per class for each half (two disjoint seeds).
    """
    if source == target:
        raise ValueError(f"source and target are both {source!r}; a shift task needs two different domains.")
    # Each domain gets its own stream of random numbers, so changing one never changes the other.
    source_data = load_domain(source, n_per_class, seed=10_000 + seed)
    if target == "hand":
        full = load_domain("hand")
        order = np.random.default_rng(20_000 + seed).permutation(len(full))
        half = len(order) // 2
        target_train = DigitsDomain("hand", full.X[order[:half]], full.y[order[:half]])
        target_test = DigitsDomain("hand", full.X[order[half:]], full.y[order[half:]])
    else:
        target_train = load_domain(target, n_per_class, seed=30_000 + seed)
        target_test = load_domain(target, n_per_class, seed=40_000 + seed)
    return ShiftTask(f"{source}→{target}", source_data, target_train, target_test)
