"""Training step time and peak memory of each method, as ratios to LoRA, on one model and one batch.

    .venv/bin/python experiments/step_time.py                       # SmolLM2-135M on this CPU
    .venv/bin/python experiments/step_time.py model=llama2-7b-random --methods lora,dora --micro-batch 4
    # equal budget (RoSA's ~80M of LLaMA2-7B = 1.19%, all linear layers): LoRA solves r, RoSA keeps r=3 and
    # solves d (about 0.64%, the paper's r=16 d=0.6% split), SpA solves d
    .venv/bin/python experiments/step_time.py --methods lora,rosa,spa --budget-fraction 0.011872227 \
        --set rosa:method.r=3 'model.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]'

Each method runs in its own subprocess so that its peak memory (CUDA max allocated, or the process's peak
RSS on CPU) is its own; the parent prints one table, all numbers from this one invocation. RoSA / SpA masks
are generated in a process of their own first and passed on with `method.masks=`: the peak is that of the
training steps, not of the one-off mask generation (on CPU, freed score buffers can stay in the RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def prepare(method: str, overrides: list[str], micro_batch: int):
    """The adapted model on its device and one micro-batch of commonsense training examples (and the placement)."""
    import torch

    from harness.batching import batching_of
    from harness.config import compose
    from harness.recipe import Recipe
    from harness.train import make_loader

    recipe = Recipe(compose(["profile=mini", f"method={method}", *overrides]))
    torch.manual_seed(0)
    model, tokenizer = recipe.load(seeded=False)
    adapted = recipe.adapt(model)
    cfg, budget, placement = recipe.solved.cfg, recipe.solved.budget, recipe.placement
    records = recipe.data().train
    encode = recipe.benchmark.encoder({**cfg.task, "train_on_inputs": True}, tokenizer)  # every token supervised
    examples = [encode(r) for r in records[:micro_batch]]
    adapted.model.config.use_cache = False  # as training runs (packed batches need it)
    loader = make_loader(examples, tokenizer, micro_batch, False, 0, batching=batching_of(cfg.training))
    return cfg, adapted, loader, placement, budget


def make_masks(method: str, overrides: list[str], micro_batch: int, directory: str) -> None:
    """RoSA / SpA masks from the gradients, saved for the measuring process (`method.masks=`), so that the
    dense score buffers of mask generation are not in the peak memory of the training steps."""
    import torch

    from harness import methods

    cfg, adapted, loader, placement, _ = prepare(method, overrides, micro_batch)
    adapted.method.before_training(adapted, {"loader": loader, "device": torch.device(placement.device),
                                             "training": cfg.training})
    methods.save(adapted, directory)


def measure(method: str, overrides: list[str], micro_batch: int, steps: int, warmup: int) -> dict:
    import torch

    from harness import methods
    from harness.batching import token_counts
    from harness.memory import peak_memory, reset_peak_memory
    from harness.plan.check import training_step
    from harness.throughput import flops_per_token, peak_flops
    from harness.train import matrix_parameters

    cfg, adapted, loader, placement, budget = prepare(method, overrides, micro_batch)
    device = placement.device
    # (RoSA / SpA's set-up is a no-op here: their masks come from `method.masks`, see make_masks)
    batch, _, step = training_step(adapted, loader, cfg.training, placement)
    model = adapted.model

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    # Peak of the timed steps only, not of loading or of RoSA's one-off mask generation.
    scope = reset_peak_memory()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    memory = peak_memory(scope)
    peak = memory.get("cuda_max_allocated_mb", memory["cpu_peak_rss_mb"])
    knob = f"{budget['knob']}={budget['value']:.4g}" if budget else ""
    predicted = predicted_peak_mb(cfg, batch, device)
    tokens = token_counts(batch)[0]
    name = torch.cuda.get_device_name(0) if device == "cuda" else None
    flops = flops_per_token(matrix_parameters(model), adapted.method.trains_all_weights) * tokens / seconds
    return {"method": method, "knob": knob, "step_s": seconds, "peak_mb": peak, "trainable": methods.trainable_parameters(model),
            "tokens": tokens, "tokens_per_s": tokens / seconds, "device": device, "gpu": name, "model": cfg.model.name,
            "batching": cfg.training.batching, "mfu": flops / peak_flops(name) if peak_flops(name) else None,
            "predicted_mb": predicted}


def predicted_peak_mb(cfg, batch, device: str) -> float | None:
    """The planner's peak for this step (harness.plan.memory), with the masks a run would choose (not the file's);
    None, said on stderr, where the planner fails (the measurement is kept)."""
    try:
        return _predicted_peak_mb(cfg, batch, device)
    except Exception as exc:  # noqa: BLE001 (a planner bug must not cost a lent GPU's measurement)
        print(f"[step_time] the planner failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def _predicted_peak_mb(cfg, batch, device: str) -> float:
    from omegaconf import OmegaConf

    from harness.plan.memory import Batch, estimate

    planned = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if "masks" in planned.method:
        planned.method.masks = None
    rows, length = batch["input_ids"].shape
    packed = "position_ids" in batch and rows == 1
    examples = len(batch["input_ids"]) if not packed else int((batch["position_ids"][0] == 0).sum())
    return estimate(planned, Batch(int(rows), int(length), examples, packed), 1, device=device).total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=tiny-llama method.r=16")
    parser.add_argument("--methods", default="lora,dora,pissa,milora,neat,full")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget-fraction", type=float, help="every method solves its knob for this budget")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:OVERRIDE",
                        help="an override for one method only, e.g. rosa:method.r=4")
    parser.add_argument("--json", help="also write the rows to this file (JSON)")
    parser.add_argument("--also-padded", default="", help="methods measured on padded micro-batches too, e.g. lora")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--masks-into", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args()  # Hydra overrides before or after the options
    if args.one and args.masks_into:
        make_masks(args.one, args.overrides, args.micro_batch, args.masks_into)
        return
    if args.one:
        print(json.dumps(measure(args.one, args.overrides, args.micro_batch, args.steps, args.warmup)))
        return
    from harness import methods

    rows = []
    padded = [m for m in args.also_padded.split(",") if m]
    runs = [(m, []) for m in args.methods.split(",")] + [(m, ["training.batching=padded"]) for m in padded]
    for method, batching in runs:
        extra = [o.split(":", 1)[1] for o in args.set if o.split(":", 1)[0] == method] + batching
        if args.budget_fraction is not None:
            extra.append(f"budget.fraction={args.budget_fraction}")
        cmd = [sys.executable, __file__, "--one", method, "--micro-batch", str(args.micro_batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), *args.overrides, *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        reads_gradients = methods.get(method).setup_reads_gradients
        if reads_gradients:  # RoSA / SpA: masks made in a process of their own, then reused by the measured run
            masks = tempfile.mkdtemp(prefix="step_time_masks_")
            mask_cmd = cmd + methods.get(method).quick_setup_overrides() + ["--masks-into", masks]
            proc = subprocess.run(mask_cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                print(f"{method}: mask generation failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            cmd += methods.get(method).reuse_setup_overrides(masks)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        finally:
            if reads_gradients:
                shutil.rmtree(masks, ignore_errors=True)
        if proc.returncode:
            print(f"{method}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"[step_time] {json.dumps(rows[-1])}", flush=True)  # as it comes: a later failure loses nothing
    if not rows:
        raise SystemExit("no method could be measured")
    base = next((r for r in rows if r["method"] == "lora" and r["batching"] == "packed"), rows[0])
    print(f"model {base['model']} on {base['device']}, micro-batch {args.micro_batch} ({base['tokens']} tokens), "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'method':8} {'batching':>8} {'knob':>14} {'trainable':>12} {'step s':>8} {'x LoRA':>7} {'peak MB':>9} {'x LoRA':>7} "
          f"{'tokens/s':>9} {'MFU':>6} {'planned MB':>10}")
    for r in rows:
        r["step_x_lora"], r["peak_x_lora"] = r["step_s"] / base["step_s"], r["peak_mb"] / base["peak_mb"]
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        print(f"{r['method']:8} {r['batching']:>8} {r['knob']:>14} {r['trainable']:>12,} {r['step_s']:>8.3f} {r['step_x_lora']:>7.2f} "
              f"{r['peak_mb']:>9.0f} {r['peak_x_lora']:>7.2f} {r['tokens_per_s']:>9.0f} {mfu:>6} {r['predicted_mb'] or 0:>10.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"micro_batch": args.micro_batch, "steps": args.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
