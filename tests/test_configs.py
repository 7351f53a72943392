"""Every config composes, alone and in the combinations the CLI uses."""

import json

import pytest
from omegaconf import OmegaConf

from harness import methods
from harness.config import CONFIG_DIR, compose, experiment_cells, run_id, semantic_config, with_profile

GROUPS = ["model", "method", "task", "protocol", "training", "profile", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in options(g)])
def test_every_config_composes(group, name):
    cfg = compose([f"{group}={name}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.method.name in methods.names()


@pytest.mark.parametrize("experiment,profile", [(e, p) for e in options("experiment") for p in options("profile")])
def test_experiment_grid_cells_compose(experiment, profile):
    base, cells = experiment_cells([f"experiment={experiment}", f"profile={profile}"])
    assert cells and base.table.published in options("published")
    for cfg in cells:
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg.profile.name == profile
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
    assert run_id(a) == run_id(compose(["method=lora", "run.results_dir=/elsewhere", "logging.wandb=true"]))


def test_profile_is_chosen_unless_named(capsys):
    assert with_profile(["profile=paper"]) == ["profile=paper"]
    chosen = with_profile(["method=lora"])
    assert chosen[-1] in ("profile=mini", "profile=paper")
    assert "chosen automatically" in capsys.readouterr().out


def test_mini_profile_uses_the_offline_model():
    cfg = compose(["profile=mini"])
    assert cfg.model.name == "smollm2-135m" and cfg.profile.name == "mini"
    paper = compose(["profile=paper", "model=llama2-7b"])
    assert paper.task.train_file == "zwhe99/commonsense_170k" and paper.task.test_subset is None
    assert compose(["profile=paper", "task=gsm8k"]).task.train_file == "meta-math/MetaMathQA"


def test_budget_sweep_trains_on_gsm8k_and_sizes_the_mini_cells():
    _, paper = experiment_cells(["experiment=sweep_budget", "profile=paper"])
    assert all(cfg.task.train_file is None and cfg.task.name == "math" for cfg in paper)  # GSM8K train, as RoSA
    assert {cfg.model.name for cfg in paper} == {"llama2-7b"}
    _, mini = experiment_cells(["experiment=sweep_budget", "profile=mini", "task.test_subset=5"])
    assert all(cfg.task.train_subset == 64 and cfg.task.test_subset == 5 for cfg in mini)  # the user's override wins
    assert "o_proj" in mini[0].method.target_modules and "gate_proj" in mini[0].method.target_modules
