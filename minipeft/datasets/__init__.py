"""The book's data: deterministic generators and loaders for data that ships offline.

``world`` is the multimodal world of Part III (scenes, clips with sound); ``features`` caches frozen encoders' features
of it, so chapters spend their minutes training rather than encoding."""

from .instructions import InstructionPair, follows_persona, make_instructions, styled
from .intents import INTENTS, TextClassificationData, far_ood_sentences, make_intents
from .shapes import COLORS, SHAPES, ShapesData, load_shapes
from .world import HELD_OUT_PAIRS, ClipSet, SceneSet, make_clips, make_scenes
from .features import FeatureCacheError, audio_features, cached_features, image_features

__all__ = ["COLORS", "ClipSet", "FeatureCacheError", "HELD_OUT_PAIRS", "SceneSet", "audio_features", "cached_features",
           "image_features", "make_clips", "make_scenes", "INTENTS", "SHAPES", "InstructionPair", "ShapesData", "TextClassificationData", "follows_persona", "far_ood_sentences",
           "load_shapes", "make_instructions", "make_intents", "styled"]
