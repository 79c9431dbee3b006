import pytest
import torch
from torch import nn

from minipeft.core import count_parameters, freeze, optimizer_groups, parameter_report, unfreeze
from minipeft.core.params import decay_groups
from minipeft.models import tiny_llama


def test_freeze_then_unfreeze_by_pattern():
    model = tiny_llama()
    freeze(model)
    assert count_parameters(model, trainable_only=True) == 0
    names = unfreeze(model, r"norm")
    assert names and all("norm" in n for n in names)
    expected = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert count_parameters(model, trainable_only=True) == expected


def test_unfreeze_unknown_pattern_is_an_error():
    with pytest.raises(ValueError, match="no parameter name matches 'nrom'"):
        unfreeze(tiny_llama(), "nrom")


def test_report_counts_and_table():
    model = tiny_llama()
    freeze(model)
    unfreeze(model, "lm_head")
    report = parameter_report(model)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert report.trainable == model.lm_head.weight.numel()
    assert report.percent == pytest.approx(100 * report.trainable / report.total)
    assert report.by_module["lm_head"] == (report.trainable, report.trainable)
    text = str(report)
    assert "TOTAL" in text and f"{report.trainable:,}" in text
    deeper = parameter_report(model, depth=3)
    assert "model.layers.0" in deeper.by_module


def test_tied_parameters_counted_once():
    embedding = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight
    model = nn.Sequential(embedding, head)
    assert parameter_report(model).total == 40 == count_parameters(model)


def test_optimizer_groups_decay_only_matrices():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    groups = optimizer_groups(model, weight_decay=0.1)
    decay = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and decay == {id(model[0].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 3
    freeze(model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        optimizer_groups(model)


def test_decay_groups_split_named_parameters_and_carry_options():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    groups = decay_groups(model.named_parameters(), 0.1, lr=0.5)
    assert [{id(p) for p in g["params"]} for g in groups] == [
        {id(model[0].weight)}, {id(model[0].bias), id(model[1].weight), id(model[1].bias)}]
    assert [(g["weight_decay"], g["lr"]) for g in groups] == [(0.1, 0.5), (0.0, 0.5)]
    # a matrix whose name says "norm" is not decayed either; nothing in, nothing out
    named = [("encoder.norm.weight", nn.Parameter(torch.ones(2, 2)))]
    assert [g["weight_decay"] for g in decay_groups(named, 0.1)] == [0.0]
    assert decay_groups([], 0.1) == []
