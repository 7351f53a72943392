"""Model loading: the packaged SmolLM2 GGUF, random configs, and a fast, clear failure offline."""

import subprocess
import sys
import time

import pytest

from harness.config import compose
from harness.models import ModelConfigError, load, load_tokenizer
from harness.offline import HubUnavailableError


def test_hub_id_fails_fast_offline():
    cfg = compose(["model=llama2-7b"])
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"meta-llama/Llama-2-7b-hf.*model.source=local model.path="):
        load(cfg.model)
    assert time.perf_counter() - start < 30


def test_hub_id_fails_fast_without_offline_flag_when_unreachable():
    # No HF_HUB_OFFLINE: the probe itself must give up quickly on this network-less machine.
    code = ("from harness.offline import ensure_hub_available\n"
            "try:\n    ensure_hub_available('meta-llama/Llama-2-7b-hf')\n"
            "except Exception as e:\n    print(type(e).__name__)\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.endswith("_OFFLINE")}
    env["HF_HUB_ETAG_TIMEOUT"] = "3"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stdout
    if "HubUnavailableError" not in out:
        pytest.skip("the hub is reachable from this machine")
    assert time.perf_counter() - start < 30


def test_local_source_must_be_a_directory(tmp_path):
    cfg = compose(["model=llama2-7b", "model.source=local", f"model.path={tmp_path}/missing"])
    with pytest.raises(ModelConfigError, match="is not a directory"):
        load(cfg.model)


def test_smollm2_package_loads_from_the_dequantized_cache(capsys):
    cfg = compose(["model=smollm2-135m"])
    tokenizer = load_tokenizer(cfg.model)
    model, _ = load(cfg.model)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    capsys.readouterr()
    load(cfg.model)
    assert "dequantizing" not in capsys.readouterr().out  # the cached copy, not a new dequantization


def test_local_directory_loads_the_saved_model(tiny_model, tokenizer, tmp_path, inputs):
    import torch

    tiny_model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    cfg = compose(["model=llama2-7b", "model.source=local", f"model.path={tmp_path / 'm'}", "model.dtype=float32"])
    model, tok = load(cfg.model)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, tiny_model(**inputs).logits)
    assert tok("hello").input_ids == tokenizer("hello").input_ids


def test_a_random_model_smaller_than_its_tokenizer_is_refused(tokenizer):
    from harness.models import load_model

    cfg = compose(["model=tiny-llama", "+model.config.vocab_size=1000"])
    with pytest.raises(ModelConfigError, match=r"vocab_size=1000 is smaller than the tokenizer's 49152"):
        load_model(cfg.model, tokenizer)
