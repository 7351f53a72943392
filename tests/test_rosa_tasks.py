"""RoSA's ViGGO and SQL columns: records in the datasets' real formats (written here: no copy is on this machine),
RoSA's prompts, the exact-match scoring of its eval scripts, a run end to end, the hub ids failing fast offline,
and the budget table putting a method's runs on three tasks in one row."""

import pandas as pd
import pytest
from written_records import SQL_HUB, SQL_ROSA, VIGGO, write_jsonl  # tests/written_records.py

from harness import benchmarks
from harness.config import compose

def test_viggo_reads_gem_records_with_rosas_prompt(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "viggo.jsonl", VIGGO)
    task = compose(["task=viggo", f"task.train_file={path}", f"task.test_file={path}"]).task
    viggo = benchmarks.get("viggo")
    train, _ = viggo.training_records(task, seed=0)
    assert len(train) == 2 and {r["response"] for r in train} == {r["meaning_representation"] for r in VIGGO}
    prompt = next(r["prompt"] for r in train if r["response"] == "request(genres[simulation])")
    assert prompt.startswith("Given a target sentence construct the underlying meaning representation")
    assert prompt.endswith("'has_mac_release', 'specifier']\n\n### Target sentence:\nWhat is your favourite "
                           "simulation game?\n\n### Meaning representation:\n")
    example = viggo.encoder(task, tokenizer)(train[0])
    supervised = [t for t, label in zip(example["input_ids"], example["labels"]) if label != -100]
    assert supervised == tokenizer(train[0]["response"])["input_ids"] + [tokenizer.eos_token_id]
    assert list(viggo.test_sets(task)) == ["viggo"]


def test_sql_reads_both_formats_and_builds_rosas_prompts(tmp_path):
    hub_style = write_jsonl(tmp_path / "hub.jsonl", SQL_HUB)
    rosa_style = write_jsonl(tmp_path / "valid.jsonl", SQL_ROSA)
    task = compose(["task=sql", f"task.train_file={hub_style}", f"task.test_file={rosa_style}"]).task
    sql = benchmarks.get("sql")
    (train,), _ = sql.training_records(task, seed=0)
    assert train["prompt"] == ("Write a SQL query to answer the question based on the table schema.\n\n context: "
                               "CREATE TABLE table_name_39 (result VARCHAR, opponent VARCHAR)\n\n question: What is "
                               "the result when the opponent is blackburn rovers?\n\n answer: ")
    (record,) = sql.test_sets(task)["sql"]
    assert record["answer"].startswith("SELECT route_via") and record["context"].startswith("CREATE TABLE")
    scorer = sql.scorer("rosa_exact")
    assert scorer.prompt_of(record, task).endswith("Parasuram Express?\n\n answer: \n\n answer: ")  # sql_eval.py
    assert scorer.prompt_of(record, {**task, "eval_prompt": "train"}).endswith("Express?\n\n answer: ")
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"messages": [{"role": "user", "content": "no context here"}]}])
    with pytest.raises(benchmarks.base.DataError, match="bad.jsonl: a record's `messages` is not RoSA's SQL format"):
        sql.test_sets({**task, "test_file": str(bad)})


def test_the_answers_are_found_and_matched_as_rosas_eval_scripts_do():
    viggo = benchmarks.get("viggo").scorer("rosa_exact")
    decoded = "... ### Meaning representation:\n request(genres[simulation]) \nconfirm(name[x])"
    assert viggo.answer(decoded) == "request(genres[simulation])"  # the first line, stripped
    sql = benchmarks.get("sql").scorer("rosa_exact")
    assert sql.answer("question: ...\n\n answer: SELECT a FROM t WHERE b = 'c'\nSELECT more") == "SELECT a FROM t WHERE b = 'c'"
    assert sql.answer("select a from t") == ""  # case-sensitive, as sql_eval.py's `SELECT (.*)`


def test_the_hub_ids_load_unchanged_and_fail_fast_offline():
    from harness.offline import HubUnavailableError
    from harness.provenance import Hub

    for name, repo in (("viggo", "GEM/viggo"), ("sql", "b-mc2/sql-create-context")):
        task = compose([f"task={name}"]).task
        sources = benchmarks.get(name).data_sources(task)
        assert all(isinstance(s, Hub) and s.repo == repo for s in sources)
        with pytest.raises(HubUnavailableError, match=f"{repo}.*task.test_file"):  # (names the key to point)
            benchmarks.get(name).test_sets(task)


@pytest.mark.slow
def test_a_viggo_run_trains_and_scores_by_exact_match(tmp_path):
    from harness.run import run_one

    path = write_jsonl(tmp_path / "viggo.jsonl", VIGGO * 4)
    record = run_one(compose(["model=tiny-llama", "task=viggo", "protocol=rosa_exact", "method=lora", "method.r=2",
                              f"task.train_file={path}", f"task.test_file={path}", "task.test_subset=2",
                              "training.micro_batch_size=4", "training.batch_size=4", "training.max_steps=1",
                              "training.warmup_steps=0", "protocol.max_new_tokens=4", "meta.run.progress=false",
                              f"meta.run.results_dir={tmp_path}"]))
    assert record["status"] == "finished"
    metrics = record["eval"]["metrics"]["viggo"]
    assert metrics["metric"] == "exact_match" and metrics["n"] == 2 and metrics["accuracy"] == 0.0


def test_the_budget_table_puts_a_methods_runs_on_three_tasks_in_one_row():
    from harness.tables import budget

    def run(run_id, dataset, accuracy, method="lora", knob="r=16", trainable=41_000_000, status="finished"):
        return {"run_id": run_id, "status": status, "model": "llama2-7b", "method": method, "label": "LoRA",
                "knob": knob, "rank": 16, "dataset": dataset, "accuracy": accuracy, "trainable": trainable,
                "total": 6_738_415_616, "trainable_percent": 0.61, "budget_fraction": trainable / 6_738_415_616,
                "step_s": 1.0}
    df = pd.DataFrame([run("a", "gsm8k", 28.0), run("b", "viggo", 90.0), run("c", "sql", 88.0),
                       run("d", "gsm8k", 30.0, knob="r=32", trainable=82_000_000),
                       run("e", None, None, knob="r=32", trainable=82_000_000, status="failed")])
    paper = {"columns": ["gsm8k", "viggo", "sql"],
             "rows": [{"budget": "~40M", "method": "lora", "label": "LoRA r=16", "params": 41.1e6, "scores": [28.4, 90.5, 88.7]}]}
    table = budget.build(df, ["gsm8k", "viggo", "sql"], paper, [0.0059, 0.0119], ["~40M", "~80M"])
    first, second = table.iloc[0], table.iloc[1]
    assert (first.method, first.gsm8k, first.viggo, first.sql) == ("LoRA r=16", 28.0, 90.0, 88.0)
    assert first["paper viggo"] == 90.5 and first["Δ sql"] == pytest.approx(-0.7)
    assert (second.method, second.gsm8k, second.viggo) == ("LoRA r=32", 30.0, "failed")


def test_rosas_own_sql_files_are_read_at_their_commit_and_fail_fast_offline(tmp_path, monkeypatch):
    """task.source=rosa (the paper profile): RoSA's train.jsonl / valid.jsonl at @2f44817, by URL where the network
    allows; offline and uncached the run stops at once naming the URL and the key of a local copy."""
    from harness.grid import experiment_cells
    from harness.provenance import PinnedUrl

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    task = compose(["task=sql", "task.source=rosa"]).task
    sql = benchmarks.get("sql")
    sources = sql.data_sources(task)
    assert all(isinstance(s, PinnedUrl) for s in sources)
    assert [s.url.rsplit("/", 1)[-1] for s in sources] == ["train.jsonl", "valid.jsonl"]
    assert all("IST-DASLab/RoSA/2f44817d553eeb0a1e2a319bd8c30d0a42561d45/scripts/train/data/sql/" in s.url
               for s in sources)
    with pytest.raises(benchmarks.base.DataError, match=r"valid\.jsonl is not cached and this run is offline.*task\.test_file="):
        sql.test_sets(task)
    cells = [c for c in experiment_cells(["experiment=sweep_budget", "profile=paper", "meta.seeds=null"])[1]
             if c.task.name == "sql"]
    assert cells and all(c.task.source == "rosa" and sql.data_note(c.task) is None for c in cells)


def test_no_sql_training_record_shares_a_test_question(tmp_path, capsys):
    test = write_jsonl(tmp_path / "valid.jsonl", SQL_ROSA)
    leaked = {"question": "  what is the ROUTE/via when the train name is   Parasuram Express?", "context":
              "CREATE TABLE t (route_via VARCHAR)", "answer": "SELECT route_via FROM t"}
    train = write_jsonl(tmp_path / "train.jsonl", [*SQL_HUB, leaked])
    task = compose(["task=sql", f"task.train_file={train}", f"task.test_file={test}"]).task
    records, _ = benchmarks.get("sql").training_records(task, seed=0)
    assert len(records) == len(SQL_HUB) and not any("Parasuram" in r["prompt"] for r in records)
    assert "dropped 1 of 2 training records whose question is a test record's" in capsys.readouterr().out


def test_data_that_is_not_rosas_is_labelled_in_the_caption(tmp_path):
    import subprocess

    from harness.benchmarks.sql.data import git_blob_sha1
    from harness.results import frame
    from harness.tables.common import data_notes

    copy = write_jsonl(tmp_path / "valid.jsonl", SQL_ROSA)
    assert git_blob_sha1(copy) == subprocess.run(["git", "hash-object", str(copy)], capture_output=True, text=True,
                                                 check=True).stdout.strip()
    sql = benchmarks.get("sql")
    hub = compose(["task=sql"]).task
    assert "not RoSA's data (b-mc2/sql-create-context, 1000 records held out" in sql.data_note(hub)
    other = compose(["task=sql", "task.source=rosa", f"task.test_file={copy}"]).task  # not RoSA's 1,000 records
    assert "are not RoSA's train.jsonl / valid.jsonl" in sql.data_note(other)
    from harness.run import finished_run_info

    run = {**finished_run_info(compose(["task=sql", "protocol=rosa_exact"]), compose(["task=sql"]), "sql-x", None)}
    result = {"schema": 2, "status": "finished", "run": run, "eval": {"metrics": {"sql": {"accuracy": 1.0, "n": 2}}}}
    assert data_notes(frame([result])).startswith("SQL: not RoSA's data")  # recorded by the run, read by the table
