"""method=peft: any peft tuner by type and config, on the tiny Llama. For each: the output is unchanged at
initialisation where the tuner promises it, the merged model equals the unmerged one where it merges, the
trainable count is its formula where it has a simple one, and a save / reload round trip gives the same outputs."""

import json

import pytest
import torch

from harness import methods
from harness.config import compose
from harness.methods.base import MethodConfigError
from harness.models import load_model, load_tokenizer

HIDDEN, KV, LAYERS = 64, 32, 2  # tiny-llama: hidden 64, 2 kv heads of 16, 2 layers

# (type, config, identity at init, merges, the trainable count's formula or None)
TUNERS = [
    ("LORA", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, True, True, LAYERS * 4 * ((HIDDEN + HIDDEN) + (HIDDEN + KV))),
    ("IA3", {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}, True, True,
     LAYERS * (KV + KV + 128)),  # a vector per output of k / v, per input of the feed-forward down_proj
    ("LOKR", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, True, True, None),
    ("LOHA", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, True, True, None),
    ("OFT", {"r": 0, "oft_block_size": 16, "target_modules": ["q_proj", "v_proj"]}, True, True, None),
    ("BOFT", {"boft_block_size": 4, "target_modules": ["q_proj", "v_proj"]}, True, True, None),
    ("VERA", {"r": 8, "target_modules": ["q_proj", "k_proj"]}, True, True, LAYERS * ((8 + HIDDEN) + (8 + KV))),
    ("FOURIERFT", {"n_frequency": 50, "init_weights": True, "target_modules": ["q_proj", "v_proj"]}, True, True,
     LAYERS * 2 * 50),
    ("HRA", {"r": 4, "target_modules": ["q_proj", "v_proj"]}, True, True, LAYERS * 2 * 4 * HIDDEN),
    ("ADALORA", {"init_r": 4, "target_r": 2, "total_step": 10, "target_modules": ["q_proj", "v_proj"]}, True, True, None),
    ("LN_TUNING", {"target_modules": ["input_layernorm", "post_attention_layernorm"]}, True, True, LAYERS * 2 * HIDDEN),
    ("PROMPT_TUNING", {"num_virtual_tokens": 4}, False, False, 4 * HIDDEN),
]


@pytest.fixture(scope="module")
def setup():
    cfg = compose(["model=tiny-llama"])
    return cfg, load_tokenizer(cfg.model)


def base_model(setup):
    cfg, tokenizer = setup
    torch.manual_seed(0)
    return load_model(cfg.model, tokenizer).eval()


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids).logits
    return out[:, -ids.shape[1]:]  # (a prompt tuner prepends its virtual tokens)


def perturbed(model) -> None:
    """Moves every trainable parameter, as training would, so that merging and saving have something to carry."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("kind,config,identity,merges,formula", TUNERS, ids=[t[0] for t in TUNERS])
def test_a_peft_tuner_keeps_its_promises(setup, tmp_path, kind, config, identity, merges, formula):
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    reference = logits(base_model(setup), ids)
    adapted = methods.apply(base_model(setup), "peft", type=kind, config=config)
    model = adapted.model.eval()
    if identity:
        assert torch.allclose(logits(model, ids), reference, atol=1e-5)
    if formula is not None:
        assert methods.trainable_parameters(model) == formula
    perturbed(model)
    trained = logits(model, ids)
    assert not torch.allclose(trained, reference, atol=1e-4)  # the tuner changes the output once it trains
    methods.save(adapted, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == kind
    reloaded_adapted = methods.load(base_model(setup), tmp_path / "adapter")
    reloaded = reloaded_adapted.model.eval()
    assert torch.allclose(logits(reloaded, ids), trained, atol=1e-5)
    method = adapted.method
    assert method.can_merge(adapted) == merges
    if merges:
        assert torch.allclose(logits(methods.merge(adapted), ids), trained, atol=1e-4)


def test_a_tuner_from_an_adapter_config_file_and_the_errors_name_what_is_wrong(setup, tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"peft_type": "IA3", "target_modules": ["k_proj", "v_proj"], "feedforward_modules": [],
                                "base_model_name_or_path": "somewhere/else"}))
    adapted = methods.apply(base_model(setup), "peft", config_file=str(path))
    model = adapted.model
    assert methods.trainable_parameters(model) == LAYERS * (KV + KV)
    with pytest.raises(MethodConfigError, match="'NOPE' is not a peft tuner"):
        methods.apply(base_model(setup), "peft", type="nope")
    with pytest.raises(MethodConfigError, match="LoraConfig has no field.*'rank'"):
        methods.apply(base_model(setup), "peft", type="LORA", config={"rank": 4})
    with pytest.raises(MethodConfigError, match="no such file"):
        methods.apply(base_model(setup), "peft", config_file=str(tmp_path / "missing.json"))


def test_the_model_target_modules_fill_in_where_the_config_names_none(setup):
    cfg, _ = setup
    adapted = methods.apply(base_model(setup), "peft", type="LORA", config={"r": 2},
                            target_modules=list(cfg.model.target_modules))
    model = adapted.model
    adapted = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(cfg.model.target_modules)


@pytest.mark.parametrize("kind,knob", [("VERA", "r"), ("FOURIERFT", "n_frequency"), ("PROMPT_TUNING", "num_virtual_tokens")])
def test_the_budget_solver_counts_the_tuner_built_on_the_meta_device(setup, kind, knob):
    from harness import budget
    from harness.models import empty_model

    cfg = compose(["model=tiny-llama", "method=peft", f"method.type={kind}", "budget.params=3000"])
    architecture = empty_model(cfg.model)
    solved, record = budget.solved_for_model(cfg, architecture, methods.total_parameters(architecture))
    assert record["knob"] == f"config.{knob}" and abs(record["relative_error"]) < 0.01
    assert cfg.method.config is None  # the caller's config (its run id) is untouched
    # the solved knob, applied to the real model, trains exactly the predicted count
    real_adapted = methods.apply(base_model(setup), "peft", type=kind, config=dict(solved.method.config),
                                 target_modules=list(cfg.model.target_modules))
    real = real_adapted.model
    assert methods.trainable_parameters(real) == record["predicted"]


def test_a_budget_the_tuner_cannot_reach_or_a_tuner_without_a_knob_is_refused_before_training(setup):
    from harness import budget
    from harness.models import empty_model

    architecture = empty_model(compose(["model=tiny-llama"]).model)
    total = methods.total_parameters(architecture)
    with pytest.raises(budget.BudgetError, match="infeasible for method=peft type=LOKR.*feasible range"):
        budget.solved_for_model(compose(["model=tiny-llama", "method=peft", "method.type=LOKR", "budget.params=1e6"]),
                                architecture, total)
    with pytest.raises(budget.BudgetError, match="type=IA3: no budget knob"):
        budget.solved_for_model(compose(["model=tiny-llama", "method=peft", "method.type=IA3", "budget.params=1000"]),
                                architecture, total)


@pytest.mark.slow
def test_a_budget_sweep_cell_trains_with_a_generic_tuner(tmp_path):
    from harness.run import run_one

    record = run_one(compose(["model=tiny-llama", "method=peft", "method.type=VERA", "budget.fraction=0.001",
                              "task.train_subset=8", "task.val_set_size=0", "task.test_subset=2",
                              "training.micro_batch_size=4", "training.batch_size=4", "training.max_steps=1",
                              "training.warmup_steps=0", "protocol.max_new_tokens=4", "meta.run.progress=false",
                              f"meta.run.results_dir={tmp_path}"]))
    assert record["status"] == "finished" and record["params"]["budget"]["knob"] == "config.r"
    assert record["params"]["trainable"] == record["params"]["budget"]["predicted"]
    assert abs(record["params"]["trainable"] - 0.001 * record["params"]["total"]) < 0.01 * 0.001 * record["params"]["total"]
