"""What a scorer is handed in place of the model under `protocol.engine=vllm`: `harness.generation.generate` and
`sample` hand their prompts to it, and it answers as they would (the same prompt tokens, the same decoding of
the output tokens by the run's tokenizer), from vLLM's continuous batching instead of static HF batches."""

from __future__ import annotations

from typing import Sequence


class ServedModel:
    """`hf_model`: the HF model of the same weights, for what the engine does not do (lm-eval's log-likelihoods).
    `adapter=False`: the base weights of a worker that serves a LoRA adapter (vLLM serves both from one worker),
    as the model before its adapter."""

    def __init__(self, engine, tokenizer, hf_model=None, adapter: bool = True):
        self.engine, self.tokenizer, self.hf_model, self.adapter = engine, tokenizer, hf_model, adapter

    def base(self) -> "ServedModel":
        return ServedModel(self.engine, self.tokenizer, self.hf_model, adapter=False)

    def _prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        return [list(self.tokenizer(p)["input_ids"]) for p in prompts]  # as HF's batches tokenize each prompt

    def hf_generation(self, **explicit):
        """The GenerationConfig HF generate decodes with for a call that sets `explicit`: what the call leaves unset
        comes from the model's own generation_config, then transformers' global defaults (top-k 50 when it
        samples), as `generate` fills it in (its `_prepare_generation_config`, transformers 5.24)."""
        from transformers import GenerationConfig

        config = GenerationConfig(**explicit)
        if self.hf_model is None:
            return config
        return self.hf_model._prepare_generation_config(config)[0]

    def params(self, max_new_tokens: int, stop_strings: Sequence[str], temperature: float = 0.0,
               top_p: float | None = None, eos_token_ids=None, **extra) -> dict:
        """vLLM's SamplingParams for what HF generate decodes with (`hf_generation`): the tokenizer's EOS (or
        `eos_token_ids`) ends a row, a stop string ends it too and stays in the text (callers cut at it), the
        model's repetition penalty applies, and sampling keeps HF's top-k and min-p beside the call's
        temperature / top-p. The worker loads no generation_config of its own."""
        sampled = float(temperature) > 0.0
        hf = self.hf_generation(do_sample=sampled, temperature=float(temperature) if sampled else None,
                                top_p=float(top_p) if sampled and top_p is not None else None)
        eos = self.tokenizer.eos_token_id if eos_token_ids is None else eos_token_ids
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        params = {"max_tokens": int(max_new_tokens), "stop": list(stop_strings) or None,
                  "include_stop_str_in_output": True, "stop_token_ids": [int(e) for e in eos] or None,
                  "temperature": float(temperature) if sampled else 0.0,
                  "repetition_penalty": float(hf.repetition_penalty or 1.0), **extra}
        if sampled:
            params.update(top_p=float(hf.top_p if hf.top_p is not None else 1.0), top_k=int(hf.top_k or 0),
                          min_p=float(hf.min_p or 0.0))
        return params

    def generate(self, prompts: Sequence[str], num_beams: int, max_new_tokens: int,
                 stop_strings: Sequence[str] = ()) -> list[str]:
        """Greedy (or beam search): decoded prompt + continuation for every prompt, as
        `harness.generation.generate` returns."""
        ids = self._prompt_ids(prompts)
        if num_beams > 1:
            # vLLM's LLM.beam_search: measured against HF's (experiments/eval_throughput.py --vllm); no protocol
            # uses it (harness.engine.check keeps commonsense's 4 beams on HF). No stop strings there.
            if stop_strings:
                raise ValueError("vLLM's beam search takes no stop strings")
            outputs = self.engine.beam_search(ids, {"beam_width": int(num_beams), "max_tokens": int(max_new_tokens)},
                                              self.adapter)
        else:
            outputs = self.engine.generate(ids, self.params(max_new_tokens, stop_strings), self.adapter)
        return [self.tokenizer.decode(p + out[0], skip_special_tokens=True) for p, out in zip(ids, outputs)]

    def sample(self, prompts: Sequence[str], num_samples: int, temperature: float, top_p: float,
               max_new_tokens: int, seed: int, stop_strings: Sequence[str] = ()) -> list[list[str]]:
        """`num_samples` decoded continuations per prompt, as `harness.generation.sample` returns (temperature 0:
        one greedy continuation, repeated); seeded by `seed` in vLLM's own random stream."""
        greedy = float(temperature) == 0.0
        extra = {} if greedy else {"n": int(num_samples), "seed": int(seed)}
        outputs = self.engine.generate(self._prompt_ids(prompts), self.params(max_new_tokens, stop_strings,
                                                                              temperature, top_p, **extra),
                                       self.adapter)
        texts = [[self.tokenizer.decode(seq, skip_special_tokens=True) for seq in out] for out in outputs]
        return [t * int(num_samples) if greedy else t for t in texts]
