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


def test_resume_refuses_a_changed_configuration_naming_both_values(tmp_path):
    checkpoint = str(tmp_path / "run.safetensors")
    model, data = problem()
    train(model, data, loss_fn, config(steps=10, checkpoint=checkpoint, checkpoint_every=5))
    model, data = problem()
    with pytest.raises(ValueError, match="lr=0.05 in the checkpoint but 0.1 now"):
        train(model, data, loss_fn, config(steps=10, lr=0.1, checkpoint=checkpoint, resume=True))
    # What does not change the weights (progress bar, evaluation cadence) may change.
    history = train(model, data, loss_fn, config(steps=10, checkpoint=checkpoint, resume=True, eval_every=3))
    assert len(history.loss) == 10 and history.steps == list(range(1, 11))


def test_resume_checks_every_shape_before_copying_anything(tmp_path):
    checkpoint = str(tmp_path / "run.safetensors")
    model, data = problem()
    train(model, data, loss_fn, config(steps=4, checkpoint=checkpoint))
    wider = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))  # broadcastable (1,) vs (2,)
    before = {n: p.detach().clone() for n, p in wider.named_parameters()}
    with pytest.raises(ValueError, match="has shape"):
        train(wider, data, loss_fn, config(steps=4, checkpoint=checkpoint, resume=True))
    assert all(torch.equal(before[n], p) for n, p in wider.named_parameters())  # not even the first layer loaded


def test_history_records_the_rate_the_optimiser_used():
    model, data = problem()
    groups = [{"params": list(model[0].parameters()), "lr": 0.02}, {"params": list(model[3].parameters())}]
    history = train(model, data, loss_fn, config(steps=4, warmup_steps=0, schedule="constant"), groups=groups)
    assert history.lr == [0.02] * 4  # the first group's rate, not config.lr


def test_train_leaves_the_model_in_the_mode_it_was_given():
    model, data = problem()
    model.eval()
    train(model, data, loss_fn, config(steps=2))
    assert not model.training
    model.train()
    train(model, data, loss_fn, config(steps=2))
    assert model.training


def two_streams():
    """Two tasks on one model: stream a trains the first layer, stream b the last (separate groups)."""
    model, data = problem()
    first = {"params": list(model[0].parameters())}
    last = {"params": list(model[3].parameters())}
    return model, data, first, last


def test_alternating_streams_with_separate_optimisers_move_only_their_own_groups():
    from minipeft.core import Stream

    model, data, first, last = two_streams()
    snapshots = []

    def watching(model, batch):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return loss_fn(model, batch)

    streams = [Stream("a", data, watching, groups=[first]), Stream("b", data, watching, batch_size=4, groups=[last])]
    history = train(model, streams, config=config(steps=3), mix="alternate")
    assert set(history.streams) == {"a", "b"} and len(history.streams["b"].loss) == 3
    # Between the a-call and the next b-call only the first layer moved; between b and the next a only the last.
    for a_call, b_call, next_a in zip(snapshots[0::2], snapshots[1::2], snapshots[2::2]):
        moved_by_a = [not torch.equal(x, y) for x, y in zip(a_call, b_call)]
        moved_by_b = [not torch.equal(x, y) for x, y in zip(b_call, next_a)]
        assert moved_by_a == [True, True, False, False] and moved_by_b == [False, False, True, True]
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_joint_streams_sum_the_weighted_losses():
    from minipeft.core import Stream

    model, data, first, last = two_streams()
    reference, _ = problem()
    model[2], reference[2] = nn.Identity(), nn.Identity()  # no dropout: stream b's forward draws no random numbers
    streams = [Stream("a", data, loss_fn, weight=1.0), Stream("b", data, loss_fn, weight=0.0)]
    history = train(model, streams, config=config(steps=3))
    single = train(reference, data, loss_fn, config(steps=3))  # stream a alone, same seed and data order
    assert history.loss == pytest.approx(single.loss)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_staged_streams_train_one_after_the_other():
    from minipeft.core import Stream

    model, data, first, last = two_streams()
    calls = []

    def tagged(tag):
        def loss(model, batch):
            calls.append(tag)
            return loss_fn(model, batch)
        return loss

    streams = [Stream("stage1", data, tagged(1), groups=[first], steps=2),
               Stream("stage2", data, tagged(2), groups=[last], steps=3)]
    history = train(model, streams, config=config(steps=5, warmup_steps=2), mix="staged")
    assert calls == [1, 1, 2, 2, 2]
    assert history.streams["stage2"].lr[0] < history.streams["stage2"].lr[1]  # each stage warms up again
    with pytest.raises(ValueError, match="add up to 5 but config.steps is 6"):
        train(model, streams, config=config(steps=6), mix="staged")


def test_amp_auto_follows_the_hardware_helper():
    from minipeft.core import amp_dtype

    assert amp_dtype("cpu") in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="amp="):
        TrainConfig(amp="fp8")
    model, data = problem()
    train(model, data, loss_fn, config(steps=2, amp="auto"))  # runs whichever the helper picks
