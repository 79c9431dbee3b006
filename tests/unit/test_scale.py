import pytest
import torch

import minipeft
from minipeft.core.scale import default_device, pick


def test_scale_reads_environment(monkeypatch):
    monkeypatch.setenv("MINIPEFT_SCALE", "full")
    assert minipeft.scale() == "full"
    monkeypatch.setenv("MINIPEFT_SCALE", " CI ")
    assert minipeft.scale() == "ci"


def test_scale_default_depends_on_cuda(monkeypatch):
    monkeypatch.delenv("MINIPEFT_SCALE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert minipeft.scale() == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert minipeft.scale() == "ci"


def test_invalid_scale_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MINIPEFT_SCALE", "huge")
    with pytest.raises(ValueError, match=r"'huge' is not a scale.*ci, full"):
        minipeft.scale()


def test_pick_and_device(monkeypatch):
    monkeypatch.setenv("MINIPEFT_SCALE", "ci")
    assert pick(1, 2) == 1
    assert pick(1, 2, scale_name="full") == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device().type in ("cpu", "mps")
