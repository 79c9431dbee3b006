"""easy-VQA: 64×64 images of one coloured shape, with questions and answers (MIT, Victor Zhou; PyPI ``easy-vqa``).

4,000 training and 1,000 test images; 38,575 / 9,673 (question, answer, image id) triples; 13 answers
(3 shapes, 8 colours, yes/no). The book uses it for image classification (shape, colour) and for the
image–text chapters (visual question answering, captions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

SHAPES = ["circle", "rectangle", "triangle"]
COLORS = ["red", "green", "blue", "yellow", "teal", "brown", "gray", "black"]


@dataclass
class ShapesData:
    """Images (N, 3, 64, 64) in [0, 1], their shape and colour labels, and the VQA triples."""

    images: torch.Tensor
    shape: torch.Tensor  # index into SHAPES
    color: torch.Tensor  # index into COLORS
    image_ids: list[int]
    questions: list[tuple[str, str, int]]  # (question, answer, position of the image in `images`)


@lru_cache(maxsize=4)
def _read_split(split: str):
    import easy_vqa
    from PIL import Image

    if split == "train":
        questions, answers, ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        questions, answers, ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"split={split!r}; use 'train' or 'test'.")
    return questions, answers, ids, paths, Image


def _labels_from_questions(questions, answers, ids) -> dict[int, dict[str, str]]:
    """Recover each image's shape and colour from its questions ("what shape …", "what color …")."""
    labels: dict[int, dict[str, str]] = {}
    for question, answer, image_id in zip(questions, answers, ids):
        entry = labels.setdefault(image_id, {})
        if answer in SHAPES and re.search(r"\bshape\b", question) and "color" not in question:
            entry["shape"] = answer
        if answer in COLORS and "color" in question:
            entry["color"] = answer
        colored = re.match(r"what is the (\w+) shape\?", question)
        if colored and colored.group(1) in COLORS:
            entry["color"] = colored.group(1)
            entry["shape"] = answer
    return labels


def load_shapes(split: str = "train", limit: int | None = None, seed: int = 0) -> ShapesData:
    """Load easy-VQA images whose shape and colour are both known from their questions.

    Args:
        split: ``"train"`` or ``"test"``.
        limit: keep a seeded random subset of this many images (``None``: all).
    """
    questions, answers, ids, paths, Image = _read_split(split)
    labels = _labels_from_questions(questions, answers, ids)
    usable = sorted(i for i, entry in labels.items() if "shape" in entry and "color" in entry)
    if limit is not None and limit < len(usable):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(usable), generator=generator)[:limit]
        usable = sorted(usable[i] for i in keep.tolist())
    position = {image_id: k for k, image_id in enumerate(usable)}
    images = torch.stack([
        torch.from_numpy(np.asarray(Image.open(paths[i]).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        for i in usable
    ])  # (N, 3, 64, 64)
    shape = torch.tensor([SHAPES.index(labels[i]["shape"]) for i in usable])
    color = torch.tensor([COLORS.index(labels[i]["color"]) for i in usable])
    triples = [(q, a, position[i]) for q, a, i in zip(questions, answers, ids) if i in position]
    return ShapesData(images, shape, color, usable, triples)
