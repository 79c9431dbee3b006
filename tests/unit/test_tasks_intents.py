"""minipeft.tasks.intents: the intent task's split, logits, loss, accuracy and linear probe."""

import pytest
import torch
from torch import nn

from minipeft.datasets import make_intents
from minipeft.tasks.intents import classification_loss, intent_split, logits_of, split_accuracy, train_probe


class LengthRecorder(nn.Module):
    """A stand-in classifier: logits from the summed ids, and it remembers the sequence length it was given."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.head = nn.Linear(1, num_classes)
        self.lengths = []

    def forward(self, input_ids, attention_mask):
        self.lengths.append(input_ids.shape[1])
        return self.head((input_ids * attention_mask).sum(1, keepdim=True).float())


def padded_batch():
    input_ids = torch.tensor([[5, 6, 7, 0, 0, 0], [8, 9, 0, 0, 0, 0]])
    return {"input_ids": input_ids, "attention_mask": (input_ids > 0).long(), "label": torch.tensor([2, 0])}


def test_split_is_the_three_sets_of_chapter_1():
    split = intent_split(train_per_class=3, test_per_class=2, seed=5)
    assert split.train.texts == make_intents("train", per_class=3, seed=5).texts
    assert split.test_id.texts == make_intents("train", per_class=2, seed=1005).texts  # same templates, new draws
    assert split.test_shift.texts == make_intents("test", per_class=2, seed=5).texts  # unseen templates
    assert split.num_classes == len(split.label_names) == 12
    assert split.labels["shift"].tolist() == split.test_shift.labels


def test_split_uses_no_global_random_numbers():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    intent_split(train_per_class=2, test_per_class=2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (2.5, TypeError)])
def test_split_rejects_bad_sizes(bad, error):
    with pytest.raises(error, match="per_class"):
        intent_split(train_per_class=bad)


def test_tokenize_keeps_each_set_and_its_labels():
    class WordIds:
        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            ids = torch.zeros(len(texts), max_length, dtype=torch.long)
            for row, text in enumerate(texts):
                words = text.split()[:max_length]
                ids[row, :len(words)] = torch.arange(1, len(words) + 1)
            return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    split = intent_split(train_per_class=2, test_per_class=1)
    examples = split.tokenize(WordIds(), max_length=8)
    assert {name: len(e) for name, e in examples.items()} == {"train": 24, "id": 12, "shift": 12}
    assert [int(e["label"]) for e in examples["id"]] == split.test_id.labels
    assert examples["train"][0]["input_ids"].shape == (8,)


def test_logits_of_trims_padding_and_changes_nothing_else():
    model, batch = LengthRecorder(), padded_batch()
    logits = logits_of(model, batch)
    assert model.lengths == [3]  # the longest real sentence, not the padded 6
    assert torch.equal(logits, model(batch["input_ids"], batch["attention_mask"]))  # padding ids are 0: same sums


def test_classification_loss_is_mean_negative_log_likelihood():
    model, batch = LengthRecorder(), padded_batch()
    logits = logits_of(model, batch)
    by_hand = -(logits.log_softmax(-1)[0, 2] + logits.log_softmax(-1)[1, 0]) / 2
    assert torch.allclose(classification_loss(model, batch), by_hand)


def test_split_accuracy_counts_rows_whose_argmax_is_the_label():
    class Fixed(nn.Module):  # predicts class (first id) for every sentence
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            return nn.functional.one_hot(input_ids[:, 0], 3).float()

    def example(first_id, label):
        return {"input_ids": torch.tensor([first_id, 1]), "attention_mask": torch.tensor([1, 1]),
                "label": torch.tensor(label)}

    examples = {"id": [example(0, 0), example(1, 1), example(2, 0), example(2, 2)],  # 3 of 4 right
                "shift": [example(0, 1)]}  # 0 of 1
    model = Fixed().train()
    assert split_accuracy(model, examples) == {"id": 0.75, "shift": 0.0}
    assert model.training  # the mode is restored
    with pytest.raises(KeyError, match="shift"):
        split_accuracy(model, {"id": examples["id"]})


def test_probe_fits_separable_features_and_repeats_with_its_seed():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = nn.functional.one_hot(labels, 3).float() * 4 + 0.3 * torch.randn(60, 3, generator=generator)
    head, history = train_probe(features, labels, num_classes=3, steps=300, seed=1)
    assert (head(features).argmax(-1) == labels).all()
    assert history.loss[-1] < history.loss[0]
    again, _ = train_probe(features, labels, num_classes=3, steps=300, seed=1)
    assert torch.equal(head.weight, again.weight)
    with pytest.raises(ValueError, match="one row per label"):
        train_probe(features, labels[:10], num_classes=3, steps=1)
