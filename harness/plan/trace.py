"""The live tensor memory of a training step, traced op by op: what the step allocates and frees, at its peak.

Written here because the library that does this (`torch.distributed._tools.mem_tracker.MemTracker`) hooks a
gradient onto every parameter it meets and so refuses a model whose base weights are frozen (torch 2.13), which
is every adapter's model. This tracker counts storages, as the CUDA caching allocator's `max_memory_allocated`
does (rounded up to its 512-byte blocks): every storage an op creates is live until its last tensor is gone
(a weak reference to the storage says when). Storages that exist before the step (the weights, the optimizer's
moments) are the static part and are counted by the caller; gradients are told apart by the parameters' hooks.
Run under `FakeTensorMode` it measures a step at any shape without memory; on real tensors it is a measurement.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CUDA_BLOCK = 512  # the caching allocator's smallest block (c10/cuda/CUDACachingAllocator.cpp kMinBlockSize)


def _rounded(nbytes: int) -> int:
    return -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK


@dataclass
class Peak:
    """The step's dynamic memory at its highest: gradients and everything else (activations saved for the
    backward pass, the logits, temporaries), and in which phase it came."""

    total: int = 0
    gradients: int = 0
    phase: str = ""

    @property
    def activations(self) -> int:
        return self.total - self.gradients


@dataclass
class StepTrace(TorchDispatchMode):
    """A dispatch mode: `with StepTrace(static) as trace:` ... `trace.peak`. `static`: tensors that exist before the
    step (their storages are never counted as new)."""

    static: list = field(default_factory=list)

    def __post_init__(self):
        super().__init__()
        self._known = {self._key(s) for t in self.static for s in self._storages(t)}
        self._live: dict[int, tuple[int, object]] = {}  # storage key -> (bytes, weak reference)
        self._grads: set[int] = set()
        self.current = self.gradient_bytes = 0
        self.phase = "forward"
        self.peak = Peak()
        self.peaks: dict[str, Peak] = {}  # the highest of each phase (forward, backward, optimizer)

    @staticmethod
    def _storages(t):
        return [t.untyped_storage()] if isinstance(t, torch.Tensor) and t.layout == torch.strided else []

    @staticmethod
    def _key(storage) -> int:
        return storage._cdata

    def _gone(self, key: int) -> None:
        nbytes, _ = self._live.pop(key, (0, None))
        self.current -= nbytes
        if key in self._grads:
            self._grads.discard(key)
            self.gradient_bytes -= nbytes

    def track(self, t) -> None:
        for storage in self._storages(t):
            key = self._key(storage)
            if key in self._known or key in self._live:
                continue
            nbytes = _rounded(storage.nbytes())
            self._live[key] = (nbytes, weakref.ref(storage, lambda _, k=key: self._gone(k)))
            self.current += nbytes
            if self.current > self.peak.total:
                self.peak = Peak(self.current, self.gradient_bytes, self.phase)
            if self.current > self.peaks.get(self.phase, Peak()).total:
                self.peaks[self.phase] = Peak(self.current, self.gradient_bytes, self.phase)

    def mark_gradient(self, grad) -> None:
        """Called by a parameter's post-accumulate hook: that storage is a gradient from now on."""
        for storage in self._storages(grad):
            key = self._key(storage)
            if key in self._live and key not in self._grads:
                self._grads.add(key)
                self.gradient_bytes += self._live[key][0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.track(t)
        return out
