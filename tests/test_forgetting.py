"""Forgetting (harness.forgetting): MiLoRA's cross-entropy against the base model's next-token distribution and
peft's gold-token loss, measured on a saved adapter without retraining, on the offline text CPython ships."""

import json
import math

import pytest
import torch

from harness import forgetting as forgetting_lib
from harness.config import compose
from harness.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny():
    cfg = compose(["model=tiny-llama"])
    tokenizer = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    return load_model(cfg.model, tokenizer), tokenizer, cfg


def test_the_offline_text_is_the_python_reference_manual_and_windows_cover_it(tiny):
    _, tokenizer, _ = tiny
    text = forgetting_lib.load_text("pydoc_topics")
    assert "lambda" in text and len(text) > 100_000
    windows = forgetting_lib.token_windows(tokenizer, text, window=64, max_tokens=1000)
    assert sum(len(w) for w in windows) == 1000 and max(len(w) for w in windows) == 64


def test_an_unchanged_model_forgets_nothing_beyond_the_entropy_of_the_base(tiny):
    model, tokenizer, _ = tiny
    windows = forgetting_lib.token_windows(tokenizer, forgetting_lib.load_text("pydoc_topics"), 32, 256)
    same = forgetting_lib.measure(model, model, windows, "cpu")
    # against itself: the cross-entropy is the base distribution's entropy, the gold losses are equal
    assert same["gold_ce"] == pytest.approx(same["base_gold_ce"])
    logits = model(input_ids=windows[0].unsqueeze(0)).logits[0, :-1]
    entropy = float(-(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1).mean())
    assert same["tokens"] == 256 - len(windows)  # the last position of each window has no next token
    assert same["forgetting_ce"] == pytest.approx(entropy, rel=0.05)
    # a moved model's cross-entropy against the base is higher: Gibbs' inequality
    moved = load_model(tiny[2].model, tokenizer)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    apart = forgetting_lib.measure(model, moved, windows, "cpu")
    assert apart["forgetting_ce"] > same["forgetting_ce"] and apart["base_gold_ce"] == pytest.approx(same["base_gold_ce"])


def test_a_forgetting_file_written_before_side_results_had_a_schema_reads_in_todays_layout(tmp_path):
    from harness.results import read_side_result, side_results

    flat = {"run_id": "math-x-lora-1", "method": "lora", "model": "x", "text": "pydoc_topics", "text_source": "pydoc",
            "window": 512, "max_tokens": 4096, "forgetting_ce": 2.5, "gold_ce": 3.0, "base_gold_ce": 2.9,
            "tokens": 4000, "seconds": 1.0, "ended_at": "2026-12-01T00:00:00+0000"}
    path = forgetting_lib.forgetting_path(tmp_path, "math-x-lora-1", "pydoc_topics")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(flat))
    record = read_side_result(path)
    assert record["kind"] == "forgetting" and record["values"]["forgetting_ce"] == 2.5
    assert record["settings"] == {"text": "pydoc_topics", "text_source": "pydoc", "window": 512, "max_tokens": 4096}
    assert list(side_results(tmp_path, "math-x-lora-1")) == ["forgetting-pydoc_topics"]
    path.write_text('{"schema": 7, "run_id": "math-x-lora-1", "kind": "forgetting"}')
    from harness.results import ResultFileError

    with pytest.raises(ResultFileError, match="side result schema 7"):
        read_side_result(path)


@pytest.mark.slow
def test_a_finished_run_is_measured_without_retraining_against_a_freshly_loaded_base(serial_tiny_table1):
    from harness.results import runs_dir

    from harness.results import is_side_file, load_results, side_results

    pissa = next(p for p in runs_dir(serial_tiny_table1).glob("*-pissa-*.json") if not is_side_file(p))
    rid = pissa.stem
    before = pissa.read_text()
    results_before = len(load_results(serial_tiny_table1))
    # the command line: Hydra's grammar; an option it does not know is one line and exit 2
    with pytest.raises(SystemExit) as exit_info:
        forgetting_lib.main([rid, "text=pydoc_topics", "tokens=300", "windows=100", f"meta.run.results_dir={serial_tiny_table1}"])
    assert exit_info.value.code == 2
    forgetting_lib.main([rid, "text=pydoc_topics", "tokens=300", "window=100", f"meta.run.results_dir={serial_tiny_table1}"])
    assert pissa.read_text() == before  # the run's result is untouched; nothing trained
    written = json.loads(forgetting_lib.forgetting_path(serial_tiny_table1, rid, "pydoc_topics").read_text())
    record = side_results(serial_tiny_table1, rid)["forgetting-pydoc_topics"]
    assert written == record and written["schema"] == 1 and written["kind"] == "forgetting"
    assert written["values"]["tokens"] == 297 and written["method"] == "pissa" and written["settings"]["window"] == 100
    assert all(math.isfinite(written["values"][k]) for k in ("forgetting_ce", "gold_ce", "base_gold_ce"))
    assert len(load_results(serial_tiny_table1)) == results_before  # a side result is not read as a run's result
    written = {**written, **written["values"]}
    # the base is loaded afresh: its loss is the untouched model's
    from harness import methods, models
    from harness.evaluate import evaluation_config, locate
    from harness.placement import decide
    from harness.recipe import seed_everything

    source, results, _ = locate(rid, str(serial_tiny_table1))
    cfg = evaluation_config(source["run"]["config"], [], results)

    def fresh_base():
        seed_everything(cfg.seed)
        return models.load(cfg.model, None, decide(cfg.model, cfg.training, False))
    base, tokenizer = fresh_base()
    windows = forgetting_lib.token_windows(tokenizer, forgetting_lib.load_text("pydoc_topics"), 100, 300)
    assert forgetting_lib.measure(base, base, windows, "cpu")["gold_ce"] == pytest.approx(written["base_gold_ce"], rel=1e-5)
    # and why it must be (peft #3419): PiSSA's initialisation rewrites the base weights, so the adapted model with
    # its adapter off is not the base model
    adapted = methods.apply(fresh_base()[0], "pissa", r=4, alpha=4, dropout=0.0,
                            target_modules=["q_proj", "v_proj"]).model
    with adapted.disable_adapter():
        adapter_off = forgetting_lib.measure(adapted, adapted, windows, "cpu")["gold_ce"]
    assert abs(adapter_off - written["base_gold_ce"]) > 1e-4
