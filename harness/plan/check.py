"""The planner's memory model against a measured training step on this CPU: the same cell, the same micro-batch
(its data's longest examples), one real forward / backward / AdamW step in a process of its own, whose peak
resident memory the kernel reports (`VmHWM`).

The measured peak is the weights and moments held before the step plus the step's rise of the resident set
above where it stood before the step. glibc would keep freed blocks below its sliding mmap threshold in its heap
(and so in the resident set) after a first large free; the child process fixes the threshold at 64 KiB
(`MALLOC_MMAP_THRESHOLD_`), so every tensor larger than that is mapped when made and unmapped when freed, and
the resident set follows what is live.

    python -m harness.plan.check model=smollm2-135m method=rosa      # one cell: predicted and measured, MiB
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MIB = 2**20


def _resident() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status.splitlines()
            if line.startswith(("VmRSS:", "VmHWM:"))}


def training_step(adapted, loader, training, placement):
    """(the loader's first micro-batch on the device, optimizer, step()): one optimizer step outside the loop, set up
    as `harness.train` sets a run up: the method's set-up from data, fp32 master weights, gradient checkpointing
    when the recipe asks, no KV cache, the method's parameter groups, the run's autocast. What the planner's check
    and experiments/step_time.py measure."""
    import torch

    from harness.train import adapter_in_base_dtype, upcast_trainable

    device = placement.device
    adapted.method.before_training(adapted, {"loader": loader, "device": torch.device(device), "training": training})
    model = adapted.model
    upcast_trainable(model, keep=adapted.method.set_trainable_precision(adapted) | adapter_in_base_dtype(model, training))
    if training.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW(adapted.method.param_groups(adapted, dict(training)), lr=1e-5)
    batch = {k: v.to(device) for k, v in next(iter(loader)).items()}

    def step():
        with placement.autocast():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return batch, optimizer, step


def measure_here(overrides: list[str], micro: int) -> dict:
    """In this process: one warm-up step, then the measured one (see the module's docstring)."""
    import gc

    import torch

    from harness.batching import batching_of
    from harness.config import compose
    from harness.memory import reset_peak_memory
    from harness.recipe import Recipe
    from harness.train import make_loader

    cfg = compose(["profile=mini", *overrides])
    recipe = Recipe(cfg)
    model, tokenizer = recipe.load()
    adapted = recipe.adapt(model)
    training = recipe.training_data(tokenizer, recipe.data())
    longest = sorted(training.train, key=lambda e: -len(e["input_ids"]))[:micro]
    loader = make_loader(longest, tokenizer, micro, False, 0, batching=batching_of(cfg.training))
    batch, optimizer, step = training_step(adapted, loader, cfg.training, recipe.placement)
    model = adapted.model
    step()
    gc.collect()
    held = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    held += sum(b.numel() * b.element_size() for b in model.buffers())
    held += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    before = _resident()["VmRSS"]
    reset_peak_memory()
    step()
    rise = _resident()["VmHWM"] - before
    rows, length = batch["input_ids"].shape
    return {"measured": held + rise, "held": held, "rise": rise, "rows": int(rows), "length": int(length),
            "examples": len(longest), "packed": "position_ids" in batch and rows == 1}


def measured(overrides: list[str], micro: int = 4) -> dict:
    """`measure_here` in a child process with the fixed mmap threshold (its peak is its own)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness.plan.check", "--measure", str(micro), *overrides],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"measuring {overrides} failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(overrides: list[str], micro: int = 4) -> dict:
    """{"predicted", "measured", "ratio", ...}: the planner's peak (CPU dtypes) for the micro-batch measured."""
    from harness.config import compose
    from harness.plan.memory import Batch, estimate

    found = measured(overrides, micro)
    cfg = compose(["profile=mini", *overrides])
    batch = Batch(found["rows"], found["length"], found["examples"], found["packed"])
    predicted = estimate(cfg, batch, 1, device="cpu")
    return {**found, "predicted": predicted.total, "ratio": predicted.total / found["measured"],
            "parts": predicted.as_dict()}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--measure"]:
        print(json.dumps(measure_here(args[2:], int(args[1]))))
        return
    row = compare(args)
    print(f"predicted {row['predicted'] / MIB:,.1f} MiB, measured {row['measured'] / MIB:,.1f} MiB "
          f"(ratio {row['ratio']:.3f}) on a micro-batch of {row['rows']}x{row['length']} tokens")


if __name__ == "__main__":
    main()
