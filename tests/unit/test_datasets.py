import pytest
import torch

from minipeft.datasets import COLORS, INTENTS, SHAPES, far_ood_sentences, load_shapes, make_intents


def test_intents_are_deterministic_and_balanced():
    a = make_intents("train", per_class=5, seed=3)
    b = make_intents("train", per_class=5, seed=3)
    assert a.texts == b.texts and a.labels == b.labels
    assert make_intents("train", per_class=5, seed=4).texts != a.texts
    assert len(a) == 60 and torch.bincount(torch.tensor(a.labels)).tolist() == [5] * 12
    assert a.label_names == list(INTENTS)[:12]


def test_train_and_test_use_disjoint_templates():
    train = make_intents("train", per_class=300)
    test = make_intents("test", per_class=300)
    # "set an alarm for ..." is a training template of alarm_set; "get me out of bed at ..." a test one
    assert any("set an alarm" in t.lower() for t in train.texts) and not any("set an alarm" in t.lower() for t in test.texts)
    assert any("out of bed" in t for t in test.texts) and not any("out of bed" in t for t in train.texts)
    assert not set(train.texts) & set(test.texts)


def test_held_out_intents_and_errors():
    near = make_intents("test", per_class=2, intents=["weather", "call"])
    assert near.label_names == ["weather", "call"] and len(near) == 4
    with pytest.raises(ValueError, match="unknown intent 'taxi'"):
        make_intents("train", 2, intents=["taxi"])
    with pytest.raises(ValueError, match="split='dev'"):
        make_intents("dev", 2)
    assert len(far_ood_sentences()) >= 20


def test_shapes_labels_agree_with_questions():
    data = load_shapes("test", limit=60, seed=1)
    assert data.images.shape == (60, 3, 64, 64) and 0 <= data.images.min() and data.images.max() <= 1
    checked = {"shape": 0, "color": 0}
    for question, answer, position in data.questions[:300]:
        if "shape" in question and "color" not in question and answer in SHAPES:
            assert answer == SHAPES[data.shape[position]], question
            checked["shape"] += 1
        if "color" in question and answer in COLORS:
            assert answer == COLORS[data.color[position]], question
            checked["color"] += 1
    # The loop above must have checked both kinds of question (it would pass vacuously if the wording changed).
    assert checked["shape"] >= 10 and checked["color"] >= 10, checked
    again = load_shapes("test", limit=60, seed=1)
    assert torch.equal(again.shape, data.shape)
