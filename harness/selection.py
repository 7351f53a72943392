"""Checkpoint selection, one component configured in one place (`conf/selection/`, `Selection`): the last step's
weights, the held-out loss every N steps (`BestCheckpoint`) or each test set's best epoch (`EpochScorer`).

Held-out loss (LLM-Adapters' `load_best_model_at_end`; the DoRA / MiLoRA scripts'
`--val_set_size 120 --eval_step 80 --save_step 80`; MiLoRA section 4.1: "best checkpoint chosen by the
validation set loss").

Every `training.eval_steps` optimizer steps the loss on the held-out records is computed; the trainable state
(adapter weights, a head, RoSA's sparse values: whatever has requires_grad) with the lowest one is kept and
restored when training ends. As HF Trainer, only those steps are candidates (a last step that is not a multiple
of eval_steps is not). An adapter's state is small and kept in memory on the CPU; a fully fine-tuned model's is
its whole weights, kept on disk (`HARNESS_CHECKPOINT_DIR`, else the system's temporary folder). Under sharded
training (sharding=fsdp2) each process keeps and restores its own shard.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness.errors import ConfigError

# monitor -> (mode, every): the settings the component has (conf/selection/val_loss.yaml, best_epoch.yaml)
MONITORS = {"held_out_loss": ("min", "steps"), "headline": ("max", "epoch")}


@dataclass(frozen=True)
class Selection:
    """Which weights (or epoch) a run reports: `monitor` null is the last step's; `held_out_loss` the lowest
    held-out loss every `steps` optimizer steps; `headline` each test set's best epoch by its headline metric."""

    monitor: str | None = None
    mode: str | None = None
    every: str | None = None
    steps: int | None = None

    @classmethod
    def of(cls, node) -> "Selection":
        """From the run config's `selection` node (a config written before the group existed has none: last)."""
        values = dict(node or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"selection: unknown key(s) {unknown}", "see conf/selection/*.yaml")
        selection = cls(**values)
        selection.validate()
        return selection

    def validate(self) -> None:
        if self.monitor is None:
            return
        if self.monitor not in MONITORS:
            raise ConfigError(f"selection.monitor={self.monitor!r} is not one of {sorted(MONITORS)} (or null: the last "
                              "step's weights)", "choose selection=last, val_loss or best_epoch")
        mode, every = MONITORS[self.monitor]
        if (self.mode, self.every) != (mode, every):
            raise ConfigError(f"selection.monitor={self.monitor} is selected with mode={mode} every={every}, got "
                              f"mode={self.mode} every={self.every}", "choose selection=val_loss or best_epoch")
        if every == "steps" and (not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1):
            raise ConfigError(f"selection.steps={self.steps!r} must be a positive integer (the held-out loss every N "
                              "optimizer steps)")

    @property
    def on_held_out_loss(self) -> bool:
        return self.monitor == "held_out_loss"

    @property
    def per_epoch(self) -> bool:
        return self.every == "epoch"

    def check(self, held_out) -> None:
        """What the selection needs of the run (before anything loads, and again when training starts):
        `held_out`, the held-out records (or `task.val_set_size`)."""
        if self.on_held_out_loss and not held_out:
            raise ConfigError("selection=val_loss needs held-out records",
                              "set task.val_set_size (LLM-Adapters: 120), or selection=last")


class BestCheckpoint:
    def __init__(self, on_disk: bool):
        self.on_disk = on_disk
        self.step: int | None = None
        self.loss = float("inf")
        self.curve: list[dict] = []
        self._state: dict[str, torch.Tensor] | None = None
        self._dir: Path | None = None

    def offer(self, model, step: int, loss: float) -> bool:
        """Records the validation loss of `step`; keeps the trainable state when it is the lowest so far."""
        self.curve.append({"step": step, "loss": loss})
        if not loss < self.loss:
            return False
        self.step, self.loss = step, loss
        state = {n: _local(p).detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
        if self.on_disk:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="harness-best-", dir=os.environ.get("HARNESS_CHECKPOINT_DIR")))
            torch.save(state, self._dir / "best.pt")
        else:
            self._state = state
        return True

    @torch.no_grad()
    def restore(self, model) -> None:
        """Puts the kept state back into `model` (nothing to do when no step was evaluated)."""
        if self.step is None:
            return
        state = torch.load(self._dir / "best.pt") if self.on_disk else self._state
        for name, p in model.named_parameters():
            if name in state:
                _local(p).copy_(state[name].to(p.device, p.dtype))
        self.close()

    def close(self) -> None:
        self._state = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _local(parameter: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter: its shard under sharded training (a DTensor), else all of it. Each
    process keeps and restores its own part, so selection needs no collective."""
    from torch.distributed.tensor import DTensor

    return parameter.to_local() if isinstance(parameter, DTensor) else parameter


class EpochScorer:
    """Scores the test sets after every epoch (`protocol.report=best_epoch`: Neat's glue.py evaluates the dev set
    after each epoch and reports the best); returns {"epoch", "metrics"} for the training statistics, and keeps
    each set's prediction rows of its best epoch so far (the first of equals, as `best_epoch_metrics` picks), so
    that the predictions file, and the interval and Δ a table computes from it, are the epoch the cell reports."""

    def __init__(self, scorer, processor, test_sets, cfg: DictConfig):
        self.scorer, self.processor, self.test_sets, self.cfg = scorer, processor, test_sets, cfg
        self.best: dict[str, tuple[float, int, list[dict]]] = {}  # set -> (headline, epoch, rows)

    def __call__(self, model, epoch: int) -> dict:
        metrics, predictions = self.scorer.evaluate(model, self.processor, self.test_sets, self.cfg.protocol,
                                                    self.cfg.task, progress=False)
        for name, m in metrics.items():
            if name not in self.best or m["accuracy"] > self.best[name][0]:
                self.best[name] = (m["accuracy"], epoch, predictions[name])
        return {"epoch": epoch, "metrics": metrics}

    def reported(self, last_metrics: dict, last_predictions: dict, epochs: list[dict]) -> tuple[dict, dict]:
        """(each set's metrics at its best epoch with the last beside them, the predictions of that epoch)."""
        metrics = best_epoch_metrics(last_metrics, epochs)
        return metrics, self.predictions(metrics, last_predictions)

    def predictions(self, metrics: dict, last: dict) -> dict:
        """Each set's rows at the epoch `metrics` reports (`best_epoch_metrics`' choice), else the final ones."""
        out = {}
        for name, rows in last.items():
            kept = self.best.get(name)
            out[name] = kept[2] if kept and kept[1] == metrics.get(name, {}).get("epoch") else rows
        return out


def best_epoch_metrics(last: dict, epochs: list[dict]) -> dict:
    """Each set's metrics at the epoch with its best headline number, with the last epoch's beside them
    (`last_*`, `epoch`): what the table shows is the best, as Neat reports, and the result keeps both."""
    out = {}
    for name, final in last.items():
        best = max((e for e in epochs if name in e["metrics"]), key=lambda e: e["metrics"][name]["accuracy"], default=None)
        chosen = best["metrics"][name] if best else final
        out[name] = {**chosen, "epoch": best["epoch"] if best else None, "last_accuracy": final["accuracy"],
                     "last": {k: v for k, v in final.items() if k != "seconds"}, "seconds": final.get("seconds")}
    return out
