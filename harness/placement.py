"""Where a run computes and in which precision, decided once from the machine and the config.

`device`: CUDA where there is one, else the CPU. `weights`: the dtype the model is loaded in (`model.dtype`:
auto = bf16 on CUDA, fp32 on the CPU), except that a method that trains the model's own weights (full
fine-tuning) always loads them in fp32: they are its master weights (SPEC 2.3, "Precision"; MetaMath's full FT:
bf16 mixed precision with fp32 master weights). Adapters train in fp32 on a bf16 base (peft upcasts them; the
training loop upcasts any other trained parameter). `compute`: accelerate's mixed precision for training
(`training.precision`: auto = bf16 autocast on CUDA, none on the CPU, where bf16 is ~30x slower). The result file
records all three.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from harness.errors import ConfigError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
PRECISIONS = ("auto", "fp32", "bf16", "no")


@dataclass(frozen=True)
class Placement:
    device: str                  # "cuda" or "cpu"
    weights: torch.dtype         # the dtype the model's weights load in
    compute: str                 # accelerate's mixed_precision: "bf16" or "no"

    def describe(self) -> dict:
        return {"device": self.device, "weights": str(self.weights).removeprefix("torch."), "compute": self.compute}

    def autocast(self):
        """The compute precision outside the training loop (which has accelerate's): evaluation and measurement
        under the autocast training ran in, so that what trained in fp32 master weights (a task's head, BitFit's
        biases) meets the bf16 weights as it did in training."""
        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.compute == "bf16")


def weights_dtype(name: str | None, device: str) -> torch.dtype:
    if name in (None, "auto"):
        return torch.bfloat16 if device == "cuda" else torch.float32
    if str(name) not in DTYPES:
        raise ConfigError(f"model.dtype={name!r} is not one of auto, float32, bfloat16, float16")
    return DTYPES[str(name)]


def compute_precision(name: str | None, device: str) -> str:
    name = name or "auto"
    if name not in PRECISIONS:
        raise ConfigError(f"training.precision={name!r} is not one of {list(PRECISIONS)}")
    if name == "auto":
        return "bf16" if device == "cuda" else "no"
    return "bf16" if name == "bf16" else "no"


def decide(model_cfg: Mapping | None = None, training: Mapping | None = None, trains_weights: bool = False,
           device: str | None = None) -> Placement:
    """`trains_weights`: the method trains the model's own weights (`Method.trains_all_weights`). `device`: the
    placement on that device instead of this machine's (the planner's GPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    requested = weights_dtype((model_cfg or {}).get("dtype"), device)
    return Placement(device, torch.float32 if trains_weights else requested,
                     compute_precision((training or {}).get("precision"), device))

