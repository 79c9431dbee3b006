"""The book's data: deterministic generators and loaders for data that ships offline."""

from .instructions import InstructionPair, follows_persona, make_instructions, styled
from .intents import INTENTS, TextClassificationData, far_ood_sentences, make_intents
from .shapes import COLORS, SHAPES, ShapesData, load_shapes

__all__ = ["COLORS", "INTENTS", "SHAPES", "InstructionPair", "ShapesData", "TextClassificationData", "follows_persona", "far_ood_sentences",
           "load_shapes", "make_instructions", "make_intents", "styled"]
