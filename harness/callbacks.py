"""What the training loop does besides stepping, as callbacks (`harness.train.Trainer`): checkpoint selection on the
held-out loss, per-epoch scoring, the progress bar and the tracker. Each sees the trainer at its events and adds its
part to the statistics; the loop itself only steps.

Events, in order: `on_step` (after every optimizer step, with the step's mean micro-batch loss), `on_epoch` (after
every pass over the loader, or the last partial one), `on_train_end` (before the statistics), `statistics` (what the
callback adds to them), `on_statistics` (the finished statistics).
"""

from __future__ import annotations

from typing import Any, Callable

from tqdm.auto import tqdm

from harness.selection import BestCheckpoint


class Callback:
    def on_step(self, trainer, step: int, loss: float) -> None:
        pass

    def on_epoch(self, trainer, epoch: int) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass

    def statistics(self, trainer) -> dict:
        return {}

    def on_statistics(self, trainer, stats: dict) -> None:
        pass


class Progress(Callback):
    """The progress bar (the main process only) with the step's loss and learning rate."""

    def __init__(self, total: int, name: str, shown: bool):
        self.bar = tqdm(total=total, desc=f"train {name}", disable=not shown)

    def on_step(self, trainer, step, loss):
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{trainer.scheduler.get_last_lr()[0]:.2e}")

    def on_train_end(self, trainer):
        self.bar.close()


class Tracker(Callback):
    """The accelerate tracker (wandb, offline by default): the loss and lr every `log_every` steps, the final
    numbers at the end."""

    def __init__(self, log_every: int):
        self.log_every = log_every

    def on_step(self, trainer, step, loss):
        if step % self.log_every == 0:
            trainer.accelerator.log({"train/loss": loss, "train/lr": trainer.scheduler.get_last_lr()[0]}, step=step)

    def on_statistics(self, trainer, stats: dict) -> None:
        trainer.accelerator.log({f"final/{k}": v for k, v in stats.items() if isinstance(v, (int, float))},
                                step=trainer.step)
        trainer.accelerator.end_training()


class HeldOutLoss(Callback):
    """The held-out loss: every `every` optimizer steps with selection (the trainable state of the lowest kept and
    restored at the end: harness.selection), else once at the end."""

    def __init__(self, loader, every: int, select: bool, on_disk: bool, lockstep: bool, mean_loss: Callable):
        self.loader, self.every, self.lockstep, self.mean_loss = loader, every, lockstep, mean_loss
        self.selection = BestCheckpoint(on_disk=on_disk) if select else None

    def _loss(self, trainer) -> float:
        return self.mean_loss(trainer.plain_model(), self.loader, trainer.accelerator.device, lockstep=self.lockstep)

    def on_step(self, trainer, step, loss):
        if self.selection is not None and step % self.every == 0:
            self.selection.offer(trainer.plain_model(), step, self._loss(trainer))

    def on_train_end(self, trainer):
        if self.selection is not None:
            self.selection.restore(trainer.plain_model())

    def statistics(self, trainer):
        if self.selection is not None:
            return {"selected_step": self.selection.step, "val_loss": self.selection.loss,
                    "val_curve": self.selection.curve}
        final = self._loss(trainer)  # (after the training time is taken: not part of it)
        return {"val_loss": final, "val_curve": [{"step": trainer.step, "loss": final}]}


class EpochScoring(Callback):
    """A protocol that reports the best epoch (GLUE's dev sets): the model scored after every epoch, the scores
    kept in the statistics' `epochs`."""

    def __init__(self, score: Callable[[Any, int], Any], steps_per_epoch: int):
        self.score, self.steps_per_epoch, self.results = score, steps_per_epoch, []

    def on_epoch(self, trainer, epoch):
        if trainer.step % self.steps_per_epoch == 0 or trainer.step >= trainer.total_steps:
            trainer.model.eval()
            self.results.append(self.score(trainer.plain_model(), epoch))
            trainer.model.train()

    def statistics(self, trainer):
        return {"epochs": self.results} if self.results else {}
