"""Every config composes, alone and in the combinations the CLI uses."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness import methods
from harness.config import CONFIG_DIR, compose, run_id, with_profile

GROUPS = ["model", "method", "task", "protocol", "training", "profile", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in options(g)])
def test_every_config_composes(group, name):
    cfg = compose([f"{group}={name}"])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.method.name in methods.names()


@pytest.mark.parametrize("profile", options("profile"))
def test_experiment_grid_cells_compose(profile):
    base = compose(["experiment=table1", f"profile={profile}"])
    for cell in base.grid[profile]:
        cfg = compose(list(cell) + ["experiment=table1", f"profile={profile}"])
        OmegaConf.to_container(cfg, resolve=True)


def test_method_alpha_follows_rank_by_paper_convention():
    assert compose(["method=lora", "method.r=16"]).method.alpha == 32
    assert compose(["method=pissa", "method.r=16"]).method.alpha == 16
    assert compose(["method=milora", "method.r=8", "method.alpha=4"]).method.alpha == 4


def test_run_id_depends_on_what_is_computed_only():
    a = compose(["method=lora"])
    assert run_id(a) == run_id(compose(["method=lora"]))
    assert run_id(a) != run_id(compose(["method=lora", "seed=1"]))
    assert run_id(a) != run_id(compose(["method=lora", "method.r=8"]))
    assert run_id(a) == run_id(compose(["method=lora", "run.results_dir=/elsewhere", "data_dir=/other"]))


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
