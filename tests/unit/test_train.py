import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from minipeft.core import TrainConfig, batch_indices, train
from minipeft.core.train import lr_multiplier


def problem(seed=0):
    """A small classification problem and a model with dropout (so RNG state matters for resuming)."""
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(50, 6, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))
    return model, TensorDataset(x, y)


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def accuracy(data):
    def evaluate(model):
        x, y = data.tensors
        return {"accuracy": (model(x).argmax(-1) == y).float().mean()}
    return evaluate


def config(**overrides):
    base = dict(steps=24, batch_size=8, lr=0.05, warmup_steps=3, device="cpu", progress=False, seed=7)
    base.update(overrides)
    return TrainConfig(**base)


def test_training_learns_and_records_history():
    model, data = problem()
    history = train(model, data, loss_fn, config(steps=60, eval_every=20), evaluate=accuracy(data))
    assert history.steps == list(range(1, 61)) and len(history.loss) == 60 == len(history.lr)
    assert [e["step"] for e in history.evals] == [20, 40, 60]
    assert history.final["accuracy"] >= 0.9
    assert sum(history.loss[-10:]) < sum(history.loss[:10])
    assert history.wall_time > 0
    assert history.metric("accuracy")[0] == [20, 40, 60]
    with pytest.raises(KeyError, match="recorded metrics: \\['accuracy'\\]"):
        history.metric("f1")


def test_same_seed_same_result():
    results = []
    for _ in range(2):
        model, data = problem()
        train(model, data, loss_fn, config())
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    reference, data = problem()
    train(reference, data, loss_fn, config())

    class Interrupt(Exception):
        pass

    def interrupt_at_step_14(model):
        raise Interrupt

    checkpoint = tmp_path / "run.safetensors"
    model, data = problem()
    with pytest.raises(Interrupt):  # the evaluation at step 14 "crashes" the run after the step-10 checkpoint
        train(model, data, loss_fn, config(checkpoint=str(checkpoint), checkpoint_every=5, eval_every=14),
              evaluate=interrupt_at_step_14)
    assert checkpoint.exists()

    fresh, data = problem()  # a new process: fresh model, same frozen parts
    history = train(fresh, data, loss_fn, config(checkpoint=str(checkpoint), checkpoint_every=5, resume=True))
    assert history.steps == list(range(1, 25))  # the loss history continues where it stopped
    for a, b in zip(reference.parameters(), fresh.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    checkpoint = tmp_path / "run.safetensors"
    model, data = problem()
    train(model, data, loss_fn, config(steps=5, checkpoint=str(checkpoint)))
    other = nn.Sequential(nn.Linear(6, 2))
    with pytest.raises(ValueError, match="does not fit this model"):
        train(other, data, loss_fn, config(steps=5, checkpoint=str(checkpoint), resume=True))


def test_only_trainable_parameters_change():
    model, data = problem()
    model[0].requires_grad_(False)
    frozen = model[0].weight.clone()
    train(model, data, loss_fn, config(steps=5))
    assert torch.equal(frozen, model[0].weight)


def test_batches_are_a_pure_function_of_seed_and_step():
    first_epoch = torch.cat([batch_indices(10, 4, seed=1, step=s) for s in range(3)])
    assert sorted(first_epoch.tolist()) == list(range(10))  # one epoch visits every example once
    assert torch.equal(batch_indices(10, 4, 1, 5), batch_indices(10, 4, 1, 5))
    assert not torch.equal(batch_indices(10, 4, 1, 0), batch_indices(10, 4, 1, 3))  # epochs reshuffle


def test_schedule_and_config_validation():
    c = config(steps=10, warmup_steps=2, schedule="linear")
    assert lr_multiplier(0, c) == 0.5 and lr_multiplier(1, c) == 1.0 and lr_multiplier(10, c) == 0.0
    assert lr_multiplier(5, config(steps=10, warmup_steps=0, schedule="cosine")) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="schedule='step'"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="need checkpoint="):
        TrainConfig(resume=True)
    with pytest.raises(ValueError, match="must be ≥ 1"):
        TrainConfig(steps=0)


def test_diverging_loss_is_reported():
    model, data = problem()
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(model, data, lambda m, b: torch.tensor(float("nan"), requires_grad=True), config(steps=2))


def test_parameter_groups_with_their_own_learning_rates():
    model, data = problem()
    fast, slow = model[0], model[3]
    before = [p.detach().clone() for p in (fast.weight, slow.weight)]
    groups = [{"params": list(fast.parameters()), "lr": 0.05}, {"params": list(slow.parameters())}]
    train(model, data, loss_fn, config(steps=1, warmup_steps=0, lr=0.0, schedule="constant"), groups=groups)
    assert not torch.equal(before[0], fast.weight)  # its own lr of 0.05 moved it
    assert torch.equal(before[1], slow.weight)  # config.lr = 0 left it alone
