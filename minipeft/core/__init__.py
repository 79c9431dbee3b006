"""The mechanics every method shares (nothing method-specific lives here).

* :mod:`~minipeft.core.contract` — the method contract: ``MethodConfig``, ``Handle``, the shared validators;
* :mod:`~minipeft.core.inject` — find modules by name/type and replace them;
* :mod:`~minipeft.core.params` — freeze, unfreeze, count, optimiser groups;
* :mod:`~minipeft.core.io` — safetensors, atomic and all-or-nothing;
* :mod:`~minipeft.core.train` — the one training loop (one or several data streams, checkpoints, DDP);
* :mod:`~minipeft.core.scale` — the ``ci`` / ``full`` knob, the device and mixed-precision choice.
"""

from .contract import CannotMergeError, Handle, MethodConfig, count_on_meta, inject
from .inject import find_modules, is_wrapper, module_names, replace_module
from .io import load_trainable, load_weights, read_weights, save_trainable, save_weights, trainable_state_dict
from .params import (
    ParameterReport,
    count_parameters,
    decay_groups,
    freeze,
    optimizer_groups,
    parameter_report,
    trainable_parameters,
    unfreeze,
)
from .scale import amp_dtype, default_device, hardware_summary, pick, scale
from .train import History, Stream, TrainConfig, batch_indices, move_to, seed_everything, train

__all__ = [
    "CannotMergeError", "Handle", "History", "MethodConfig", "ParameterReport", "Stream", "TrainConfig", "amp_dtype",
    "batch_indices", "count_on_meta", "count_parameters", "decay_groups", "default_device", "find_modules", "freeze",
    "hardware_summary", "inject", "is_wrapper", "load_trainable", "load_weights", "module_names", "move_to",
    "optimizer_groups", "parameter_report", "pick", "read_weights", "replace_module", "save_trainable",
    "save_weights", "scale", "seed_everything", "train", "trainable_parameters", "trainable_state_dict", "unfreeze",
]
