"""The vLLM side of `protocol.engine=vllm`: a process of vLLM's own environment (`make setup-vllm`) that serves one
model and answers generation requests, one JSON object a line on stdin / stdout.

It imports vLLM and the standard library only: vLLM pins a transformers older than the harness's, so the harness
(harness/engine/vllm.py) starts it with the other environment's Python and this file's path. Token ids travel
both ways: the harness tokenizes the prompts and decodes the outputs with the run's own tokenizer, so prompts and
texts are exactly what the HF path gives and only the decoding loop differs.

Requests: {"op": "load", "model": dir, "dtype", "max_model_len", "seed", "enforce_eager",
"gpu_memory_utilization", "kv_cache_memory_bytes", "lora": {"path", "rank"} | null} -> {"ok": true, "version": vllm's};
{"op": "generate", "prompts": [[ids]], "params": SamplingParams' fields, "adapter": false for
the base weights alone} -> {"ok": true, "outputs": [[[ids] per
sequence] per prompt]}; {"op": "beam_search", "prompts", "params": BeamSearchParams' fields} -> the same with
the best beam alone; {"op": "close"}. A failure answers {"ok": false, "error": its last line}.
"""

import json
import os
import sys
import traceback

# Run as a script, this file's folder leads sys.path, and the harness's own harness/engine/vllm.py beside it would
# shadow the vllm package (and vLLM's spawned engine process inherits sys.path): drop it before any import.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]


def _protocol_stream():
    """Stdout for the replies only: vLLM and its libraries print to fd 1, which now goes to stderr."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return reply


def max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts (its LoRAConfig's MaxLoRARanks) that holds `rank`."""
    import typing

    from vllm.config.lora import MaxLoRARanks

    allowed = sorted(typing.get_args(MaxLoRARanks))
    fitting = [r for r in allowed if r >= rank]
    if not fitting:
        raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {allowed[-1]}")
    return fitting[0]


class Served:
    def __init__(self, request: dict):
        from vllm import LLM

        lora = request.get("lora")
        options = dict(model=request["model"], tokenizer=request["model"], dtype=request["dtype"],
                       max_model_len=int(request["max_model_len"]), seed=int(request.get("seed", 0)),
                       enforce_eager=bool(request.get("enforce_eager", True)),
                       generation_config="vllm")  # SamplingParams alone decide, not the folder's generation_config
        if request.get("gpu_memory_utilization"):
            options["gpu_memory_utilization"] = float(request["gpu_memory_utilization"])
        if request.get("kv_cache_memory_bytes"):
            options["kv_cache_memory_bytes"] = int(request["kv_cache_memory_bytes"])
        if lora:
            options.update(enable_lora=True, max_loras=1, max_lora_rank=max_lora_rank(int(lora["rank"])))
        self.llm = LLM(**options)
        self.lora = lora

    def _adapter(self, request: dict):
        """The served LoRA adapter, unless the request asks for the base weights alone ("adapter": false)."""
        from vllm.lora.request import LoRARequest

        use = self.lora and request.get("adapter", True)
        return LoRARequest("adapter", 1, self.lora["path"]) if use else None

    def generate(self, request: dict) -> list:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(**request["params"])
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in request["prompts"]]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._adapter(request))
        return [[list(sequence.token_ids) for sequence in output.outputs] for output in outputs]


    def beam_search(self, request: dict) -> list:
        """vLLM's `LLM.beam_search` (BeamSearchParams: width, max tokens, length penalty): the best beam's new
        token ids per prompt. Measured against HF's beam search (experiments/eval_throughput.py --vllm), not used
        by a protocol."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import BeamSearchParams

        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in request["prompts"]]
        outputs = self.llm.beam_search(prompts, BeamSearchParams(**request["params"]),
                                       lora_request=self._adapter(request))
        return [[list(output.sequences[0].tokens[len(ids):])] for ids, output in zip(request["prompts"], outputs)]


def main() -> int:
    reply = _protocol_stream()
    served = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "close":
                break
            if request["op"] == "load":
                import vllm

                served = Served(request)
                answer = {"ok": True, "version": vllm.__version__}
            elif request["op"] == "generate":
                answer = {"ok": True, "outputs": served.generate(request)}
            elif request["op"] == "beam_search":
                answer = {"ok": True, "outputs": served.beam_search(request)}
            else:
                answer = {"ok": False, "error": f"unknown op {request['op']!r}"}
        except Exception as error:  # the harness reports it in one line and stops the worker
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"}
        reply.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
