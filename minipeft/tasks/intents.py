"""The intent classifier: the task chapters 1 to 8 measure every method on.

A request to a voice assistant, $x$, gets one of $K = 12$ intents. A :class:`~minipeft.models.SentenceClassifier`
mean-pools a MiniLM encoder's last layer into $z = f_\\theta(x) \\in \\mathbb{R}^d$ and applies a linear head,
$\\text{logits} = W z + b \\in \\mathbb{R}^K$; training minimises the cross-entropy

$$
\\mathcal{L} = -\\frac{1}{B}\\sum_{i=1}^{B} \\log \\operatorname{softmax}\\big(W f_\\theta(x_i) + b\\big)_{y_i} .
$$

Three sets, always drawn the same way (chapter 1 introduces them):

* **train** — ``per_class`` sentences per intent from the *training* templates, ``seed``;
* **ID test** — the *training* templates again, with new draws (``seed + 1000``): in distribution;
* **shifted test** — the held-out *test* templates (``seed``): phrasings never seen in training.

``make_intents`` draws from its own ``random.Random``, so building the split consumes no global random numbers and
leaves every later ``torch.manual_seed`` in a chapter meaning what it meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..core.train import History, TrainConfig, train
from ..datasets import TextClassificationData, make_intents
from ..evaluation import accuracy, predict
from ..models import tokenize_examples, trim_padding

__all__ = ["IntentSplit", "classification_loss", "intent_split", "logits_of", "split_accuracy", "train_probe"]

ID_SEED_OFFSET = 1000  # the ID test set's seed is `seed + 1000`: same templates, sentences drawn anew


@dataclass
class IntentSplit:
    """The three sets of the intent task (introduced in chapter 01, frozen backbones)."""

    train: TextClassificationData  # `per_class` sentences per intent, training templates
    test_id: TextClassificationData  # training templates, new draws: in distribution
    test_shift: TextClassificationData  # held-out templates: the distribution shift

    @property
    def label_names(self) -> list[str]:
        return self.train.label_names

    @property
    def num_classes(self) -> int:
        return len(self.train.label_names)

    @property
    def labels(self) -> dict[str, torch.Tensor]:
        """``{"train", "id", "shift"}`` → the (N,) label tensor of that set."""
        return {name: torch.tensor(data.labels) for name, data in self._sets().items()}

    def tokenize(self, tokenizer, max_length: int = 32) -> dict[str, list[dict]]:
        """``{"train", "id", "shift"}`` → one dict per sentence (``input_ids``, ``attention_mask`` padded to
        ``max_length``, ``label``), ready for :func:`minipeft.core.train` and :func:`split_accuracy`."""
        return {name: tokenize_examples(tokenizer, data.texts, data.labels, max_length=max_length)
                for name, data in self._sets().items()}

    def _sets(self) -> dict[str, TextClassificationData]:
        return {"train": self.train, "id": self.test_id, "shift": self.test_shift}


def intent_split(train_per_class: int = 16, test_per_class: int = 30, seed: int = 0) -> IntentSplit:
    """Draw the train / ID-test / shifted-test sets of the intent task.

    Introduced in chapter 01 (frozen backbones); chapters 2 to 7 use the same split with the same seeds, so their
    numbers are comparable with chapter 1's baselines.
    """
    if not isinstance(train_per_class, int) or not isinstance(test_per_class, int):
        raise TypeError(f"train_per_class and test_per_class must be ints (sentences per intent), got "
                        f"{train_per_class!r} and {test_per_class!r}.")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(f"train_per_class and test_per_class must be at least 1 sentence per intent, got "
                         f"{train_per_class} and {test_per_class}.")
    return IntentSplit(
        train=make_intents("train", per_class=train_per_class, seed=seed),
        test_id=make_intents("train", per_class=test_per_class, seed=seed + ID_SEED_OFFSET),  # same templates
        test_shift=make_intents("test", per_class=test_per_class, seed=seed),  # unseen templates
    )


def logits_of(model: nn.Module, batch: dict) -> torch.Tensor:
    """The classifier's (B, K) logits for a batch of tokenised sentences.

    Introduced in chapter 01 (frozen backbones). The batch is cut to its longest real sentence first: the examples
    are padded to a fixed length so that they stack, and attention over padding positions is wasted work.
    """
    batch = trim_padding(batch)  # (B, T_max) -> (B, T) with T the longest sentence in this batch
    return model(batch["input_ids"], batch["attention_mask"])  # (B, K)


def classification_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of the batch's labels under the classifier, the loss every intent run trains on.

    Introduced in chapter 01 (frozen backbones); the signature ``(model, batch) -> loss`` is what
    :func:`minipeft.core.train` calls.
    """
    return nn.functional.cross_entropy(logits_of(model, batch), batch["label"])  # -mean_i log softmax(logits_i)[y_i]


def split_accuracy(model: nn.Module, examples: dict[str, Sequence[dict]],
                   splits: Sequence[str] = ("id", "shift")) -> dict[str, float]:
    """Accuracy of ``model`` on each named set of tokenised examples (e.g. the output of
    :meth:`IntentSplit.tokenize`): ``{"id": ..., "shift": ...}``.

    Introduced in chapter 01 (frozen backbones). The labels are read from the examples themselves, so a set and its
    labels cannot get out of step. :func:`~minipeft.evaluation.predict` runs in eval mode (no dropout) and restores
    the model's mode afterwards.
    """
    missing = [split for split in splits if split not in examples]
    if missing:
        raise KeyError(f"no examples for the sets {missing}; the examples hold {sorted(examples)}.")
    result = {}
    for split in splits:
        labels = torch.stack([example["label"] for example in examples[split]])  # (N,)
        result[split] = accuracy(predict(model, examples[split], logits_of), labels)
    return result


def train_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int,
                seed: int = 0) -> tuple[nn.Linear, History]:
    """Fit a linear head ``W z + b`` on cached (N, d) features of a frozen encoder: equation (1.1), the linear probe.

    Introduced in chapter 01 (frozen backbones); chapter 2 recomputes it as its baseline. Because the encoder is
    frozen its features never change, so the probe trains on cached vectors — hundreds of steps in a second.
    The head is initialised after ``torch.manual_seed(seed)``, so the same seed gives the same probe.
    """
    if features.ndim != 2 or features.shape[0] != len(labels):
        raise ValueError(f"features must be (N, d) with one row per label; got features of shape "
                         f"{tuple(features.shape)} and {len(labels)} labels.")
    torch.manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes)  # W: (K, d), b: (K,)
    examples = list(zip(features, labels))
    config = TrainConfig(steps=steps, batch_size=32, lr=1e-2, weight_decay=1e-4, seed=seed, device="cpu",
                         progress=False)
    history = train(head, examples, lambda model, batch: nn.functional.cross_entropy(model(batch[0]), batch[1]),
                    config)
    return head, history
