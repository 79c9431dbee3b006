import os

import pytest
import torch
from torch import nn

from minipeft.core import freeze, load_trainable, read_weights, save_trainable, save_weights, unfreeze
from minipeft.core.io import atomic_write


def model(width=4):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    freeze(m)
    unfreeze(m, r"^2\.")
    return m


def test_round_trip_restores_trainable_weights(tmp_path):
    source = model()
    with torch.no_grad():
        source[2].weight.add_(1.0)
    path = save_trainable(source, tmp_path / "head.safetensors", metadata={"method": "probe", "rank": 3})
    target = model()
    metadata = load_trainable(target, path)
    assert metadata == {"method": "probe", "rank": 3}
    torch.testing.assert_close(target[2].weight, source[2].weight, rtol=0, atol=0)
    tensors, _ = read_weights(path)
    assert sorted(tensors) == ["2.bias", "2.weight"]  # only the trainable tensors were stored


def test_file_is_safetensors_not_pickle(tmp_path):
    path = save_trainable(model(), tmp_path / "w.safetensors")
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert path.read_bytes()[8:9] == b"{" and header_length > 0  # a JSON header, no pickle opcodes


def test_shape_mismatch_names_the_key_and_changes_nothing(tmp_path):
    path = save_trainable(model(width=4), tmp_path / "w.safetensors")
    target = model(width=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"'2.weight' has shape \(2, 4\) in the file but \(2, 5\) in the model"):
        load_trainable(target, path)
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key])


def test_unknown_and_missing_keys(tmp_path):
    path = save_weights({"9.weight": torch.zeros(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="has '9.weight' but the model has no such parameter"):
        load_trainable(model(), path)
    partial = save_weights({"2.bias": torch.zeros(2)}, tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match="'2.weight' is not in the file"):
        load_trainable(model(), partial)
    target = model()
    load_trainable(target, partial, strict=False)
    assert torch.equal(target[2].bias, torch.zeros(2))


def test_empty_state_is_refused(tmp_path):
    frozen = freeze(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="nothing to save"):
        save_trainable(frozen, tmp_path / "w.safetensors")


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"good")

    def crash(temporary):
        with open(temporary, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["w.safetensors"]  # the temporary file was cleaned up


def test_corrupt_files_are_named_in_the_error(tmp_path):
    from safetensors.torch import save_file

    from minipeft.core import read_weights

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="garbage.safetensors is not a readable safetensors file"):
        read_weights(garbage)
    bad_json = tmp_path / "bad_json.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad_json), metadata={"minipeft": "{not json"})
    with pytest.raises(ValueError, match="bad_json.safetensors has corrupt minipeft metadata"):
        read_weights(bad_json)


def test_load_weights_refuses_non_tensors_and_integer_tensors_before_copying(tmp_path):
    from minipeft.core import load_weights

    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    with pytest.raises(ValueError, match="is a list, not a tensor"):
        load_weights(model, {"weight": torch.ones(2, 3), "bias": [0.0, 0.0]}, strict=False)
    with pytest.raises(ValueError, match="dtype torch.int64"):
        load_weights(model, {"weight": torch.ones(2, 3), "bias": torch.zeros(2, dtype=torch.long)}, strict=False)
    assert torch.equal(model.weight, before)
