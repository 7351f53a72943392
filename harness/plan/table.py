"""A plan as a markdown table (one row per cell, then the totals and the notes) and as JSON."""

from __future__ import annotations

from dataclasses import asdict

from harness.plan import Plan

GIB = 2**30


def _gib(nbytes: float) -> str:
    gib = nbytes / GIB
    return f"{gib:.2f}" if gib < 1 else f"{gib:.1f}"


def _hours(hours: float) -> str:
    return f"{hours:.2f}" if hours < 10 else f"{hours:,.1f}"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def markdown(plan: Plan) -> str:
    import pandas as pd

    usable = plan.gpu.memory_mib / 1024
    rows = []
    for c in plan.cells:
        m = c.fit.memory
        rows.append({
            "model": c.model, "method": c.method, "runs": c.runs, "trainable": _count(m.trainable),
            "weights GiB (frozen + trained)": f"{_gib(m.frozen_weights)} + {_gib(m.trainable_weights)}",
            "grads + moments GiB": f"{_gib(m.gradients)} + {_gib(m.optimizer)}",
            "activations GiB": _gib(m.activations + m.buffers),
            "peak GiB / GPU": _gib(c.fit.per_gpu),
            "fits": ("weights fit; step not traced" if m.untraced and c.fit.fits else
                     "yes" if c.fit.fits else ("with " + c.fit.fix if c.fit.fix else "no")),
            "micro-batch tokens": f"{m.batch.rows}x{m.batch.length}",
            "train tokens": _count(c.work.train_tokens), "generated (at most)": _count(c.work.generated_tokens),
            "train h": _hours(c.hours.train), "eval h": _hours(c.hours.evaluate), "GPU-h": _hours(c.gpu_hours),
        })
    frame = pd.DataFrame(rows, index=range(1, len(rows) + 1))
    head = (f"# Plan: {plan.experiment}, profile {plan.profile}, on {plan.gpus} x {plan.gpu.label} "
            f"({usable:.0f} GiB, {plan.gpu.bf16_tflops:g} TFLOP/s bf16 dense)\n\n"
            f"Training MFU {plan.mfu:.0%} ({plan.mfu_source}). Peak memory: the longest micro-batch of the data, "
            f"traced on fake tensors (harness.plan.memory); 'fits' leaves the headroom of meta.plan.headroom.\n")
    total = (f"\n**Total: {_hours(plan.gpu_hours)} GPU-hours; {_hours(plan.wall_hours)} h wall on {plan.gpus} GPU"
             f"{'s' if plan.gpus > 1 else ''}** ({sum(c.runs for c in plan.cells)} runs).\n")
    notes = sorted({n for c in plan.cells for n in c.notes})
    return head + "\n" + frame.to_markdown() + "\n" + total + "".join(f"\n- {n}" for n in notes) + "\n"


def as_json(plan: Plan) -> dict:
    return {"experiment": plan.experiment, "profile": plan.profile, "gpu": asdict(plan.gpu), "gpus": plan.gpus,
            "mfu": plan.mfu, "mfu_source": plan.mfu_source, "gpu_hours": plan.gpu_hours,
            "wall_hours": plan.wall_hours,
            "cells": [{"model": c.model, "method": c.method, "task": c.task, "runs": c.runs,
                       "memory": c.fit.memory.as_dict(), "fits": c.fit.fits, "fix": c.fit.fix, "gpus": c.fit.gpus,
                       "per_gpu_bytes": c.fit.per_gpu, "work": asdict(c.work),
                       "hours": {"train": c.hours.train, "evaluate": c.hours.evaluate}, "notes": c.notes}
                      for c in plan.cells]}
