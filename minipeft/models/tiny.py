"""Tiny randomly initialised models built with ``transformers`` — for tests and for reading shapes quickly.

They have the real architectures (LLaMA with grouped-query attention and RoPE, BERT, ViT, CLIP) at a size that
runs forward and backward in milliseconds, so every method in the book is tested on the same classes a user
brings, without downloading anything.
"""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, vocab_size: int = 256, hidden_size: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, intermediate_size: int = 128):
    """A random ``LlamaForCausalLM`` (grouped-query attention: ``heads`` query heads share ``kv_heads``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0, vocab_size: int = 256, hidden_size: int = 64, layers: int = 2, heads: int = 4,
              intermediate_size: int = 128):
    """A random ``BertModel`` (no pooler)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate_size,
                        max_position_embeddings=128)
    return BertModel(config, add_pooling_layer=False).eval()


def tiny_vit(seed: int = 0, image_size: int = 32, patch_size: int = 8, hidden_size: int = 64, layers: int = 2,
             heads: int = 4):
    """A random ``ViTModel`` over ``image_size``² RGB images (``(image_size/patch_size)²`` patch tokens + CLS)."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                       num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * hidden_size)
    return ViTModel(config, add_pooling_layer=False).eval()


def tiny_clip(seed: int = 0, projection_dim: int = 32):
    """A random ``CLIPModel`` with tiny text and vision towers."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    text = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    vision = dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    return CLIPModel(config).eval()
