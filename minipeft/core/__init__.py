"""The mechanics every method shares (DESIGN.md §2): nothing method-specific lives here."""

from .display import Stopwatch, show_source
from .inject import Injection, find_modules, inject, is_wrapper, module_names, replace_module
from .io import load_trainable, load_weights, read_weights, save_trainable, save_weights, trainable_state_dict
from .params import (
    ParameterReport,
    count_parameters,
    freeze,
    parameter_groups,
    parameter_report,
    trainable_parameters,
    unfreeze,
)
from .scale import default_device, hardware_summary, pick, scale
from .train import History, TrainConfig, batch_indices, move_to, seed_everything, train

__all__ = [
    "History", "Injection", "Stopwatch", "ParameterReport", "TrainConfig", "batch_indices", "count_parameters",
    "default_device", "find_modules", "freeze", "hardware_summary", "inject", "is_wrapper", "load_trainable",
    "load_weights", "module_names", "move_to", "parameter_groups", "parameter_report", "pick", "read_weights", "replace_module", "save_trainable", "save_weights", "scale", "seed_everything", "show_source", "train",
    "trainable_parameters", "trainable_state_dict", "unfreeze",
]
