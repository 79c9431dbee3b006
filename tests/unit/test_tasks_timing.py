"""minipeft.tasks.timing: latency in turns, through the bench's timer."""

import time

import pytest
import torch
from torch import nn

from minipeft.tasks.timing import forward_latency, latency_in_turns


def test_calls_take_turns_after_the_warmup_and_medians_order_the_work():
    order = []

    def call(name, seconds):
        def run():
            order.append(name)
            time.sleep(seconds)
        return run

    latency = latency_in_turns({"slow": call("slow", 0.02), "fast": call("fast", 0.0)}, repeats=3, warmup=2)
    assert order == ["slow", "fast"] * 5  # 2 untimed rounds, then 3 timed ones, in turns
    assert latency["slow"] >= 0.02 > latency["fast"] >= 0.0


def test_forward_latency_runs_each_model_without_gradients():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return x

    latency = forward_latency({"a": Recorder(), "b": Recorder()}, {"x": torch.ones(2)}, repeats=2, warmup=1)
    assert set(latency) == {"a", "b"} and seen == [False] * 6


@pytest.mark.parametrize("calls, repeats, warmup, match", [({}, 1, 1, "nothing to time"),
                                                          ({"a": lambda: None}, 0, 1, "repeats"),
                                                          ({"a": lambda: None}, 1, -1, "warmup")])
def test_bad_arguments(calls, repeats, warmup, match):
    with pytest.raises(ValueError, match=match):
        latency_in_turns(calls, repeats, warmup)
