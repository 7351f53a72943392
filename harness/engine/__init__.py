"""The engine a protocol generates with (`protocol.engine`): `hf`, transformers' `generate` in static batches in
the run's own process, or `vllm`, vLLM's continuous batching and paged KV cache in a worker of its own
environment (harness/engine/vllm.py). Only the decoding loop changes: prompts, stop strings, answer extraction
and scoring are the protocol's either way, and under vLLM the first `meta.vllm.agreement_records` records of
every set are decoded by HF as well and their answers compared (`eval.engine.agreement` in the result; a table
marks a run below `meta.vllm.agreement_threshold`).

A protocol opts in by its scorer (`Scorer.engines`): greedy decoding and sampling do, and lm-eval's generative
tasks (GSM8K, IFEval: HFLM's requests, vLLM's decoding, harness/engine/served_lm.py); beam search (commonsense's
4 beams: vLLM's was 33x slower here and gave other answers) and log-likelihood scoring stay on HF."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field

from harness.errors import ConfigError

ENGINES = ("hf", "vllm")


def name_of(protocol) -> str:
    return str(protocol.get("engine") or "hf")


def check(cfg, scorer) -> None:
    """Raises for an engine the protocol cannot use, or vLLM without its environment: before any training."""
    name = name_of(cfg.protocol)
    if name not in ENGINES:
        raise ConfigError(f"protocol.engine={name!r}: use one of {', '.join(ENGINES)}")
    if name == "hf":
        return
    if "vllm" not in scorer.engines:
        raise ConfigError(f"protocol.engine=vllm: protocol {cfg.protocol.name} does not generate through "
                          f"greedy decoding, sampling or lm-eval's generate_until (beam search and "
                          f"log-likelihood scoring stay on HF)", "use protocol.engine=hf for it")
    from harness import distributed

    if distributed.launched() or distributed.active():  # several processes: refused before the training
        raise ConfigError("protocol.engine=vllm scores on one process (vLLM batches on its own)",
                          "train with protocol.engine=hf, then `python -m harness.evaluate <run id> "
                          "protocol.engine=vllm` on one process")
    if (cfg.get("selection") or {}).get("every") == "epoch":
        raise ConfigError("protocol.engine=vllm with selection=best_epoch: each epoch is scored through HF during "
                          "training, so the reported epoch's answers would not be the engine's",
                          "choose selection=last or val_loss")
    from harness.engine.vllm import worker_python

    worker_python(cfg.meta.get("vllm"))


@dataclass
class Serving:
    """The model a scorer generates with, and what the result records of the engine."""
    model: object
    record: dict = field(default_factory=dict)
    compare: object = None   # (scorer, test_sets, predictions, protocol, task) -> agreement; None under HF


@contextlib.contextmanager
def serving(cfg, adapted, eval_model, merged: bool, processor):
    """The model to score with under the protocol's engine: `eval_model` itself under HF; under vLLM, a
    `ServedModel` whose worker serves the same weights (its LoRA adapter, or the weights as evaluated), stopped
    and its folder removed on the way out."""
    if name_of(cfg.protocol) == "hf":
        import transformers

        yield Serving(eval_model, {"name": "hf", "version": transformers.__version__})
        return
    from harness.engine import agreement

    settings = cfg.meta.get("vllm") or {}
    records, threshold = int(settings.get("agreement_records", 20)), float(settings.get("agreement_threshold", 0.9))
    sampled = float(cfg.protocol.get("temperature") or 0.0) > 0.0

    def compare(scorer, test_sets, predictions, protocol, task):
        if sampled or records <= 0:
            return {"compared": False, "why": "sampled decoding: vLLM's random stream is not HF's" if sampled
                    else "meta.vllm.agreement_records=0"}
        return agreement.compare(scorer, eval_model, processor, test_sets, predictions, protocol, task,
                                 records, threshold)

    rank_of = None if merged else (lambda folder: adapted.method.served_adapter(adapted, processor, folder))
    with served_by_vllm(eval_model, processor, settings, int(cfg.seed), rank_of) as (model, record):
        record["served"] = "merged weights" if merged else record["served"]
        yield Serving(model, record, compare)


@contextlib.contextmanager
def served_by_vllm(model, tokenizer, settings, seed: int = 0, write_adapter=None):
    """(a `ServedModel` generating as `model` does, through a vLLM worker; the engine's record). `write_adapter`:
    (folder -> LoRA rank or None) writes the base weights and a LoRA adapter vLLM serves; else, or where it
    writes none, `model`'s weights are written as they are (they must be plain: no adapter module in them)."""
    from harness.engine.served import ServedModel
    from harness.engine.vllm import EngineError, VllmEngine, weights_folder, write_weights

    folder = weights_folder(settings)
    try:
        rank = write_adapter(folder) if write_adapter else None
        if rank is None:
            if not _plain_weights(model):
                raise EngineError("protocol.engine=vllm: the model holds adapter modules that neither merged into "
                                  "the weights nor wrote a LoRA adapter vLLM loads",
                                  "set protocol.merge_before_eval=true")
            write_weights(model, tokenizer, folder)
        # a worker that fails to start stops itself and removes the folder (VllmEngine)
        context = _max_model_len(model, settings)
        engine = VllmEngine(settings, folder, {"path": str(folder / "adapter"), "rank": rank} if rank else None,
                            str(model.dtype).removeprefix("torch."), context, seed,
                            next(model.parameters()).device.type == "cuda")
    except BaseException:
        if not os.environ.get("HARNESS_DEBUG"):  # it keeps the worker's log for a look
            shutil.rmtree(folder.parent, ignore_errors=True)
        raise
    try:
        yield ServedModel(engine, tokenizer, model), {"name": "vllm", "version": engine.version, "start_seconds":
                                               round(engine.start_seconds, 1),
                                               "served": f"LoRA adapter, rank {rank}" if rank else "the weights",
                                               "max_model_len": context}  # prompt + output: longer rows stop there
    except BaseException:
        engine.close(wait_s=5)  # an error or an interrupt: what the worker is generating is not waited for
        raise
    engine.close()


def _plain_weights(model) -> bool:
    """A transformers model that `save_pretrained` writes as the architecture vLLM knows: no module of an
    adapter left in it (peft's, or a method's of this harness: what a merge removes)."""
    foreign = ("peft.", "harness.", "pyreft.", "pyvene.")
    return hasattr(model, "save_pretrained") and not any(type(m).__module__.startswith(foreign)
                                                         for m in model.modules())


def _max_model_len(model, settings) -> int:
    """vLLM's context: `meta.vllm.max_model_len`, at most the model's positions."""
    limit = int(settings.get("max_model_len") or 4096)
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(limit, int(positions)) if positions else limit
