"""Equal-budget solving: each method's knob lands as close as possible, and the real count agrees."""

import copy

import pytest
import torch

from harness import budget, methods
from harness.config import compose
from harness.identity import semantic_config
from harness.methods import rosa
from method_presets import preset  # noqa: E402  (tests/method_presets.py)

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
CASES = [("lora", {}), ("dora", {}), ("pissa", {}), ("milora", {}), ("neat", {}), ("neat", {"convention": "d_in"}),
         ("rosa", {"r": 2}), ("spa", {})]


def base_options(name, extra):
    if name in ("rosa", "spa"):
        return preset(name, **{"r": 0, "density": 0.0, "target_modules": TARGETS, "mask_warmup_steps": 0,
                               "mask_grad_batches": 1, **extra})
    return preset(name, **{"r": 1, "target_modules": TARGETS, **({} if name == "neat" else {"alpha": 2}), **extra})


@pytest.mark.parametrize("name,extra", CASES)
@pytest.mark.parametrize("fraction", [0.002, 0.01])
def test_solved_knob_lands_closest_and_real_count_agrees(tiny_model, name, extra, fraction):
    method = methods.get(name)
    total = methods.total_parameters(tiny_model)
    target = int(fraction * total)
    shapes = budget.linear_shapes(tiny_model, TARGETS)
    options = base_options(name, extra)
    solved, record = budget.solve(method, shapes, options, target, total)
    if record["knob"] == "r":
        for neighbour in (record["value"] - 1, record["value"] + 1):
            if neighbour >= 1:
                at_neighbour = method.count(shapes, method.parse_options({**options, "r": neighbour}))
                assert abs(at_neighbour - target) >= abs(record["predicted"] - target)
    else:
        assert abs(record["relative_error"]) < 0.01
    adapted = methods.apply(copy.deepcopy(tiny_model), name, **solved)
    model = adapted.model
    if name in ("rosa", "spa"):
        # masks from random scores: the count depends on the density alone, not on which entries are kept
        from harness.methods.rosa import _weight_shape, attach_masks
        from harness.methods.sparse import topk_mask

        attach_masks(rosa.state(adapted), {n: topk_mask(torch.rand(_weight_shape(m)), solved["density"])
                             for n, m in rosa.state(adapted).targets.items()})
    assert methods.trainable_parameters(model) == record["predicted"]


def test_infeasible_budgets_name_the_feasible_range(tiny_model):
    total = methods.total_parameters(tiny_model)
    shapes = budget.linear_shapes(tiny_model, TARGETS)
    with pytest.raises(budget.BudgetError, match=r"infeasible for method=lora: the feasible range is 1,408 to 45,056"):
        budget.solve(methods.get("lora"), shapes, base_options("lora", {}), 10, total)
    with pytest.raises(budget.BudgetError, match="feasible range"):
        budget.solve(methods.get("spa"), shapes, base_options("spa", {}), total + 1, total)
    with pytest.raises(budget.BudgetError, match="with r=16"):
        budget.solve(methods.get("rosa"), shapes, base_options("rosa", {"r": 16}), 1000, total)
    with pytest.raises(budget.BudgetError, match="method=full has no budget knob"):
        budget.solve(methods.get("full"), shapes, {}, 1000, total)
    with pytest.raises(budget.BudgetError, match="not both"):
        budget.target_count({"params": 10, "fraction": 0.1}, total)


def test_run_config_follows_the_solved_rank_and_hash_ignores_an_unset_budget(tiny_model):
    cell = compose(["model=tiny-llama", "method=lora", "budget.fraction=0.005"])
    total = methods.total_parameters(tiny_model)
    shapes = budget.linear_shapes(tiny_model, cell.method.target_modules)
    cfg, record = budget.solved_config(cell, shapes, total)
    assert cfg.method.r == record["value"] and cfg.method.alpha == 2 * record["value"]  # LoRA's alpha = 2r follows
    assert cell.method.r == 32  # pure: the cell keeps its own knob (and so its run id)
    assert "budget" in semantic_config(cfg)
    assert "budget" not in semantic_config(compose(["model=tiny-llama"]))


def test_a_budget_run_leaves_the_callers_cell_and_its_run_id_alone(tmp_path):
    """A reproduction finds its results by the run ids of its (unsolved) cells, in the same process."""
    from harness.identity import run_id
    from harness.results import result_path
    from harness.run import run_one

    cell = compose(["model=tiny-llama", "method=lora", "budget.fraction=0.005", "task.train_subset=8",
                    "task.val_set_size=0", "task.test_subset=1", "training.micro_batch_size=8", "training.max_steps=1",
                    "training.warmup_steps=0", "protocol.max_new_tokens=2", "meta.run.progress=false",
                    "meta.run.save_adapter=false", f"meta.run.results_dir={tmp_path}"])
    before = run_id(cell)
    result = run_one(cell)
    assert run_id(cell) == before == result["run"]["id"] and cell.method.r == 32  # the cell still says r=32
    assert result["run"]["config"]["method"]["r"] == result["params"]["budget"]["value"] != 32
    assert result_path(tmp_path, before).is_file()
