"""LoReFT and DiReFT (Wu et al. 2024) through pyreft: low-rank interventions on the hidden states of chosen
positions, the model's weights untouched. LoReFT(h) = h + R^T(W h + b - R h), DiReFT(h) = h + R^T(W h + b),
R an r x d matrix with orthonormal rows; 2*r*d + r parameters per intervention (`tests/test_reft.py`).

pyreft 0.1.0 pins transformers 4.45 in its requirements; with transformers 5 it works installed without its
dependencies (`make setup` does so, beside pyvene 0.1.8, which it builds on). pyvene knows the block names of a
few architectures only, so the interventions are placed by module path on the model's own stack of blocks
(`harness.methods.subset.blocks`: each block's output), which works for any transformers model.

Here ReFT trains and scores classification tasks (GLUE, Neat Table 3's LoReFT / DiReFT rows): the positions are
the first and last `n` real tokens of each sequence (pyreft's `f<n>+l<n>`), read from the batch's attention mask.
Generation with interventions on the prompt (pyreft's `generate`) is not wired into the harness's protocols, so a
causal LM is refused before training. Nothing merges; the interventions and the head save as safetensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.methods.base import Method, MethodConfigError
from harness.methods.options import HeadOptions, positive_int
from harness.methods.registry import register
from harness.methods.subset import blocks, under

WEIGHTS_FILE = "reft.safetensors"
INSTALL = ("pyreft is not installed: `make setup` installs it, or `pip install --no-deps pyreft==0.1.0 pyvene==0.1.8` "
           "(pyreft's declared requirements pin transformers 4.45; it runs with transformers 5 without them)")


def _pyreft():
    try:
        import pyreft
    except ImportError:
        raise MethodConfigError(INSTALL) from None
    return pyreft


def parse_positions(positions: str) -> tuple[int, int]:
    """pyreft's position spec "f1+l1" / "f3" / "l2" as (first n, last n)."""
    found = dict(re.findall(r"([fl])(\d+)", str(positions)))
    if not found or re.sub(r"[fl]\d+", "", str(positions)).strip("+"):
        raise MethodConfigError(f"ReFT positions={positions!r}: use f<n>, l<n> or f<n>+l<n> (first / last n tokens)")
    return int(found.get("f", 0)), int(found.get("l", 0))


@dataclass(frozen=True, kw_only=True)
class ReftOptions(HeadOptions):
    """LoReFT's / DiReFT's options (conf/method/loreft.yaml sets them all)."""

    r: int                  # the intervention's rank
    layers: Any             # "all", or the block indices to intervene on
    positions: str          # pyreft's f<n>+l<n>: the first / last n tokens
    share_weights: bool     # one intervention for the first and the last tokens
    dropout: float

    def check(self, method: str) -> None:
        positive_int(method, "r", self.r)
        parse_positions(self.positions)

    @property
    def first_last(self) -> tuple[int, int]:
        return parse_positions(self.positions)


class ReftClassifier(nn.Module):
    """A model with ReFT interventions, called as the model is: `forward(input_ids, attention_mask, labels)` places
    the interventions at the first / last real tokens of every row and returns the intervened model's output."""

    def __init__(self, reft_model, first: int, last: int, share_weights: bool):
        super().__init__()
        self.reft = reft_model
        self.first, self.last, self.share_weights = first, last, share_weights

    @property
    def config(self):
        return self.reft.model.config

    def base_model(self) -> nn.Module:
        return self.reft.model

    def unit_locations(self, attention_mask: torch.Tensor) -> dict:
        lengths = attention_mask.sum(dim=1).tolist()
        firsts = [list(range(min(self.first, n))) for n in lengths]
        lasts = [list(range(max(n - self.last, 0), n)) for n in lengths]
        groups = [[f + l for f, l in zip(firsts, lasts)]] if self.share_weights else \
            [g for g, n in ((firsts, self.first), (lasts, self.last)) if n]
        per_layer = len(self.reft.interventions) // len(groups)
        return {"sources->base": (None, [group for _ in range(per_layer) for group in groups])}

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        base = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        _, outputs = self.reft(base, unit_locations=self.unit_locations(attention_mask), labels=labels)
        return outputs

    def gradient_checkpointing_enable(self, **kwargs):
        self.reft.model.gradient_checkpointing_enable(**kwargs)


class ReFT(Method):
    """LoReFT / DiReFT on every block (or `layers`) at positions `positions`, rank `r`."""

    mergeable = False
    budget_knob = "r"
    options_class = ReftOptions
    intervention: str = ""

    def _layers(self, options: ReftOptions, depth: int) -> list[int]:
        layers = options.layers
        chosen = list(range(depth)) if layers in (None, "all") else [int(layer) for layer in layers]
        bad = [layer for layer in chosen if not 0 <= layer < depth]
        if bad:
            raise MethodConfigError(f"method={self.name}: layers {bad} do not exist (the model has {depth} blocks)")
        return chosen

    def validate(self, model, options):
        if type(model).__name__.endswith("ForCausalLM"):
            raise MethodConfigError(f"method={self.name} trains and scores classification tasks here (GLUE); "
                                    "generation with interventions (pyreft's generate) is not wired into the "
                                    "harness's protocols", "use a GLUE task (task=glue)")
        self._layers(options, len(blocks(model)[1]))

    def apply(self, model, state, options):
        self.validate(model, options)
        pyreft = _pyreft()
        r = int(options.r)
        first, last = options.first_last
        share = bool(options.share_weights)
        prefix, stack = blocks(model)
        groups = 1 if share else int(first > 0) + int(last > 0)
        hidden = int(model.config.hidden_size)
        kind = getattr(pyreft, self.intervention)
        representations = [{"layer": layer, "component": f"{prefix}[{layer}].output", "low_rank_dimension": r,
                            "intervention": kind(embed_dim=hidden, low_rank_dimension=r,
                                                 dropout=float(options.dropout), dtype=torch.float32)}
                           for layer in self._layers(options, len(stack)) for _ in range(groups)]
        reft = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=representations), set_device=False)
        heads = list(options.modules_to_save or [])
        for name, p in model.named_parameters():
            p.requires_grad_(under(name, heads))
        return ReftClassifier(reft, first, last, share)

    def save(self, adapted, directory: Path) -> None:
        from safetensors.torch import save_file

        model = adapted.model
        tensors = {f"interventions.{key}.{name}": value.detach().contiguous().cpu()
                   for key, intervention in model.reft.interventions.items()
                   for name, value in intervention.state_dict().items()}
        tensors.update({f"model.{n}": p.detach().contiguous().cpu() for n, p in model.base_model().named_parameters()
                        if p.requires_grad})
        save_file(tensors, str(Path(directory) / WEIGHTS_FILE))

    def load(self, base_model, directory, options, state):
        from safetensors.torch import load_file

        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise MethodConfigError(f"{path}: missing; this directory holds no weights saved by method={self.name}")
        model = self.apply(base_model, state, options)
        tensors = load_file(str(path))
        for key, intervention in model.reft.interventions.items():
            prefix = f"interventions.{key}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not state:
                raise MethodConfigError(f"{path}: no weights for intervention {key} (saved with other layers, rank or positions?)")
            intervention.load_state_dict(state)
        head = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        base_model.load_state_dict(head, strict=False)
        return model

    def knob_label(self, options):
        return " ".join(f"{part}" for part in (f"r={options.r}" if options.r else "", options.positions) if part)

    def solve_budget(self, model, options, target, total_params, options_at=None):
        from harness.methods.budget import solve_by_counting

        options = self.parse_options(options)
        self.validate(model, options)
        _, stack = blocks(model)
        first, last = options.first_last
        per_layer = 1 if options.share_weights else int(first > 0) + int(last > 0)
        d, layers = int(model.config.hidden_size), len(self._layers(options, len(stack)))
        # 2*r*d + r per intervention (R, W and b): the count `tests/test_reft.py` checks on the real model
        return solve_by_counting(self.name, "r", lambda r: layers * per_layer * (2 * r * d + r), target, total_params)


@register("loreft")
class LoReFT(ReFT):
    intervention = "LoreftIntervention"


@register("direft")
class DiReFT(ReFT):
    intervention = "DireftIntervention"
