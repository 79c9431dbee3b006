"""The book's data: deterministic generators and loaders for data that ships offline."""

from .intents import INTENTS, TextClassificationData, far_ood_sentences, make_intents
from .shapes import COLORS, SHAPES, ShapesData, load_shapes

__all__ = ["COLORS", "INTENTS", "SHAPES", "ShapesData", "TextClassificationData", "far_ood_sentences",
           "load_shapes", "make_intents"]
