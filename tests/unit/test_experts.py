"""Expert models (minipeft/multimodal/experts.py): the pixel reader, the probe captioner and the prompt format."""

import math

import pytest
import torch

from minipeft.datasets import COLORS, SHAPES, load_shapes
from minipeft.multimodal import PixelReader, ProbeCaptioner, with_context

PALETTE = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.6, 0.15), "blue": (0.1, 0.2, 0.85), "black": (0.05, 0.05, 0.05)}
SIZE = 64


def draw(shape: str, rgb, generator: torch.Generator) -> torch.Tensor:
    """One (3, 64, 64) image: a filled shape of colour ``rgb`` on a random light background with small noise."""
    y, x = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                          indexing="ij")
    cy, cx = (20 + 24 * torch.rand(2, generator=generator)).tolist()  # keep the shape away from the corners
    half = 12 + 4 * torch.rand(1, generator=generator).item()
    if shape == "rectangle":  # axis-aligned, a different height and width
        mask = ((y - cy).abs() <= half) & ((x - cx).abs() <= 0.7 * half)
    elif shape == "circle":
        mask = (y - cy) ** 2 + (x - cx) ** 2 <= half ** 2
    elif shape == "triangle":  # apex at the top, base at the bottom: half of its bounding box
        top, bottom = cy - half, cy + half
        mask = (y >= top) & (y <= bottom) & ((x - cx).abs() <= half * (y - top) / (bottom - top))
    else:
        raise ValueError(shape)
    background = 0.85 + 0.15 * torch.rand(3, 1, 1, generator=generator)
    image = torch.where(mask, torch.tensor(rgb).view(3, 1, 1), background)
    return (image + 0.01 * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def synthetic(shapes=("rectangle", "circle", "triangle"), seed=0, repeats=2):
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for _ in range(repeats):
        for colour, rgb in PALETTE.items():
            for shape in shapes:
                images.append(draw(shape, rgb, generator))
                labels.append((colour, shape))
    return torch.stack(images), labels


def test_pixel_reader_reads_drawn_shapes_exactly():
    images, labels = synthetic(repeats=3)
    reader = PixelReader(PALETTE)
    readings = reader.read(images)
    assert [(r["colour"], r["shape"]) for r in readings] == labels
    assert reader.describe(images) == [f"a {colour} {shape}" for colour, shape in labels]
    fills = {shape: [r["fill"] for r, (_, s) in zip(readings, labels) if s == shape] for shape in SHAPES}
    assert all(abs(f - math.pi / 4) < 0.05 for f in fills["circle"])
    assert all(abs(f - 0.5) < 0.06 for f in fills["triangle"])
    assert all(f > 0.95 for f in fills["rectangle"])


def test_pixel_reader_cuts_and_threshold_are_used():
    images, labels = synthetic(shapes=("circle",), repeats=1)
    # Cuts below every circle's fill turn each circle into a "rectangle": the cut points decide the shape.
    assert {r["shape"] for r in PixelReader(PALETTE, cuts=(0.3, 0.5)).read(images)} == {"rectangle"}
    # A threshold above any colour difference sees no shape at all.
    assert PixelReader(PALETTE, threshold=3.1).describe(images) == ["an empty image"] * len(labels)


def test_calibrate_recovers_the_palette():
    images, labels = synthetic(seed=1)
    names = list(PALETTE)
    reader = PixelReader.calibrate(images, torch.tensor([names.index(c) for c, _ in labels]), names)
    assert list(reader.palette) == names
    for name, rgb in PALETTE.items():  # noise and edge pixels move the means only a little
        assert torch.allclose(torch.tensor(reader.palette[name]), torch.tensor(rgb), atol=0.03)
    test_images, test_labels = synthetic(seed=2)
    assert [(r["colour"], r["shape"]) for r in reader.read(test_images)] == test_labels


def test_pixel_reader_on_easy_vqa():
    train, test = load_shapes("train", limit=300, seed=0), load_shapes("test", limit=150, seed=0)
    reader = PixelReader.calibrate(train.images, train.color, COLORS)
    readings = reader.read(test.images)
    colour_acc = sum(r["colour"] == COLORS[c] for r, c in zip(readings, test.color.tolist())) / len(readings)
    shape_acc = sum(r["shape"] == SHAPES[s] for r, s in zip(readings, test.shape.tolist())) / len(readings)
    print(f"easy-VQA test ({len(readings)} images): colour {colour_acc:.3f}, shape {shape_acc:.3f}")
    assert colour_acc >= 0.95 and shape_acc >= 0.9


def test_pixel_reader_blank_and_bad_inputs():
    images, labels = synthetic(shapes=("circle",), repeats=1)
    blank = torch.full((1, 3, SIZE, SIZE), 0.9)
    readings = PixelReader(PALETTE).read(torch.cat([blank, images[:1]]))
    assert readings[0] == {"colour": None, "shape": None, "fill": 0.0}
    assert (readings[1]["colour"], readings[1]["shape"]) == labels[0]
    assert PixelReader(PALETTE).describe(blank) == ["an empty image"]
    for bad in (torch.rand(3, SIZE, SIZE), torch.rand(2, 1, SIZE, SIZE), torch.rand(2, 3, 2, 2)):
        with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
            PixelReader(PALETTE).read(bad)
    names = list(PALETTE)  # the images hold red, green, blue, black: a fifth colour has none
    with pytest.raises(ValueError, match="'orange'"):
        PixelReader.calibrate(images, torch.tensor([names.index(c) for c, _ in labels]), names + ["orange"])


def test_probe_captioner_fits_separable_features():
    generator = torch.Generator().manual_seed(0)
    colour_table, shape_table = 3 * torch.randn(4, 32, generator=generator), 3 * torch.randn(3, 32, generator=generator)

    def sample(n):
        colour, shape = torch.randint(4, (n,), generator=generator), torch.randint(3, (n,), generator=generator)
        features = colour_table[colour] + shape_table[shape] + 0.3 * torch.randn(n, 32, generator=generator)
        return features + 5.0, colour, shape  # an offset, so the standardisation has something to remove

    names = {"colour": list(PALETTE), "shape": list(SHAPES)}
    features, colour, shape = sample(120)
    captioner = ProbeCaptioner.fit(features, {"colour": colour, "shape": shape}, names)
    test_features, test_colour, test_shape = sample(60)
    predictions = captioner.predict(test_features)
    assert torch.equal(predictions["colour"], test_colour) and torch.equal(predictions["shape"], test_shape)
    assert captioner.describe(test_features) == [f"a {names['colour'][c]} {names['shape'][s]}"
                                                 for c, s in zip(test_colour.tolist(), test_shape.tolist())]
    pairs = zip(test_colour[:2].tolist(), test_shape[:2].tolist())
    assert captioner.describe(test_features[:2], template="{shape} ({colour})") == [
        f"{names['shape'][s]} ({names['colour'][c]})" for c, s in pairs]
    # Deterministic: a second fit gives the same probes. Untrained (zero) probes predict class 0 everywhere.
    again = ProbeCaptioner.fit(features, {"colour": colour, "shape": shape}, names)
    assert all(torch.equal(captioner.weights[a], again.weights[a]) for a in names)
    untrained = ProbeCaptioner.fit(features, {"colour": colour, "shape": shape}, names, steps=0)
    assert not torch.equal(untrained.predict(test_features)["colour"], test_colour)


def test_probe_captioner_errors():
    features, labels = torch.randn(10, 8), {"colour": torch.zeros(10, dtype=torch.long)}
    with pytest.raises(ValueError, match="10 feature rows but 9 labels"):
        ProbeCaptioner.fit(features, {"colour": torch.zeros(9, dtype=torch.long)}, {"colour": ["red"]})
    with pytest.raises(ValueError, match="same attributes"):
        ProbeCaptioner.fit(features, labels, {"shape": ["circle"]})
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        ProbeCaptioner.fit(torch.randn(10), labels, {"colour": ["red"]})
    captioner = ProbeCaptioner.fit(features, labels, {"colour": ["red", "blue"]}, steps=5)
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['shape'\].*\['colour'\]"):
        captioner.describe(features)  # the default template also needs "shape"
    with pytest.raises(ValueError, match="8-wide"):
        captioner.predict(torch.randn(3, 5))


def test_with_context():
    prompt = "Question: what shape is in the image?\nAnswer:"
    assert with_context(prompt, None) == prompt
    assert with_context(prompt, "a red circle") == "The image shows a red circle.\n" + prompt
    images, labels = synthetic(shapes=("triangle",), repeats=1)
    context = PixelReader(PALETTE).describe(images[:1])[0]
    assert with_context(prompt, context).splitlines()[0] == f"The image shows a {labels[0][0]} triangle."
