"""The named baselines (conf/method/<preset>.yaml over method=peft) and the harness's own subset methods (BitFit,
layer freezing), on tiny models. For each: the output is unchanged at initialisation where the method promises
it, merged equals unmerged where it merges, the trainable count is its formula, a save / reload round trip gives
the same outputs; the tuners that adapt while they train (AdaLoRA) or initialise from data (EVA) do so through
their hooks; one budget-sweep cell trains with each method that has a knob."""

import json

import pytest
import torch
from test_peft_tuners import perturbed  # tests/test_peft_tuners.py: moves the trainable parameters as training would

from harness import methods
from harness.config import compose, method_options
from harness.models import load_model, load_tokenizer
from method_presets import preset  # noqa: E402  (tests/method_presets.py)

HIDDEN, KV, INNER, LAYERS = 64, 32, 128, 2  # tiny-llama
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]  # its target_modules
SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (INNER, HIDDEN), (HIDDEN, INNER)]  # (d_out, d_in)


def lora_formula(r):
    return LAYERS * sum(r * (d_out + d_in) for d_out, d_in in SHAPES)


# (preset, identity at init, merges, the trainable count of the preset's own knobs or None)
PRESETS = [
    ("rslora", True, True, lora_formula(8)),
    ("olora", True, True, lora_formula(16)),
    ("adalora", True, True, None),
    ("ia3", True, True, LAYERS * (KV + KV + INNER)),  # peft's Llama default: k, v and the input of down_proj
    ("lokr", True, True, None),
    ("oft", True, True, None),
    ("prompt_tuning", False, False, 20 * HIDDEN),
    ("p_tuning", False, False, None),
    ("fourierft", False, True, LAYERS * len(TARGETS) * 1000),  # spectrum drawn from N(0, 1), as the paper
    ("vera", True, True, None),
    ("lora_ga_peft", True, True, lora_formula(8)),  # (before their data-driven inits: test_a_data_driven_init_...)
    ("corda", True, True, lora_formula(16)),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(compose(["model=tiny-llama"]).model)


def fresh(model_name="tiny-llama", tokenizer=None, head=None):
    torch.manual_seed(0)
    return load_model(compose([f"model={model_name}"]).model, tokenizer, head=head).eval()


def logits(model, **inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs).logits
    if "input_ids" in inputs and out.dim() == 3:
        out = out[:, -inputs["input_ids"].shape[1]:]  # (a prompt tuner prepends its virtual tokens)
    return out



def keeps_its_promises(name, base, inputs, identity, merges, formula, tmp_path, overrides=(), model_name="tiny-llama",
                       tokenizer=None, head=None):
    cfg = compose([f"model={model_name}", f"method={name}", *overrides])
    reference = logits(base(), **inputs)
    adapted = methods.apply(base(), cfg.method.name, head_modules=("classifier",) if head else (),
                            **method_options(cfg))
    model = adapted.model.eval()
    if identity:
        assert torch.allclose(logits(model, **inputs), reference, atol=1e-5)
    if formula is not None:
        assert methods.trainable_parameters(model) == formula
    perturbed(model)
    trained = logits(model, **inputs)
    assert not torch.allclose(trained, reference, atol=1e-4)
    methods.save(adapted, tmp_path / "saved")
    reloaded_adapted = methods.load(base(), tmp_path / "saved")
    reloaded = reloaded_adapted.model.eval()
    assert torch.allclose(logits(reloaded, **inputs), trained, atol=1e-5)
    method = adapted.method
    assert method.can_merge(adapted) == merges
    if merges:
        assert torch.allclose(logits(methods.merge(adapted), **inputs), trained, atol=1e-4)
    return cfg, model


@pytest.mark.parametrize("name,identity,merges,formula", PRESETS, ids=[p[0] for p in PRESETS])
def test_a_named_baseline_keeps_its_promises(tokenizer, tmp_path, name, identity, merges, formula):
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    cfg, _ = keeps_its_promises(name, lambda: fresh(tokenizer=tokenizer), {"input_ids": ids}, identity, merges,
                                formula, tmp_path)
    assert cfg.method.label  # tables show the preset's own name
    saved = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert saved["peft_type"] == cfg.method.type


def test_olora_saves_a_lora_on_the_original_weights(tokenizer, tmp_path):
    """OLoRA moves its QR components out of the frozen weight; what it saves loads with plain peft on the
    untouched model."""
    from peft import PeftModel

    cfg = compose(["model=tiny-llama", "method=olora", "method.config.r=4"])
    adapted = methods.apply(fresh(tokenizer=tokenizer), "peft", **method_options(cfg))
    model = adapted.model
    assert not torch.equal(model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight,
                           fresh(tokenizer=tokenizer).model.layers[0].self_attn.q_proj.weight)  # the residual
    perturbed(model)
    methods.save(adapted, tmp_path / "olora")
    assert json.loads((tmp_path / "olora" / "adapter_config.json").read_text())["r"] == 8  # rank 2r on W0
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    plain = PeftModel.from_pretrained(fresh(tokenizer=tokenizer), str(tmp_path / "olora")).eval()
    assert torch.allclose(logits(plain, input_ids=ids), logits(model.eval(), input_ids=ids), atol=1e-4)


def test_bitfit_trains_every_bias_and_the_head_only(tmp_path):
    head = {"kind": "sequence_classification", "num_labels": 3}
    tokenizer = load_tokenizer(compose(["model=tiny-bert"]).model)
    batch = tokenizer(["a short sentence", "another one, longer than the first"], return_tensors="pt", padding=True)
    _, model = keeps_its_promises("bitfit", lambda: fresh("tiny-bert", tokenizer, head), dict(batch), True, False,
                                  None, tmp_path, model_name="tiny-bert", head=head)
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias") and "classifier" not in n)
    head_params = sum(p.numel() for n, p in model.named_parameters() if "classifier" in n)
    assert methods.trainable_parameters(model) == biases + head_params
    assert all(p.requires_grad == (n.endswith(".bias") or "classifier" in n) for n, p in model.named_parameters())
    with pytest.raises(methods.MethodConfigError, match="has no bias parameters"):
        methods.apply(fresh(), "bitfit")


def test_layer_freezing_trains_the_top_blocks_and_solves_its_budget(tokenizer, tmp_path):
    from harness import budget
    from harness.models import empty_model

    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    _, model = keeps_its_promises("freeze_layers", lambda: fresh(tokenizer=tokenizer), {"input_ids": ids}, True,
                                  False, None, tmp_path, overrides=["method.top_layers=1"])
    block = sum(p.numel() for p in model.model.layers[1].parameters())
    assert methods.trainable_parameters(model) == block
    assert not any(p.requires_grad for p in model.model.layers[0].parameters())
    with pytest.raises(methods.MethodConfigError, match="top_layers=3 exceeds the 2 blocks"):
        methods.apply(fresh(), "freeze_layers", **preset("freeze_layers", top_layers=3))
    cfg = compose(["model=tiny-llama", "method=freeze_layers", f"budget.params={2 * block - 10}"])
    architecture = empty_model(cfg.model)
    solved, record = budget.solved_for_model(cfg, architecture, methods.total_parameters(architecture))
    assert solved.method.top_layers == 2 and record["predicted"] == 2 * block


def test_adalora_learns_the_run_length_and_prunes_its_ranks_while_training(tokenizer):
    from harness.train import RunContext, TrainingData, train

    cfg = compose(["model=tiny-llama", "method=adalora", "method.config.init_r=4", "method.config.target_r=1",
                   "training.max_steps=4", "training.batch_size=2", "training.micro_batch_size=2",
                   "training.warmup_steps=0"])
    adapted = methods.apply(fresh(tokenizer=tokenizer), "peft", **method_options(cfg))
    model = adapted.model
    examples = [{"input_ids": list(range(3 + i, 11 + i)), "labels": list(range(3 + i, 11 + i))} for i in range(8)]
    train(adapted, TrainingData(examples, [], tokenizer), cfg.training,
          RunContext(seed=0, progress=False))
    config = model.peft_config["default"]
    assert config.total_step == 4
    kept = sum(sum(mask) for mask in config.rank_pattern.values())
    assert config.rank_pattern and kept < 4 * len(config.rank_pattern)  # ranks were pruned towards target_r


def test_eva_initialises_from_the_training_batches(tokenizer):
    from harness.train import RunContext, TrainingData, train

    cfg = compose(["model=tiny-llama", "method=eva", "method.config.r=2", "training.max_steps=1",
                   "training.batch_size=4", "training.micro_batch_size=4", "training.warmup_steps=0"])
    adapted = methods.apply(fresh(tokenizer=tokenizer), "peft", **method_options(cfg))
    model = adapted.model
    before = model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight.detach().clone()
    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": (ids := torch.randint(3, 500, (12,), generator=generator).tolist()), "labels": ids}
                for _ in range(16)]
    train(adapted, TrainingData(examples, [], tokenizer), cfg.training,
          RunContext(seed=0, progress=False))
    after = model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight.detach()
    assert after.shape[1] == HIDDEN and (after.shape != before.shape or not torch.allclose(after, before, atol=1e-3))
    assert model.peft_config["default"].rank_pattern  # EVA records the ranks it redistributed


def test_eva_refuses_batches_too_small_for_its_components_instead_of_cycling_for_ever(tokenizer):
    """r=16 x rho 2 = 32 components; micro-batches of 2 examples of 6 labelled tokens give 12 SVD rows: peft would
    skip every batch and cycle over them for ever. One line instead, naming the way out; the same batches at r=2
    (4 components) initialise."""
    from harness.errors import HarnessError
    from harness.train import RunContext, TrainingData, train

    examples = [{"input_ids": list(range(3 + i, 15 + i)), "labels": [-100] * 6 + list(range(9 + i, 15 + i))}
                for i in range(4)]
    for r, refused in ((16, True), (2, False)):
        cfg = compose(["model=tiny-llama", "method=eva", f"method.config.r={r}", "training.max_steps=1",
                       "training.batch_size=2", "training.micro_batch_size=2", "training.warmup_steps=0"])
        adapted = methods.apply(fresh(tokenizer=tokenizer), "peft", **method_options(cfg))
        run = lambda: train(adapted, TrainingData(examples, [], tokenizer), cfg.training, RunContext(seed=0, progress=False))
        if refused:
            with pytest.raises(HarnessError, match=r"needs \(r x rho = 16 x 2\); the largest has 12 labelled"):
                run()
        else:
            run()


# the budget of each cell, as a fraction of tiny-llama's parameters: P-tuning's prompt encoder and one whole block
# cost more than the others' smallest setting, and LoKr's Kronecker factors stop growing early on 64-wide layers
BUDGET_CELLS = {"lora_ga": 0.002, "lora_ga_peft": 0.002, "corda": 0.002, "rslora": 0.002, "olora": 0.002, "adalora": 0.002, "lokr": 0.0003, "prompt_tuning": 0.002,
                "p_tuning": 0.02, "fourierft": 0.002, "vera": 0.002, "freeze_layers": 0.012}


@pytest.mark.slow
@pytest.mark.parametrize("name", BUDGET_CELLS)
def test_a_budget_sweep_cell_trains_with_each_named_baseline(tmp_path, name):
    from harness.run import run_one

    record = run_one(compose(["model=tiny-llama", f"method={name}", f"budget.fraction={BUDGET_CELLS[name]}",
                              "task.train_subset=8", "task.val_set_size=0", "task.test_subset=2",
                              "training.micro_batch_size=4", "training.batch_size=4", "training.max_steps=2",
                              "training.warmup_steps=0", "protocol.max_new_tokens=4", "meta.run.progress=false",
                              f"meta.run.results_dir={tmp_path}"]))
    assert record["status"] == "finished" and record["params"]["budget"]["knob"]
    assert record["params"]["trainable"] == record["params"]["budget"]["predicted"]
    assert abs(record["params"]["budget"]["relative_error"]) < 0.5


@pytest.mark.parametrize("name", ["lora_ga_peft", "corda"])
def test_a_data_driven_init_runs_on_the_batches_and_saves_on_the_original_weights(tokenizer, tmp_path, name):
    """LoRA-GA (gradients) and CorDA (input covariance) initialise before the optimizer exists; the model's output
    is unchanged, the residual moved, and the adapter loads with plain peft on the untouched weights."""
    from peft import PeftModel

    from harness.train import make_loader

    cfg = compose(["model=tiny-llama", f"method={name}", "method.init_batches=2"])
    adapted = methods.apply(fresh(tokenizer=tokenizer), "peft", **method_options(cfg))
    model = adapted.model
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    reference = logits(fresh(tokenizer=tokenizer), input_ids=ids)
    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": (x := torch.randint(3, 500, (12,), generator=generator).tolist()), "labels": x}
                for _ in range(8)]
    loader = make_loader(examples, tokenizer, 4, shuffle=False, seed=0)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    original = layer.base_layer.weight.detach().clone()
    adapted.method.before_training(adapted, {"loader": loader, "device": torch.device("cpu")})
    assert layer.lora_B["default"].weight.abs().sum() > 0  # B from singular vectors, not zero
    assert not torch.allclose(layer.base_layer.weight, original)  # the residual W - s B A
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())  # restored
    torch.testing.assert_close(logits(model.eval(), input_ids=ids), reference, atol=1e-4, rtol=1e-4)
    perturbed(model)
    methods.save(adapted, tmp_path / name)
    plain = PeftModel.from_pretrained(fresh(tokenizer=tokenizer), str(tmp_path / name)).eval()
    torch.testing.assert_close(logits(plain, input_ids=ids), logits(model, input_ids=ids), atol=1e-4, rtol=1e-4)


def test_loraplus_trains_b_at_its_ratio_of_the_rate(tokenizer):
    cfg = compose(["model=tiny-llama", "method=loraplus", "training.lr=1e-4"])
    adapted = methods.apply(fresh(tokenizer=tokenizer), "lora", **method_options(cfg))
    model = adapted.model
    groups = adapted.method.param_groups(adapted, dict(cfg.training))
    names = {id(p): n for n, p in model.named_parameters()}
    rest, b = groups
    assert b["lr"] == pytest.approx(16e-4) and "lr" not in rest
    assert all(".lora_B." in names[id(p)] for p in b["params"]) and all(".lora_A." in names[id(p)] for p in rest["params"])
    assert compose(["method=loraplus"]).method.label == "LoRA+"


def test_adalora_as_lora_gas_baseline_keeps_its_ranks_and_draws_e(tokenizer):
    """LoRA-GA's Trainer never calls update_and_allocate, and peft 0.10 drew E ~ N(0, 0.02)."""
    from harness.train import RunContext, TrainingData, train

    cfg = compose(["model=tiny-llama", "method=adalora", "method.config.init_r=4", "method.config.target_r=1",
                   "+method.update_ranks=false", "+method.e_init_std=0.02", "training.max_steps=4",
                   "training.batch_size=2", "training.micro_batch_size=2", "training.warmup_steps=0"])
    adapted = methods.apply(fresh(tokenizer=tokenizer), "peft", **method_options(cfg))
    model = adapted.model
    E = model.get_base_model().model.layers[0].self_attn.q_proj.lora_E["default"]
    assert E.abs().sum() > 0 and 0.005 < E.std().item() < 0.05
    examples = [{"input_ids": list(range(3 + i, 11 + i)), "labels": list(range(3 + i, 11 + i))} for i in range(8)]
    train(adapted, TrainingData(examples, [], tokenizer), cfg.training,
          RunContext(seed=0, progress=False))
    assert not model.peft_config["default"].rank_pattern  # never pruned: every layer at init_r


def test_adapter_precision_base_trains_the_adapter_in_the_weights_dtype(tokenizer):
    """training.adapter_precision=base: peft 0.10's adapters in the base dtype (LoRA-GA's DoRA and AdaLoRA rows);
    the default keeps fp32 master weights."""
    from harness.train import RunContext, TrainingData, train

    examples = [{"input_ids": list(range(3 + i, 11 + i)), "labels": list(range(3 + i, 11 + i))} for i in range(4)]
    dtypes = {}
    for precision in ("fp32", "base"):
        cfg = compose(["model=tiny-llama", "model.dtype=bfloat16", "training.precision=bf16", "method=dora",
                       "method.r=2", "training.max_steps=2", "training.batch_size=2", "training.micro_batch_size=2",
                       "training.warmup_steps=0", f"+training.adapter_precision={precision}"])
        torch.manual_seed(0)
        adapted = methods.apply(load_model(cfg.model, tokenizer).eval(), "dora", **method_options(cfg))
        model = adapted.model
        stats = train(adapted, TrainingData(examples, [], tokenizer), cfg.training,
                      RunContext(seed=0, progress=False))["stats"]
        dtypes[precision] = stats["trainable_dtypes"]
    assert dtypes == {"fp32": ["float32"], "base": ["bfloat16"]}


# methods whose contract is tested elsewhere, and why: peft needs a tuner type (test_peft_tuners.py runs every one);
# linear probing and BitFit train a task's head or biases (tiny-llama has neither: test_image.py; above, tiny-bert);
# LoReFT / DiReFT score classification only here (test_reft.py, tiny-bert); RoSA / SpA build their sparse part
# from gradients in `before_training` (test_rosa.py)
CONTRACT_ELSEWHERE = {"peft": "test_peft_tuners.py", "linear_probe": "test_image.py", "bitfit": "above",
                      "loreft": "test_reft.py", "direft": "test_reft.py", "rosa": "test_rosa.py", "spa": "test_rosa.py"}


@pytest.mark.parametrize("name", [n for n in methods.names() if n not in CONTRACT_ELSEWHERE])
def test_every_registered_method_applies_trains_saves_and_reloads(tokenizer, tmp_path, name):
    """The contract of every method in the registry (a new method joins this test by registering): its preset
    applies to a tiny Llama, trains something, and what it saves reloads to the same outputs."""
    cfg = compose(["model=tiny-llama", f"method={name}"])
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    adapted = methods.apply(fresh(tokenizer=tokenizer), cfg.method.name, **method_options(cfg))
    model = adapted.model.eval()
    assert methods.trainable_parameters(model) > 0
    perturbed(model)
    methods.save(adapted, tmp_path / name)
    reloaded_adapted = methods.load(fresh(tokenizer=tokenizer), tmp_path / name)
    reloaded = reloaded_adapted.model.eval()
    torch.testing.assert_close(logits(reloaded, input_ids=ids), logits(model, input_ids=ids), atol=1e-4, rtol=1e-4)


def test_every_method_whose_contract_is_tested_elsewhere_is_a_registered_one():
    assert set(CONTRACT_ELSEWHERE) <= set(methods.names())
