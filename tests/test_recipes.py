"""Every paper-profile cell names where its recipe comes from, and the recipes' fields are the official code's
(SPEC sections 2-3, the fidelity audit): lr, batch, epochs, schedule, warm-up, cutoff, alpha, dropout, targets,
selection, precision."""

import pytest

from harness.config import CONFIG_DIR

from harness.grid import experiment_cells

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def paper_cells(experiment):
    # one seed: the recipes are the same for every seed (seeds are tested in test_configs.py)
    return experiment_cells([f"experiment={experiment}", "profile=paper", "meta.seeds=null"])[1]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_paper_cell_names_its_recipe_source(experiment):
    for cfg in paper_cells(experiment):
        source = str(cfg.training.get("source") or "")
        official = "@" in source or "MetaMath" in source  # repository file @commit (MetaMath: no pinned commit)
        reasoned = source.startswith("harness choice: ") and len(source) > len("harness choice: ") + 10
        assert official or reasoned, f"{experiment} {cfg.method.name}: training.source={source!r}"


def fields(cfg):
    t, m = cfg.training, cfg.method
    return {"lr": t.lr, "batch": t.batch_size, "epochs": t.epochs, "schedule": t.schedule, "warmup": t.warmup_steps,
            "warmup_ratio": t.warmup_ratio, "cutoff": cfg.task.cutoff_len, "alpha": m.get("alpha"),
            "dropout": m.get("dropout"), "targets": list(m.get("target_modules") or cfg.model.target_modules),
            "select": cfg.selection.monitor == "held_out_loss",
            "eval_steps": cfg.selection.steps, "val": cfg.task.val_set_size, "precision": t.precision,
            "train_on_inputs": cfg.task.train_on_inputs}


QKVUD = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLM_ADAPTERS = {"lr": 3e-4, "batch": 16, "epochs": 3, "schedule": "linear", "warmup": 100, "cutoff": 256,
                "dropout": 0.05, "targets": QKVUD, "select": True, "eval_steps": 80, "val": 120, "precision": "auto",
                "train_on_inputs": True}


def test_table1_cells_are_llm_adapters_with_selection_and_neat_its_own():
    for cfg in paper_cells("table1"):
        f, r = fields(cfg), cfg.method.get("r")
        if cfg.method.name == "neat":  # yibozhong/peanut scripts/finetune.sh
            assert cfg.method.convention == "d_in" and r == 32 and cfg.method.scaling == 1.0
            assert {k: f[k] for k in ("lr", "batch", "epochs", "cutoff", "val", "select", "train_on_inputs")} == {
                "lr": 3e-4, "batch": 16, "epochs": 1, "cutoff": 256, "val": 0, "select": False, "train_on_inputs": False}
            continue
        expected = dict(LLM_ADAPTERS)
        if cfg.method.name == "dora":  # NVlabs/DoRA: r=16, lr 2e-4 (LLaMA-2) / 1e-4 (LLaMA-3), alpha 2r
            expected["lr"] = 2e-4 if cfg.model.name == "llama2-7b" else 1e-4
            assert r == 16
        else:
            assert r == 32
        expected["alpha"] = 2 * r if cfg.method.name in ("lora", "dora") else r  # PiSSA / MiLoRA: alpha = r
        assert {k: f[k] for k in expected} == expected, cfg.method.name


def test_table2_cells_are_milora_and_metamath_recipes():
    for cfg in paper_cells("table2"):
        f = fields(cfg)
        # (one protocol per column: the Full FT row's cited numbers are MetaMath's own, and its verdict is not judged)
        assert cfg.protocol.name == "math_milora" and cfg.model.name == "llama2-7b"
        if cfg.method.name == "full":  # MetaMath run.sh
            assert {k: f[k] for k in ("lr", "batch", "epochs", "schedule", "warmup", "warmup_ratio", "cutoff")} == {
                "lr": 2e-5, "batch": 128, "epochs": 3, "schedule": "cosine", "warmup": None, "warmup_ratio": 0.03,
                "cutoff": 512}
        else:  # sufenlp/MiLoRA scripts: r=64, alpha 2r / r, lr 3e-4, batch 16, 100 warm-up steps, linear, len 2048
            r = cfg.method.r
            assert r == 64 and f["alpha"] == (2 * r if cfg.method.name == "lora" else r)
            assert {k: f[k] for k in ("lr", "batch", "epochs", "schedule", "warmup", "cutoff", "dropout", "targets")} == {
                "lr": 3e-4, "batch": 16, "epochs": 3, "schedule": "linear", "warmup": 100, "cutoff": 2048,
                "dropout": 0.05, "targets": QKVUD}
        assert f["train_on_inputs"] is False  # MetaMath / MiLoRA train on the response


def test_sweep_cells_are_rosas_recipe():
    for cfg in paper_cells("sweep_budget"):
        f = fields(cfg)
        assert f["batch"] == 32 and f["epochs"] == 1 and f["warmup"] == 20 and f["schedule"] == "linear"
        assert f["targets"] == ALL_LINEAR and f["cutoff"] == 512
        # GSM8K by lm-eval 0-shot; ViGGO and SQL by RoSA's exact match (the same recipe for the three, as its scripts)
        protocol = {"math": "lmeval", "viggo": "rosa_exact", "sql": "rosa_exact"}[cfg.task.name]
        assert cfg.protocol.name == protocol and (protocol != "lmeval" or cfg.protocol.num_fewshot == 0)
        assert cfg.training.loss_weighting == "example"  # restarter_llama2.sh PER_DEVICE_BS 1: each example 1/32
        if cfg.method.name in ("rosa", "spa"):  # S at 2e-4, A,B at 7e-4, alpha 16
            assert f["lr"] == 2e-4 and cfg.method.alpha == 16
        if cfg.method.name == "rosa":
            assert cfg.method.lr_lowrank == 7e-4


VIT = {"oxford_pets": (5e-3, 5e-3, 8e-4), "stanford_cars": (1e-2, 1e-2, 4e-5), "cifar10": (5e-3, 5e-3, 9e-5),
       "eurosat": (5e-3, 5e-3, 3e-4), "fgvc_aircraft": (1e-2, 1e-2, 7e-5), "resisc45": (1e-2, 5e-3, 3e-4),
       "cifar100": (5e-3, 5e-3, 1e-4)}


def test_table4_cells_are_neats_vit_script():
    cells = paper_cells("table4")
    assert len(cells) == 5 * 8  # LP, LoRA, FourierFT, Neat, full FT on the eight sets
    for cfg in cells:
        t = cfg.training
        assert (t.batch_size, t.micro_batch_size, t.epochs, t.warmup_steps, t.warmup_ratio, t.precision) == (256, 64, 10, None, 0.0, "fp32")
        assert cfg.task.val_set_size == 0.1
        head, backbone, wd = VIT.get(cfg.task.dataset, VIT["cifar100"])  # DTD: CIFAR-100's (harness choice)
        assert t.weight_decay == wd
        if cfg.method.name in ("neat", "lora", "peft"):
            assert t.lr == backbone and t.module_lrs.classifier == head
        if cfg.method.name == "peft":  # FourierFT's ViT setting
            assert (cfg.method.type, cfg.method.config.n_frequency, cfg.method.config.scaling) == ("FOURIERFT", 3000, 300.0)
        if cfg.method.name == "neat":
            assert cfg.method.r == 7 and list(cfg.method.target_modules) == ["q_proj", "v_proj"]
        if cfg.method.name == "lora":  # the script's LoRA baseline
            assert (cfg.method.r, cfg.method.alpha, cfg.method.dropout) == (16, 16, 0.1)


def test_mini_profiles_keep_their_own_sizing():
    _, mini = experiment_cells(["experiment=table4", "profile=mini"])
    assert all(cfg.training.batch_size == 64 for cfg in mini)


def test_a_fractional_hold_out_is_a_share_of_the_training_records():
    from harness.benchmarks.records import subset_and_split

    train, val = subset_and_split(list(range(50)), {"val_set_size": 0.1}, seed=0)
    assert len(val) == 5 and len(train) == 45 and not set(train) & set(val)


def test_table5_cells_are_lora_gas_baselines():
    """Outsider565/LoRA-GA @89af7de reproduce/: all seven linear layers for every row, LoraConfig's default dropout
    0, AdaLoRA never reallocated with peft 0.10's N(0, 0.02) E, DoRA and AdaLoRA adapters in the base dtype, LoRA-GA
    as published (rsLoRA, gamma 16, the first 8 examples), the recipe of reproduce/conf/model/llama.yaml."""
    cells = paper_cells("table5")
    assert len(cells) == 6 * 2  # six rows, GSM8K and HumanEval
    for cfg in cells:
        f, method = fields(cfg), cfg.method
        label = method.get("label") or method.name
        assert f["targets"] == ALL_LINEAR, label
        assert (f["batch"], f["epochs"], f["schedule"], f["warmup_ratio"], f["lr"]) == (32, 1, "cosine", 0.03, 2e-5)
        assert cfg.training.loss_weighting == "example"  # micro-batch 1 on transformers 4.40.2's Trainer
        dropout = method.config.lora_dropout if method.name == "peft" else method.dropout
        assert dropout == (0.05 if method.name == "milora" else 0.0), label  # (MiLoRA's row is its own recipe)
        base_dtype = cfg.training.get("adapter_precision") == "base"
        assert base_dtype == (label in ("DoRA", "AdaLoRA")), label
        if label == "AdaLoRA":
            assert (method.update_ranks, method.e_init_std, method.config.init_r, method.config.target_r) == (
                False, 0.02, 12, 8)
        if method.name == "lora_ga":
            assert (method.r, method.alpha, method.use_rslora, method.stable_gamma, method.init_examples) == (
                8, 16, True, 16, 8)
        if label == "LoRA+":
            assert (method.r, method.alpha, method.loraplus_lr_ratio) == (8, 16, 16)


def test_milora_instruct_cells_are_the_papers_table10_insf_column():
    """MiLoRA arXiv 2406.09044v3 Table 10 (InsF): r 32, LoRA alpha 64, PiSSA / MiLoRA alpha 32, dropout 0.05, lr
    3e-4, linear, batch 16, 100 warm-up steps, 3 epochs, q,k,v,up,down."""
    cells = paper_cells("milora_instruct")
    assert sorted(cfg.method.name for cfg in cells) == ["lora", "milora", "pissa"]
    for cfg in cells:
        f = fields(cfg)
        assert cfg.method.r == 32 and f["alpha"] == (64 if cfg.method.name == "lora" else 32)
        assert {k: f[k] for k in ("lr", "batch", "epochs", "schedule", "warmup", "dropout", "targets")} == {
            "lr": 3e-4, "batch": 16, "epochs": 3, "schedule": "linear", "warmup": 100, "dropout": 0.05,
            "targets": QKVUD}


def test_neat_ablations_have_the_official_module_sets_and_depth_axis():
    """yibozhong/neat @ff91fa2 image-classification/neat.py: module sets q,v (neat_mode 1) and q,v + fc1, fc2
    (neat_mode 2); `neat_multilayers(depth)` counts A and B, so peft's PEANuT depth d is the official 2d + 2."""
    from harness.methods import display

    cells = paper_cells("neat_modules")
    sets = [list(cfg.method.target_modules) for cfg in cells]
    assert sets[:2] == [["q_proj", "v_proj"], ["q_proj", "v_proj", "fc1", "fc2"]]
    assert all(cfg.budget.params == 258048 for cfg in cells)  # q,v at r=7 on ViT-B/16
    base, _ = experiment_cells(["experiment=neat_modules", "profile=paper"])
    assert "harness's extension" in base.meta.table.note and "q,k,v; q,k,v,o; MLP and all" in base.meta.table.note
    depth = paper_cells("neat_depth")
    assert [(cfg.method.depth, cfg.method.label) for cfg in depth] == [
        (0, "Neat depth 2"), (1, "Neat depth 4"), (2, "Neat depth 6"), (3, "Neat depth 8")]
    assert display.knob("neat", {"r": 7, "depth": 2}) == "r=7 depth=6"


def test_table9_takes_the_first_100k_and_table1_holds_out_llm_adapters_120():
    """MiLoRA / PiSSA train.py `train[:100000]` for every seed; LLM-Adapters' `train_test_split(test_size=120,
    shuffle=True, seed=42)` whatever the run's seed."""
    from harness.benchmarks.records import subset_and_split

    for cfg in paper_cells("table9"):
        assert (cfg.task.train_subset, cfg.task.train_subset_mode) == (100000, "first")
    for cfg in paper_cells("table1"):
        assert cfg.task.val_split_seed == 42
    records = [{"i": i} for i in range(1000)]
    first = {seed: subset_and_split(records, {"train_subset": 100, "train_subset_mode": "first"}, seed)[0]
             for seed in (42, 43)}
    assert sorted(r["i"] for r in first[42]) == list(range(100)) == sorted(r["i"] for r in first[43])
    held = {seed: subset_and_split(records, {"val_set_size": 120, "val_split_seed": 42}, seed) for seed in (42, 43)}
    assert held[42][1] == held[43][1] and len(held[42][1]) == 120 and len(held[42][0]) == 880
    from datasets import Dataset  # the indices datasets itself picks, as LLM-Adapters' call does

    expected = Dataset.from_dict({"i": list(range(1000))}).train_test_split(test_size=120, shuffle=True, seed=42)
    assert [r["i"] for r in held[42][1]] == expected["test"]["i"]
    # and without it, the run's seed draws the hold-out, as before
    assert subset_and_split(records, {"val_set_size": 120}, 42)[1] != subset_and_split(records, {"val_set_size": 120}, 43)[1]
