"""End to end through the command line on a tiny model: a result file, reuse, and a table."""

import json
import os
import subprocess
import sys

import pytest

from harness.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

SMALL = ["model=tiny-llama", "method.r=4", "task.train_subset=24", "task.val_set_size=8", "task.test_subset=3",
         "training.micro_batch_size=8", "training.max_steps=2", "training.warmup_steps=1", "protocol.max_new_tokens=6",
         "meta.run.progress=false"]


def cli(module, *args, results):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    hydra_dirs = [f"hydra.run.dir={results / 'hydra'}", f"hydra.sweep.dir={results / 'multirun'}"] if module == "harness.run" else []
    proc = subprocess.run([sys.executable, "-m", module, *args, f"meta.run.results_dir={results}", *hydra_dirs],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def cli_main(cli_in_process, module, *args, results):
    """`cli`'s command line through the module's main() in this process (Hydra parses the same argv): its stdout;
    exit status 0. A real process's boundary (interpreter start, exit status) is checked by the first commands of
    the single-run and reproduce tests; the others check what a run writes, and start no torch import of their own."""
    import importlib

    hydra_dirs = [f"hydra.run.dir={results / 'hydra'}", f"hydra.sweep.dir={results / 'multirun'}"] if module == "harness.run" else []
    main = importlib.import_module(module).main
    status, out, err = cli_in_process(main, [*args, f"meta.run.results_dir={results}", *hydra_dirs])
    assert status == 0, out[-3000:] + err[-3000:]
    return out


def test_single_run_writes_a_complete_result_and_is_reused(tmp_path, cli_in_process):
    out = cli("harness.run", "method=milora", *SMALL, results=tmp_path)
    assert "profile=mini chosen automatically" in out
    files = list((tmp_path / "runs").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("commonsense-tiny-llama-milora-")
    result = json.loads(files[0].read_text())
    assert set(result["eval"]["metrics"]) == {"boolq", "piqa", "ARC-Easy", "ARC-Challenge", "openbookqa"}
    assert all(m["n"] == 3 for m in result["eval"]["metrics"].values())
    assert result["params"]["trainable"] > 0 and result["params"]["total"] > result["params"]["trainable"]
    assert result["train"]["steps"] == 2 and result["eval"]["merged"] is True
    assert result["run"]["config"]["seed"] == 42 and result["run"]["config"]["method"]["name"] == "milora"
    for key in ("versions", "git", "environment"):
        assert result["run"][key]
    assert result["timing"] and result["memory"]
    assert "torch" in result["run"]["versions"] and "peft" in result["run"]["versions"]
    assert result["memory"]["cpu_peak_rss_mb"] > 0 and len(result["train"]["loss_curve"]) == 2
    assert result["status"] == "finished"
    lock = result["run"]["environment"]["lock"]  # the requirements lock this environment should match, and whether it does
    assert lock["file"] == "requirements/lock-cpu.txt" and len(lock["sha256"]) == 64 and lock["matches"] in (True, False)
    assert {i["role"] for i in result["run"]["inputs"]} >= {"train/boolq", "test/boolq", "tokenizer"}
    adapter = tmp_path / "adapters" / result["run"]["id"]
    assert (adapter / "adapter_model.safetensors").is_file()
    predictions = (tmp_path / "runs" / f"{result['run']['id']}.predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 15
    again = cli_main(cli_in_process, "harness.run", "method=milora", *SMALL, results=tmp_path)
    assert "result exists, skipping" in again
    other_seed = cli_main(cli_in_process, "harness.run", "method=milora", "seed=7", *SMALL, results=tmp_path)
    assert "skipping" not in other_seed and len(list((tmp_path / "runs").glob("*.json"))) == 2


def test_reproduce_runs_the_grid_and_writes_the_table(tmp_path, cli_in_process):
    out = cli("harness.reproduce", "experiment=table1", "profile=mini", *SMALL, results=tmp_path)
    assert "[5/5]" in out
    md = (tmp_path / "tables" / "table1.md").read_text()
    for method in ("LoRA", "DoRA", "PiSSA", "MiLoRA", "Neat"):
        assert f"| {method} " in md
    assert "paper (LLaMA2-7B)" in md and "Profile: CPU mini profile" in md and "paper_gen" in md
    assert (tmp_path / "tables" / "table1.csv").is_file() and (tmp_path / "tables" / "table1.tex").is_file()
    again = cli_main(cli_in_process, "harness.reproduce", "experiment=table1", "profile=mini", *SMALL, results=tmp_path)
    assert again.count("result exists, skipping") == 5


def test_multirun_sweeps_write_one_result_per_point(tmp_path, cli_in_process):
    cli_main(cli_in_process, "harness.run", "--multirun", "method=lora,dora", *SMALL, results=tmp_path)
    methods = sorted(json.loads(p.read_text())["run"]["method"] for p in (tmp_path / "runs").glob("*.json"))
    assert methods == ["dora", "lora"]


def test_rosa_run_counts_its_sparse_part_and_saves_masks(tmp_path, cli_in_process):
    cli_main(cli_in_process, "harness.run", "method=rosa", "method.density=0.01", "method.mask_warmup_steps=2",
             "method.mask_grad_batches=2", *SMALL, results=tmp_path)
    result = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    # tiny-llama: LoRA r=4 on q,k,v,up,down of 2 layers, plus floor(0.01 * numel) entries per matrix
    lora = 2 * 4 * ((64 + 64) + 2 * (64 + 32) + 2 * (64 + 128))
    sparse = 2 * (40 + 20 + 20 + 81 + 81)
    assert result["params"]["trainable"] == lora + sparse
    assert (tmp_path / "adapters" / result["run"]["id"] / "rosa_sparse.safetensors").is_file()


def test_gsm8k_run_with_greedy_protocol(tmp_path, cli_in_process):
    small = [o for o in SMALL if not o.startswith(("protocol.", "task.val_set_size"))]
    cli_main(cli_in_process, "harness.run", "task=gsm8k", "protocol=math_greedy", "method=lora",
             "protocol.max_new_tokens=8", *small, results=tmp_path)
    result = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert result["run"]["task"] == "math" and result["run"]["protocol"] == "math_greedy"
    assert result["eval"]["metrics"]["gsm8k"]["n"] == 3


def test_gsm8k_run_in_rosa_format_scored_by_lmeval(tmp_path, cli_in_process):
    small = [o for o in SMALL if not o.startswith(("protocol.", "task.val_set_size"))]
    cli_main(cli_in_process, "harness.run", "task=gsm8k", "task.train_format=rosa", "protocol=lmeval",
             "protocol.max_gen_toks=8", "method=lora", *small, results=tmp_path)
    result = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    gsm8k = result["eval"]["metrics"]["gsm8k"]
    assert result["run"]["protocol"] == "lmeval" and gsm8k["n"] == 3 and gsm8k["num_fewshot"] == 0
    assert gsm8k["metric"] == "exact_match,strict-match" and "lm_eval" in result["run"]["versions"]


def test_budget_run_records_target_and_actual(tmp_path, cli_in_process):
    cli_main(cli_in_process, "harness.run", "method=lora", "budget.fraction=0.005", *SMALL, results=tmp_path)
    result = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    budget = result["params"]["budget"]
    assert budget["knob"] == "r" and result["run"]["config"]["method"]["r"] == budget["value"]
    assert result["params"]["trainable"] == budget["predicted"]
    assert abs(budget["predicted"] - budget["target"]) / budget["target"] < 0.2
