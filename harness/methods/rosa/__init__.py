"""RoSA (robust adaptation: W0 + s*B@A + S, S sparse with a fixed mask) and SpA (RoSA with r = 0).

The low-rank part is a peft LoRA adapter; the sparse part is a `SparseDelta` attached to every adapted module
and added to its output by a forward hook. Masks come from a file (`masks=`, e.g. those saved by an earlier
run) or from the paper's recipe in `before_training`: train the LoRA part alone for `mask_warmup_steps`,
accumulate the dense weight gradient G = grad_out^T @ x of every adapted matrix over `mask_grad_batches`
batches (mean of G^2, or of G), keep the top floor(d * numel) entries per matrix, then restart from the
pretrained weights with the initial LoRA values and train L and S jointly.

The package: `masks` (the state record, the target modules, attaching / loading / saving the masks, the sparse
forward hook), `scores` (the gradient scores the masks are chosen from) and, here, the methods and the warm-up.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.methods.base import Method, MethodConfigError
from harness.methods.options import HeadOptions, one_of
from harness.methods.registry import register
# (the names of `masks` and `scores` are imported here too for the importers of `harness.methods.rosa`)
from harness.methods.rosa.masks import (HEAD_PREFIX, PEFT_PREFIX, SPARSE_FILE, STATE_KEY, RosaState, _add_sparse_output,
                                        _target_modules, _weight_shape, attach_masks, copy_sparse_values, load_masks,
                                        sparse_tensors, state)
# `_generate_masks` calls `accumulate_gradient_scores` through this module's name for it, so that replacing
# `harness.methods.rosa.accumulate_gradient_scores` (tests/distributed_worker.py counts the calls) reaches it
from harness.methods.rosa.scores import MASK_SCORES, _example_weights, _GradientCapture, accumulate_gradient_scores
from harness.methods.sparse import topk_mask

ADAPTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True, kw_only=True)
class RosaOptions(HeadOptions):
    """RoSA's options (conf/method/rosa.yaml sets the paper's recipe; spa.yaml: r=0)."""

    r: int                      # the low-rank part's rank (0: SpA, the sparse part alone)
    alpha: float
    dropout: float
    density: float              # the sparse part's share of each adapted matrix
    mask_warmup_steps: int      # LoRA-only steps before the masks are chosen (the paper: 64)
    mask_grad_batches: int      # optimizer batches whose gradients score the entries
    mask_score: str             # fisher (mean of G^2) or grad (mean of G)
    mask_buffer_device: str     # where the scores accumulate
    adapter_dtype: str          # fp32, or bf16 as the official scripts train A, B and S
    target_modules: list[str] | None = None
    task_type: str | None = None
    lr_sparse: float | None = None    # None: the run's lr
    lr_lowrank: float | None = None
    masks: str | None = None          # a saved sparse file (or its run's folder) to take the masks from

    def check(self, method: str) -> None:
        one_of(method, "adapter_dtype", self.adapter_dtype, sorted(ADAPTER_DTYPES))
        if not (0.0 <= float(self.density) <= 1.0):
            raise MethodConfigError(f"method={method}: density must be in [0, 1], got {self.density}")
        one_of(method, "mask_score", self.mask_score, list(MASK_SCORES))
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 0:
            raise MethodConfigError(f"method={method}: r must be a non-negative integer, got {self.r!r}")
        if self.r == 0 and float(self.density) == 0.0:
            raise MethodConfigError(f"method={method}: r=0 and density=0 train nothing")


_state = state  # the methods' own variables are called state


@torch.no_grad()
def _reset_lora(model, state: RosaState) -> None:
    """The restart after the warm-up: L back to its initial values (only the masks the warm-up led to are kept)."""
    params = dict(model.named_parameters())
    for name, value in state.initial_lora.items():
        params[name].copy_(value)


class _RoSABase(Method):
    budget_knob = "density"  # r as stated; the budget left after the low-rank part goes to S
    options_class = RosaOptions
    setup_reads_gradients = True

    def knob_label(self, options):
        parts = [f"r={options.r}"] if int(options.r or 0) > 0 else []
        if options.density is not None:
            parts.append(f"d={100 * float(options.density):.2f}%")
        return " ".join(parts)

    def quick_setup_overrides(self):
        # the mask recipe's length does not change the step cost: one gradient batch, no warm-up
        return ["method.mask_warmup_steps=0", "method.mask_grad_batches=1"]

    def reuse_setup_overrides(self, directory):
        return [f"method.masks={directory}"]

    def count(self, shapes, options):
        from harness.methods.lora import lora_count

        lowrank = lora_count(shapes, options.r) if int(options.r) > 0 else 0
        return lowrank + sum(int(float(options.density) * d_out * d_in) for d_out, d_in in shapes)

    def apply(self, model, state, options):
        o = options
        names = list(o.target_modules or [])
        if o.r > 0:
            from harness.methods.lora import lora_config, wrap

            model = wrap(model, lora_config(o))
            initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            heads = list(o.modules_to_save or [])  # a task's new head trains in place (no peft wrapper here)
            for name, p in model.named_parameters():
                p.requires_grad_(any(m in name.split(".") for m in heads))
            initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        rosa = state[STATE_KEY] = RosaState(options=o, targets=_target_modules(model, names, wrapped=o.r > 0),
                                            initial_lora=initial, model=model)
        if o.masks is not None:
            attach_masks(rosa, load_masks(o.masks))
        elif float(o.density) == 0.0:
            rosa.ready = True  # no sparse part: exactly LoRA
        return model

    def planned_setup(self, adapted) -> None:
        """Sparse parts of the masks' size (floor(density x d_out x d_in) per target, as `topk_mask` chooses) at
        any positions: the memory of a step on the masks the run would choose from its gradients."""
        from harness.methods.sparse import PlannedSparseDelta

        rosa = adapted.state[STATE_KEY]
        if rosa.ready:
            return  # (masks given, or no sparse part)
        for module in rosa.targets.values():
            d_out, d_in = _weight_shape(module)
            device = next(module.parameters()).device
            module.rosa_sparse = PlannedSparseDelta(d_out, d_in, int(float(rosa.options.density) * d_out * d_in), device)
            rosa.hooks.append(module.register_forward_hook(_add_sparse_output))
        rosa.ready = True

    def before_training(self, adapted, context: dict) -> None:
        """Generates the masks (warm-up, gradient accumulation, top-k), then restarts from the initial L. With
        several processes the main one generates them (`context["on_main"]`) and every process attaches them."""
        state = _state(adapted)
        if state.ready:
            return
        masks = context.get("on_main", lambda compute: compute())(lambda: self._generate_masks(adapted, context))
        attach_masks(state, masks)

    def _generate_masks(self, adapted, context: dict) -> dict:
        model, state = adapted.model, _state(adapted)
        o = state.options
        device = context["device"]
        # Warm-up steps and gradient batches are optimizer batches (training.batch_size), as in the paper's
        # scripts, made of `accumulation` micro-batches each.
        accumulation = int(context.get("accumulation", 1))
        micro_batches = (dict((k, v.to(device)) for k, v in b.items()) for b in _cycle(context["loader"]))
        batches = ([next(micro_batches) for _ in range(accumulation)] for _ in itertools.count())
        if o.r > 0 and int(o.mask_warmup_steps) > 0:
            # The LoRA-only warm-up with the run's own optimizer, schedule and clipping (RoSA's scheduler.py runs
            # the mask phase as the first 64 steps of the same composer run: DecoupledAdamW, weight decay 0, the
            # run's warm-up and decay); only the masks it leads to are kept (L restarts from its initial values).
            from harness.train import clip_norm, optimizer_and_schedule

            training = context["training"]
            optimizer, scheduler = optimizer_and_schedule(self.param_groups(adapted, dict(training)), training,
                                                          int(context.get("total_steps") or o.mask_warmup_steps))
            model.train()
            state.warmup_lrs = []
            for _ in range(int(o.mask_warmup_steps)):
                for batch in next(batches):
                    (model(**batch).loss / accumulation).backward()
                if clip_norm(training):
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip_norm(training))
                state.warmup_lrs.append([group["lr"] for group in optimizer.param_groups])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.warmup_weight_decay = [group["weight_decay"] for group in optimizer.param_groups]
        # SpA trains nothing below the targets (a task's head at most): let activations carry the gradients
        frozen_model = o.r == 0
        if frozen_model and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        scores = accumulate_gradient_scores(model, (next(batches) for _ in range(int(o.mask_grad_batches))),
                                            state.targets, o.mask_score, str(o.mask_buffer_device))
        if frozen_model and hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()
        _reset_lora(model, state)
        # on the CPU: sent to the other processes as they are
        return {name: tuple(t.cpu() for t in topk_mask(score, float(o.density))) for name, score in scores.items()}

    def set_trainable_precision(self, adapted) -> set[int]:
        """`adapter_dtype=bf16`: A, B and S train in bf16, as the official scripts keep them (`rosa_dtype: bf16`);
        the default fp32 keeps master weights, as every method's adapter."""
        dtype = ADAPTER_DTYPES[_state(adapted).options.adapter_dtype]
        if dtype == torch.float32:
            return set()
        sparse = {id(m.rosa_sparse.values) for m in _state(adapted).targets.values() if hasattr(m, "rosa_sparse")}
        kept = set()
        for name, p in adapted.model.named_parameters():  # A, B and S only: a task's head keeps fp32 master weights
            if p.requires_grad and (id(p) in sparse or "lora_" in name):
                p.data = p.data.to(dtype)
                kept.add(id(p))
        return kept

    def param_groups(self, adapted, training: dict) -> list[dict]:
        o = _state(adapted).options
        sparse = [m.rosa_sparse.values for m in _state(adapted).targets.values() if hasattr(m, "rosa_sparse")]
        sparse_ids = {id(p) for p in sparse}
        lowrank = [p for p in adapted.model.parameters() if p.requires_grad and id(p) not in sparse_ids]
        groups = []
        if lowrank:
            groups.append({"params": lowrank, **({"lr": float(o.lr_lowrank)} if o.lr_lowrank else {})})
        if sparse:
            groups.append({"params": sparse, **({"lr": float(o.lr_sparse)} if o.lr_sparse else {})})
        return groups

    @torch.no_grad()
    def merge(self, adapted):
        state = _state(adapted)
        for h in state.hooks:
            h.remove()
        state.hooks.clear()
        for module in state.targets.values():
            if hasattr(module, "rosa_sparse"):
                base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
                base.weight.add_(module.rosa_sparse.to_dense().to(base.weight.dtype))
                del module.rosa_sparse
        return super().merge(adapted)

    def save(self, adapted, directory: Path) -> None:
        from safetensors.torch import save_file

        model, state = adapted.model, _state(adapted)
        if state.options.r > 0:
            model.save_pretrained(directory)
        # SpA: a task's head trained in place (with r > 0 it is in the peft adapter as modules_to_save)
        tensors = {f"{HEAD_PREFIX}{n}": p.detach().contiguous().cpu() for n, p in model.named_parameters()
                   if p.requires_grad and state.options.r == 0 and not n.endswith(".rosa_sparse.values")}
        tensors.update(sparse_tensors(state))
        (Path(directory) / "rosa.json").write_text(json.dumps({"density": state.options.density, "r": state.options.r}))
        if tensors:
            save_file(tensors, str(Path(directory) / SPARSE_FILE))

    def load(self, base_model, directory, options, state):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        has_sparse = (directory / SPARSE_FILE).is_file()
        masks = str(directory / SPARSE_FILE) if has_sparse else None
        model = self.apply(base_model, state, options.replace(masks=masks))
        if state[STATE_KEY].options.r > 0:
            set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
        tensors = load_file(str(directory / SPARSE_FILE)) if has_sparse else {}
        with torch.no_grad():
            copy_sparse_values(state[STATE_KEY], tensors)
            parameters = dict(model.named_parameters())
            for key, value in tensors.items():
                if key.startswith(HEAD_PREFIX):
                    parameters[key[len(HEAD_PREFIX):]].copy_(value)
        return model


def _cycle(loader):
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("RoSA mask generation: the training loader is empty")


@dataclass(frozen=True, kw_only=True)
class SpaOptions(RosaOptions):
    def check(self, method: str) -> None:
        if self.r != 0:
            raise MethodConfigError("method=spa is RoSA with r=0; use method=rosa for a low-rank part")
        super().check(method)


@register("rosa")
class RoSA(_RoSABase):
    # 2: masks from the per-example Fisher, the warm-up on the run's optimizer and schedule
    behaviour_version = 2


@register("spa")
class SpA(_RoSABase):
    behaviour_version = 2

    options_class = SpaOptions
