"""lm-eval's model for the lm-eval protocols (GSM8K 0-shot, IFEval): transformers' HFLM, or under
`protocol.engine=vllm` the same HFLM whose generation goes to the run's vLLM worker.

lm-eval's own `vllm` backend would load vLLM in this process, and vLLM's transformers pin is not the harness's
(harness/engine/vllm.py), so the worker the run already started decodes instead: HFLM still builds the requests,
truncates and tokenizes the contexts, cuts the outputs at the task's stop strings and scores them (and computes
log-likelihoods, which vLLM does not take over here); only `_model_generate`, its one call to `generate`, is
replaced."""

from __future__ import annotations

from harness.engine.served import ServedModel


def lm_eval_model(model, tokenizer, batch_size: int, max_length: int):
    """An lm-eval LM over `model`: HFLM, or HFLM with vLLM's decoding for a `ServedModel`."""
    from lm_eval.models.huggingface import HFLM

    if not isinstance(model, ServedModel):
        return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                    max_length=max_length)

    class ServedLM(HFLM):
        """HFLM generating through vLLM: every request of a `generate_until` call in one vLLM call (its continuous
        batching schedules them), log-likelihoods on the HF model of the same weights."""

        def __init__(self, served: ServedModel, **options):
            super().__init__(**options)
            self.served = served

        def generate_until(self, requests, disable_tqdm: bool = False):
            per_call, self.batch_size_per_gpu = self.batch_size_per_gpu, max(1, len(requests))
            try:
                return super().generate_until(requests, disable_tqdm)
            finally:
                self.batch_size_per_gpu = per_call

        def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
            import torch

            mask = generation_kwargs.get("attention_mask")
            rows = [ids[m.bool()].tolist() if m is not None else ids.tolist()
                    for ids, m in zip(context, mask if mask is not None else [None] * len(context))]
            temperature = float(generation_kwargs.get("temperature") or 0.0)
            sampled = bool(generation_kwargs.get("do_sample")) and temperature > 0.0
            # HFLM names no EOS: generate stops at the model's generation_config's (a list for some models)
            eos = self.served.hf_generation().eos_token_id
            params = self.served.params(max_length - context.shape[1], stop, temperature if sampled else 0.0,
                                        generation_kwargs.get("top_p"), eos_token_ids=eos,
                                        **({"seed": 0} if sampled else {}))
            outputs = self.served.engine.generate(rows, params, self.served.adapter)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
            width = context.shape[1] + max((len(out[0]) for out in outputs), default=0)
            full = [ids + out[0] + [pad] * (width - len(ids) - len(out[0]))
                    for ids, out in zip(context.tolist(), outputs)]
            return torch.tensor(full, dtype=context.dtype, device=context.device)

    return ServedLM(model, pretrained=model.hf_model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                    max_length=max_length)
