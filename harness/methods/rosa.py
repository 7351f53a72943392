"""RoSA (robust adaptation: W0 + s*B@A + S, S sparse with a fixed mask) and SpA (RoSA with r = 0).

The low-rank part is a peft LoRA adapter; the sparse part is a `SparseDelta` attached to every adapted module
and added to its output by a forward hook. Masks come from a file (`masks=`, e.g. those saved by an earlier
run) or from the paper's recipe in `before_training`: train the LoRA part alone for `mask_warmup_steps`,
accumulate the dense weight gradient G = grad_out^T @ x of every adapted matrix over `mask_grad_batches`
batches (mean of G^2, or of G), keep the top floor(d * numel) entries per matrix, then restart from the
pretrained weights with the initial LoRA values and train L and S jointly.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness.batching import example_segments, supervised_token_counts
from harness.methods.base import Method, MethodConfigError, check_options, module_matches
from harness.methods.registry import register
from harness.methods.sparse import SparseDelta, topk_mask

ROSA_OPTIONS = {"r", "alpha", "dropout", "target_modules", "task_type", "density", "lr_sparse", "lr_lowrank",
                "mask_warmup_steps", "mask_grad_batches", "mask_score", "mask_buffer_device", "masks", "modules_to_save",
                "adapter_dtype"}
SPARSE_FILE = "rosa_sparse.safetensors"
PEFT_PREFIX = "base_model.model."
HEAD_PREFIX = "head."  # SpA's saved head parameters, beside the sparse parts


@dataclass
class RosaState:
    options: dict
    targets: dict[str, nn.Module]                    # name (in the plain model) -> module whose output gets S x
    initial_lora: dict[str, torch.Tensor] = field(default_factory=dict)
    hooks: list = field(default_factory=list)
    ready: bool = False                              # masks attached (or none needed: density 0)
    warmup_lrs: list = field(default_factory=list)   # the learning rates of each warm-up step (per group)
    warmup_weight_decay: list = field(default_factory=list)
    model: nn.Module | None = None                   # the model `targets` are modules of

    def rebind(self, model: nn.Module) -> None:
        """The same targets, by name, in another copy of the model: sharded training hands back a gathered copy
        (`harness.sharding.gathered`), whose modules carry the sparse parts and their forward hooks as copies."""
        by_name = {name.removeprefix(PEFT_PREFIX): module for name, module in model.named_modules()}
        self.targets = {name: by_name[name] for name in self.targets}
        self.hooks.clear()
        for module in self.targets.values():
            for key, hook in list(module._forward_hooks.items()):
                if hook is _add_sparse_output:  # the copied registration, replaced by one this state can remove
                    del module._forward_hooks[key]
            if hasattr(module, "rosa_sparse"):
                self.hooks.append(module.register_forward_hook(_add_sparse_output))
        self.model = model

    @property
    def masks(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(rows, cols) of every attached sparse part, read from the parts themselves."""
        return {n: m.rosa_sparse.indices() for n, m in self.targets.items() if hasattr(m, "rosa_sparse")}


STATE_KEY = "rosa"  # where a run's handle keeps its RosaState (`Adapted.state`)


def state(adapted) -> RosaState:
    """The RoSA / SpA state of an adapted run (`harness.methods.Adapted`): its target modules (each with its
    `rosa_sparse` part once the masks are attached), the masks, the options. The public way to inspect them."""
    if STATE_KEY not in adapted.state:
        raise MethodConfigError("this run has no RoSA / SpA adapter (harness.methods.apply(model, 'rosa', ...))")
    rosa = adapted.state[STATE_KEY]
    if rosa.model is not adapted.model:
        rosa.rebind(adapted.model)
    return rosa


_state = state


def _add_sparse_output(module, args, output):
    return output + module.rosa_sparse(args[0])


def _target_modules(model, names: list[str], wrapped: bool) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    targets = {}
    for name, module in model.named_modules():
        plain = name.removeprefix(PEFT_PREFIX)
        if wrapped:
            if isinstance(module, LoraLayer):
                targets[plain] = module
        elif isinstance(module, nn.Linear) and module_matches(plain, names):
            targets[plain] = module
    if not targets:
        raise MethodConfigError(f"method=rosa/spa: no linear module matches target_modules={names}")
    return targets


def _weight_shape(module) -> tuple[int, int]:
    base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    return base.out_features, base.in_features


def attach_masks(state: RosaState, masks: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Adds a zero-initialised S with the given mask to every target module."""
    missing = sorted(set(state.targets) - set(masks))
    if missing:
        raise MethodConfigError(f"method=rosa/spa: the masks have no entry for {missing[:3]}{'...' if len(missing) > 3 else ''}")
    for name, module in state.targets.items():
        rows, cols = masks[name]
        d_out, d_in = _weight_shape(module)
        device = next(module.parameters()).device
        module.rosa_sparse = SparseDelta(d_out, d_in, rows, cols, device=device)
        state.hooks.append(module.register_forward_hook(_add_sparse_output))
    state.ready = True


def load_masks(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / SPARSE_FILE
    if not path.is_file():
        raise MethodConfigError(f"method.masks={str(path)!r}: no such file (a {SPARSE_FILE} saved by a RoSA/SpA run)")
    tensors = load_file(str(path))
    names = {k.rsplit(".", 1)[0] for k in tensors if not k.startswith(HEAD_PREFIX)}
    return {n: (tensors[f"{n}.rows"], tensors[f"{n}.cols"]) for n in names}


@torch.no_grad()
def _reset_lora(model, state: RosaState) -> None:
    params = dict(model.named_parameters())
    for name, value in state.initial_lora.items():
        params[name].copy_(value)


MASK_SCORES = ("fisher", "mean", "batch_squared")
ADAPTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _example_weights(batch) -> tuple[list[tuple[int, slice]], torch.Tensor]:
    """The examples of a micro-batch (harness.batching: rows when padded, runs of a row when packed) and their
    weights w_i = N / N_i, which turn the gradient of the micro-batch's mean loss (over its N supervised tokens)
    into that of example i's own mean loss (over its N_i tokens), as a micro-batch of one computes it."""
    segments = example_segments(batch)
    counts = supervised_token_counts(batch, segments)
    return segments, torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))


class _GradientCapture:
    """Forward hooks on the target matrices whose gradient hooks add each micro-batch's contribution to the
    scores: G = grad_out^T @ x per example (weighted to its own mean loss; squared for `fisher`) or per batch."""

    def __init__(self, targets: dict[str, nn.Module], score: str, buffer_device: str):
        self.score, self.per_example, self.buffer_device = score, score != "batch_squared", buffer_device
        self.scores = {name: torch.zeros(_weight_shape(m), dtype=torch.float32, device=buffer_device)
                       for name, m in targets.items()}
        self.batch_grads: dict[str, torch.Tensor] = {}
        self.reached: set[str] = set()
        self.weights = None  # this micro-batch's examples and their weights (per-example scores)
        self.handles = [module.register_forward_hook(self._forward_hook(name)) for name, module in targets.items()]

    def _forward_hook(self, name):
        def forward_hook(module, args, output):
            x = args[0].detach().float()
            if output.requires_grad:
                output.register_hook(lambda grad: self._on_grad(name, grad.float(), x))
        return forward_hook

    def _on_grad(self, name: str, grad: torch.Tensor, x: torch.Tensor) -> None:
        self.reached.add(name)
        if not self.per_example:
            self.batch_grads[name].add_(grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1]))
            return
        total = None
        segments, example_weights = self.weights
        for (row, positions), w in zip(segments, example_weights.tolist()):
            if w == 0.0:
                continue
            g_out, g_in = grad[row, positions], x[row, positions]
            g = (g_out.reshape(-1, grad.shape[-1]).t() @ g_in.reshape(-1, x.shape[-1])).mul_(w)
            g = g.square_() if self.score == "fisher" else g
            total = g if total is None else total.add_(g)
        if total is not None:
            self.scores[name].add_(total.to(self.buffer_device))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def accumulate_gradient_scores(model, batches, targets: dict[str, nn.Module], score: str,
                               buffer_device: str = "cpu") -> dict[str, torch.Tensor]:
    """The dense score of every target matrix from the dense weight gradients G = grad_out^T @ x.

    `fisher` (the official hook, IST-DASLab/peft-rosa hooks.py ManualGradCollectorHook, which fires per backward
    call with micro-batch 1): mean over examples of G_i^2, G_i the gradient of example i's own loss: the
    empirical diagonal Fisher, the same whatever the micro-batch size. `mean`: mean over examples of G_i.
    `batch_squared` (an earlier harness score, not the paper's): mean over batches of the squared gradient of the
    batch's mean loss. The running scores live on `buffer_device` (the CPU, as the official code keeps them: at
    LLaMA-2-7B all-linear they are ~26 GB); one matrix at a time is formed on the model's device.
    """
    if score not in MASK_SCORES:
        raise MethodConfigError(f"method.mask_score={score!r}: use one of {list(MASK_SCORES)}")
    capture = _GradientCapture(targets, score, buffer_device)
    count = 0  # examples (per-example scores) or batches (batch_squared)
    try:
        for micro_batches in batches:
            micro_batches = list(micro_batches)
            if not capture.per_example:
                capture.batch_grads.update({name: torch.zeros(_weight_shape(m), dtype=torch.float32,
                                                              device=next(m.parameters()).device)
                                            for name, m in targets.items()})
            for batch in micro_batches:
                model.zero_grad(set_to_none=True)
                capture.weights = _example_weights(batch)
                loss = model(**batch).loss
                (loss if capture.per_example else loss / len(micro_batches)).backward()
                count += int((capture.weights[1] > 0).sum()) if capture.per_example else 0
            if not capture.per_example:
                for name, g in capture.batch_grads.items():
                    capture.scores[name].add_(g.square_().to(buffer_device))
                capture.batch_grads.clear()
                count += 1
    finally:
        capture.remove()
        model.zero_grad(set_to_none=True)
    if count == 0:
        raise ValueError("RoSA mask generation saw no batch (or no example with a supervised token)")
    unreached = sorted(set(targets) - capture.reached)
    if unreached:  # all-zero scores would give an arbitrary mask
        raise ValueError(f"RoSA mask generation: no gradient reached {len(unreached)} target(s), e.g. {unreached[:3]}")
    return {name: s.div_(count).abs_() for name, s in capture.scores.items()}


class _RoSABase(Method):
    budget_knob = "density"  # r as stated; the budget left after the low-rank part goes to S
    setup_reads_gradients = True

    def knob_label(self, options):
        parts = [f"r={options['r']}"] if int(options.get("r") or 0) > 0 else []
        if options.get("density") is not None:
            parts.append(f"d={100 * float(options['density']):.2f}%")
        return " ".join(parts)

    def quick_setup_overrides(self):
        # the mask recipe's length does not change the step cost: one gradient batch, no warm-up
        return ["method.mask_warmup_steps=0", "method.mask_grad_batches=1"]

    def reuse_setup_overrides(self, directory):
        return [f"method.masks={directory}"]

    def count(self, shapes, options):
        from harness.methods.lora import lora_count

        lowrank = lora_count(shapes, options) if int(options.get("r", 0)) > 0 else 0
        return lowrank + sum(int(float(options["density"]) * d_out * d_in) for d_out, d_in in shapes)
    def _options(self, options: dict) -> dict:
        check_options(self.name, options, ROSA_OPTIONS)
        o = {"r": 16, "alpha": 16, "dropout": 0.0, "density": 0.006, "target_modules": None, "task_type": None, "lr_sparse": None, "lr_lowrank": None,
             "mask_warmup_steps": 64, "mask_grad_batches": 1, "mask_score": "fisher", "mask_buffer_device": "cpu",
             "masks": None, "modules_to_save": None, "adapter_dtype": "fp32", **options}
        if o["adapter_dtype"] not in ADAPTER_DTYPES:
            raise MethodConfigError(f"method={self.name}: adapter_dtype must be one of {sorted(ADAPTER_DTYPES)}, got "
                                    f"{o['adapter_dtype']!r}")
        if not (0.0 <= float(o["density"]) <= 1.0):
            raise MethodConfigError(f"method={self.name}: density must be in [0, 1], got {o['density']}")
        if o["mask_score"] not in MASK_SCORES:
            raise MethodConfigError(f"method={self.name}: mask_score must be one of {list(MASK_SCORES)}, got "
                                    f"{o['mask_score']!r}")
        if not isinstance(o["r"], int) or o["r"] < 0:
            raise MethodConfigError(f"method={self.name}: r must be a non-negative integer, got {o['r']!r}")
        if o["r"] == 0 and float(o["density"]) == 0.0:
            raise MethodConfigError(f"method={self.name}: r=0 and density=0 train nothing")
        return o

    def apply(self, model, state, **options):
        o = self._options(options)
        names = list(o["target_modules"] or [])
        if o["r"] > 0:
            from harness.methods.lora import lora_config, wrap

            model = wrap(model, lora_config(self.name, {k: o[k] for k in ("r", "alpha", "dropout", "target_modules", "task_type",
                                                                          "modules_to_save")}))
            initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            heads = list(o["modules_to_save"] or [])  # a task's new head trains in place (no peft wrapper here)
            for name, p in model.named_parameters():
                p.requires_grad_(any(m in name.split(".") for m in heads))
            initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        rosa = state[STATE_KEY] = RosaState(options=o, targets=_target_modules(model, names, wrapped=o["r"] > 0),
                                            initial_lora=initial, model=model)
        if o["masks"] is not None:
            attach_masks(rosa, load_masks(o["masks"]))
        elif float(o["density"]) == 0.0:
            rosa.ready = True  # no sparse part: exactly LoRA
        return model

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
        if o["r"] > 0 and int(o["mask_warmup_steps"]) > 0:
            # The LoRA-only warm-up with the run's own optimizer, schedule and clipping (RoSA's scheduler.py runs
            # the mask phase as the first 64 steps of the same composer run: DecoupledAdamW, weight decay 0, the
            # run's warm-up and decay); only the masks it leads to are kept (L restarts from its initial values).
            from harness.train import clip_norm, optimizer_and_schedule

            training = context["training"]
            optimizer, scheduler = optimizer_and_schedule(self.param_groups(adapted, dict(training)), training,
                                                          int(context.get("total_steps") or o["mask_warmup_steps"]))
            model.train()
            state.warmup_lrs = []
            for _ in range(int(o["mask_warmup_steps"])):
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
        frozen_model = o["r"] == 0
        if frozen_model and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        scores = accumulate_gradient_scores(model, (next(batches) for _ in range(int(o["mask_grad_batches"]))),
                                            state.targets, o["mask_score"], str(o["mask_buffer_device"]))
        if frozen_model and hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()
        _reset_lora(model, state)
        # on the CPU: sent to the other processes as they are
        return {name: tuple(t.cpu() for t in topk_mask(score, float(o["density"]))) for name, score in scores.items()}

    def set_trainable_precision(self, adapted) -> set[int]:
        """`adapter_dtype=bf16`: A, B and S train in bf16, as the official scripts keep them (`rosa_dtype: bf16`);
        the default fp32 keeps master weights, as every method's adapter."""
        dtype = ADAPTER_DTYPES[_state(adapted).options["adapter_dtype"]]
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
            groups.append({"params": lowrank, **({"lr": float(o["lr_lowrank"])} if o["lr_lowrank"] else {})})
        if sparse:
            groups.append({"params": sparse, **({"lr": float(o["lr_sparse"])} if o["lr_sparse"] else {})})
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
        if state.options["r"] > 0:
            model.save_pretrained(directory)
        # SpA: a task's head trained in place (with r > 0 it is in the peft adapter as modules_to_save)
        tensors = {f"{HEAD_PREFIX}{n}": p.detach().contiguous().cpu() for n, p in model.named_parameters()
                   if p.requires_grad and state.options["r"] == 0 and not n.endswith(".rosa_sparse.values")}
        for name, module in state.targets.items():
            if hasattr(module, "rosa_sparse"):
                rows, cols = module.rosa_sparse.indices()
                tensors[f"{name}.rows"] = rows.contiguous().cpu()
                tensors[f"{name}.cols"] = cols.contiguous().cpu()
                tensors[f"{name}.values"] = module.rosa_sparse.values.detach().contiguous().cpu()
        (Path(directory) / "rosa.json").write_text(json.dumps({"density": state.options["density"], "r": state.options["r"]}))
        if tensors:
            save_file(tensors, str(Path(directory) / SPARSE_FILE))

    def load(self, base_model, directory, options, state):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        has_sparse = (directory / SPARSE_FILE).is_file()
        model = self.apply(base_model, state, **{**options, "masks": str(directory / SPARSE_FILE) if has_sparse else None})
        if state[STATE_KEY].options["r"] > 0:
            set_peft_model_state_dict(model, load_file(str(directory / "adapter_model.safetensors")))
        tensors = load_file(str(directory / SPARSE_FILE)) if has_sparse else {}
        with torch.no_grad():
            for name, module in state[STATE_KEY].targets.items():
                if f"{name}.values" in tensors:
                    module.rosa_sparse.values.copy_(tensors[f"{name}.values"])
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


@register("rosa")
class RoSA(_RoSABase):
    label, display_order = "RoSA", 7
    # 2: masks from the per-example Fisher, the warm-up on the run's optimizer and schedule
    behaviour_version = 2


@register("spa")
class SpA(_RoSABase):
    label, display_order = "SpA", 8
    behaviour_version = 2

    def _options(self, options: dict) -> dict:
        if options.get("r", 0) != 0:
            raise MethodConfigError("method=spa is RoSA with r=0; use method=rosa for a low-rank part")
        return super()._options({**options, "r": 0})
