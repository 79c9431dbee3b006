r"""Count the activations a forward pass keeps alive for the backward pass.

Training memory has three parts: the weights, the optimiser state (which PEFT shrinks by training few parameters)
and the **activations** — the intermediate tensors autograd saves during the forward pass because the backward pass
needs them (the input of every ``Linear`` whose weight trains, the output of every softmax, every dropout mask, …).
Freezing the weights does not remove the activations: as long as *something* below a layer trains, the gradient
must travel through that layer, and most layers need their inputs or outputs to pass a gradient back. Activations
grow with batch size × sequence length × depth, and for PEFT they are the bulk of training memory.

Autograd offers a hook for exactly this: inside ``torch.autograd.graph.saved_tensors_hooks(pack, unpack)`` every
tensor an operation saves for backward goes through ``pack``. :func:`count_saved_tensors` runs a forward pass inside
such a hook and adds up what was saved. Because it counts what autograd *keeps*, not what the allocator happens to
hold, it gives the same number on CPU and GPU (``torch.cuda.max_memory_allocated`` would also count temporaries,
the weights and the allocator's caching).

Rules of the count:

* Tensors sharing storage are counted once, at the size of the storage (a saved view keeps its whole base alive).
* Parameters are not activations: a saved ``nn.Parameter`` (or a view of one, such as the ``weight.t()`` a ``Linear``
  saves to pass a gradient to its input) is left out, and so is any tensor sharing storage with the parameters or
  buffers of the modules passed as ``exclude=``.
* Only the forward pass that ``model_fn`` runs is counted; call it with a fresh input each time.

Chapter: Part II, "MEFT: reversible fine-tuning"; the efficiency chapter and ``python -m minipeft.bench`` use it too.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class SavedActivations:
    """What a forward pass saved for backward: ``bytes`` (distinct storages) and ``count`` (how many storages)."""

    bytes: int
    count: int

    @property
    def mib(self) -> float:
        return self.bytes / 2**20

    def __str__(self) -> str:
        return f"{self.bytes:,} bytes ({self.mib:.3f} MiB) in {self.count} saved tensors"


def _storage_key(tensor: torch.Tensor) -> tuple:
    storage = tensor.untyped_storage()
    return (tensor.device.type, tensor.device.index, storage.data_ptr())


def _storage_bytes(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().nbytes()


def _is_parameter(tensor: torch.Tensor) -> bool:
    """A parameter, or a view of one (``Linear`` saves ``weight.t()``, whose ``_base`` is the weight)."""
    return isinstance(tensor, nn.Parameter) or isinstance(getattr(tensor, "_base", None), nn.Parameter)


class SavedTensorCounter:
    """Collects the tensors saved for backward while :func:`track_saved_tensors` is active."""

    def __init__(self, exclude: nn.Module | Iterable[torch.Tensor] | None = None):
        self._excluded: set[tuple] = set()
        modules = exclude if isinstance(exclude, (list, tuple)) else [exclude] if exclude is not None else []
        for item in modules:
            tensors = list(item.parameters()) + list(item.buffers()) if isinstance(item, nn.Module) else [item]
            self._excluded.update(_storage_key(t) for t in tensors)
        self._sizes: dict[tuple, int] = {}  # storage -> bytes
        self._alive: list[torch.Tensor] = []  # keeps each storage alive, so no address is reused while we count

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if not _is_parameter(tensor):
            try:
                key, size = _storage_key(tensor), _storage_bytes(tensor)
            except (RuntimeError, NotImplementedError):  # a tensor without a plain storage (e.g. a subclass)
                key, size = ("id", id(tensor)), tensor.numel() * tensor.element_size()
            if key not in self._excluded:
                self._sizes[key] = max(size, self._sizes.get(key, 0))
                self._alive.append(tensor)
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def result(self) -> SavedActivations:
        return SavedActivations(bytes=sum(self._sizes.values()), count=len(self._sizes))


@contextmanager
def track_saved_tensors(exclude: nn.Module | Iterable[torch.Tensor] | None = None) -> Iterator[SavedTensorCounter]:
    """``with track_saved_tensors(model) as counter: loss = model(x)...`` then ``counter.result``.

    The tensors stay referenced by the counter until it is dropped; measure, then let it go.
    """
    counter = SavedTensorCounter(exclude)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        yield counter
    counter._alive.clear()


def count_saved_tensors(model_fn: Callable[[], object],
                        exclude: nn.Module | Iterable[torch.Tensor] | None = None) -> SavedActivations:
    """Run ``model_fn()`` (a forward pass, e.g. ``lambda: model(x).sum()``) and count what it saved for backward.

    Args:
        model_fn: runs one forward pass with autograd recording (no backward inside).
        exclude: a module (or list of modules / tensors) whose parameters and buffers are not activations.
            ``nn.Parameter`` objects and their views are always left out.

    Returns:
        :class:`SavedActivations` — bytes of distinct saved storages and their number.

    Example::

        >>> import torch
        >>> layer = torch.nn.Linear(4, 4)
        >>> x = torch.randn(8, 4, requires_grad=True)
        >>> count_saved_tensors(lambda: torch.relu(layer(x)), exclude=layer).bytes  # x and relu's output
        256
    """
    with track_saved_tensors(exclude) as counter:
        output = model_fn()
        result = counter.result
    del output
    return result
