"""minipeft.tasks.harness: apply → train → evaluate → undo on one shared encoder."""

import pytest
import torch
from torch import nn

from minipeft.core import TrainConfig
from minipeft.tasks.harness import apply_train_evaluate


class Encoder(nn.Module):
    """A frozen 'pretrained' encoder: mean of token embeddings, with dropout so train/eval mode matters."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.dropout = nn.Dropout(0.1)
        self.embed.requires_grad_(False)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask[..., None].float()
        return self.dropout((self.embed(input_ids) * mask).sum(1) / mask.sum(1))  # (B, 4)


class Classifier(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        return self.head(self.encoder(input_ids, attention_mask))


class ScaleMethod:
    """A stand-in PEFT method: a trainable scale on the embeddings; undo() puts the original forward back."""

    def __init__(self, encoder, log):
        self.encoder, self.log = encoder, log
        self.scale = nn.Parameter(torch.ones(4) + 0.01 * torch.randn(4))  # random init: seeding matters
        self.original = encoder.forward
        encoder.forward = lambda ids, mask: self.original(ids, mask) * self.scale

    def state_dict(self):
        return {"scale": self.scale.detach()}

    def undo(self):
        self.log.append("undo")
        del self.encoder.forward  # the instance attribute goes; the class's forward is back


def examples(n, seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 10, (n, 5), generator=generator)
    return [{"input_ids": i, "attention_mask": torch.ones(5, dtype=torch.long), "label": (i[0] > 5).long()}
            for i in ids]


def run(encoder, log, **options):
    def build():
        method = ScaleMethod(encoder, log)
        model = Classifier(encoder)
        model.scale = method.scale  # registered, so it trains
        return model, method

    config = TrainConfig(steps=5, batch_size=4, lr=1e-2, seed=3, device="cpu", progress=False)
    return apply_train_evaluate(build, examples(16, 0), {"id": examples(8, 1), "shift": examples(6, 2)}, config,
                                **options)


def test_a_run_trains_evaluates_and_leaves_the_encoder_untouched():
    torch.manual_seed(0)
    encoder, log = Encoder(), []
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    seen = {}
    result = run(encoder, log, inspect=lambda model, handle: seen.update(applied="forward" in vars(encoder),
                                                                         mode=model.training) or {"x": 1})
    assert log == ["undo"] and "forward" not in vars(encoder)  # undone
    assert seen == {"applied": True, "mode": True}  # inspect saw the trained method, before undo
    assert result.extras == {"x": 1}
    assert not encoder.training  # eval() after the run: no dropout in whatever comes next
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert result.trainable == 4 + 4 * 2 + 2  # the scale and the head
    assert result.handle_numel == 4 and result.handle_bytes == 16
    assert set(result.accuracy) == {"id", "shift"} and result.logits["shift"].shape == (6, 2)
    labels = torch.stack([e["label"] for e in examples(6, 2)])
    assert result.accuracy["shift"] == (result.logits["shift"].argmax(-1) == labels).float().mean().item()
    assert len(result.history.loss) == 5 and result.seconds == result.history.wall_time


def test_build_is_seeded_so_runs_repeat_whatever_ran_before():
    torch.manual_seed(0)
    encoder = Encoder()
    first = run(encoder, [])
    torch.rand(100)  # whatever happens in between
    second = run(encoder, [])
    assert torch.equal(first.logits["id"], second.logits["id"])


def test_groups_receive_model_and_handle():
    torch.manual_seed(0)
    encoder, calls = Encoder(), []

    def groups(model, handle):
        calls.append(type(handle).__name__)
        return [{"params": [handle.scale], "lr": 0.0}, {"params": list(model.head.parameters()), "lr": 1e-2}]

    scale_after = run(encoder, [], groups=groups, inspect=lambda model, handle: {"scale": handle.scale.clone()})
    assert calls == ["ScaleMethod"]
    fresh = run(encoder, [], inspect=lambda model, handle: {"scale": handle.scale.clone()})
    # lr 0 for the scale: it stays at its (seeded) initial value, which a plain run moves
    torch.manual_seed(3)
    initial = torch.ones(4) + 0.01 * torch.randn(4)
    assert torch.equal(scale_after.extras["scale"], initial)
    assert not torch.equal(fresh.extras["scale"], initial)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="TrainConfig"):
        apply_train_evaluate(lambda: None, [], {}, {"steps": 1})
    config = TrainConfig(steps=1, batch_size=1, device="cpu", progress=False)
    with pytest.raises(TypeError, match="undo"):
        apply_train_evaluate(lambda: (nn.Linear(1, 1), object()), [], {}, config)
