"""LoRA-GA as the official code behind the paper initialises it (Outsider565/LoRA-GA @89af7de reproduce/run_exp.py
L161-236, L268-298; conf/init/gradient.yaml; Readme.md L23-31), checked against those formulas written out here:
B = U[:, r:2r] m^(1/4)/sqrt(gamma), A = V^T[:r] m^(1/4)/sqrt(gamma), scaling alpha/sqrt(r), W <- W - scaling B A, the
gradient the mean over the first 8 examples in file order, one per backward pass."""

import math

import pytest
import torch
from peft import PeftModel
from test_peft_tuners import perturbed

from harness import methods
from harness.config import compose, method_options
from harness.methods.lora_ga import lora_ga_factors
from harness.models import load_model, load_tokenizer
from harness.train import make_loader


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(compose(["model=tiny-llama"]).model)


def fresh(tokenizer):
    torch.manual_seed(0)
    return load_model(compose(["model=tiny-llama"]).model, tokenizer).eval()


def known_gradient(d_out, d_in, rank, seed=0):
    """A gradient of exactly `rank` components with distinct singular values: its SVD is known."""
    generator = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(d_out, rank, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(d_in, rank, generator=generator))
    S = torch.linspace(3e-3, 1e-4, rank)
    return U @ torch.diag(S) @ V.T, U, V


def aligned(actual, expected, dim):
    """`actual` with each vector's sign taken from `expected` (singular vectors are defined up to sign)."""
    signs = torch.sign((actual * expected).sum(dim=dim, keepdim=True))
    return actual * signs


def test_the_factors_are_the_official_formula_on_a_known_gradient():
    r, gamma, (m, n) = 4, 16, (96, 40)
    gradient, U, V = known_gradient(m, n, 4 * r)
    A, B = lora_ga_factors(gradient, r, gamma)
    c = m ** 0.25 / math.sqrt(gamma)
    expected_B, expected_A = U[:, r:2 * r] * c, V[:, :r].T * c  # ArB2r; no singular values enter
    assert A.dtype == B.dtype == torch.float32 and A.shape == (r, n) and B.shape == (m, r)
    torch.testing.assert_close(aligned(B, expected_B, 0), expected_B, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(aligned(A, expected_A, 1), expected_A, atol=1e-5, rtol=1e-4)
    # the gradient's scale does not enter: ten times the gradient, the same factors
    A10, B10 = lora_ga_factors(10 * gradient, r, gamma)
    torch.testing.assert_close(A10.abs(), A.abs(), atol=1e-5, rtol=1e-4)


def test_the_adapter_scaling_and_residual_are_the_official_ones(tokenizer):
    cfg = compose(["model=tiny-llama", "method=lora_ga", "method.r=2"])
    options = method_options(cfg)
    assert (options["alpha"], options["dropout"], options["use_rslora"], options["stable_gamma"],
            options["init_examples"]) == (16, 0.0, True, 16, 8)
    adapted = methods.apply(fresh(tokenizer), "lora_ga", **options)
    model = adapted.model
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    layers = {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")}
    originals = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()}
    gradients = {name: known_gradient(*layer.base_layer.weight.shape, 8, seed=i)[0]
                 for i, (name, layer) in enumerate(layers.items())}
    adapted.method.initialise(model, gradients, stable_gamma=16)
    for name, layer in layers.items():
        scaling = layer.scaling["default"]
        assert scaling == pytest.approx(16 / math.sqrt(2))  # rsLoRA: alpha / sqrt(r)
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        _, U, V = known_gradient(*originals[name].shape, 8, seed=list(layers).index(name))
        c = originals[name].shape[0] ** 0.25 / 4
        torch.testing.assert_close(aligned(B, U[:, 2:4] * c, 0), U[:, 2:4] * c, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(aligned(A, V[:, :2].T * c, 1), V[:, :2].T * c, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.base_layer.weight, originals[name] - scaling * B @ A)
        # ||s B A||_F = s c^2 sqrt(r), whatever the gradient's size (the official init's "stable output")
        assert torch.linalg.norm(scaling * B @ A).item() == pytest.approx(scaling * c * c * math.sqrt(2), rel=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference, atol=1e-4, rtol=1e-4)


def test_the_gradient_is_the_mean_over_the_first_examples_in_file_order(tokenizer):
    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": (x := torch.randint(3, 500, (10 + i % 3,), generator=generator).tolist()), "labels": x}
                for i in range(12)]
    adapted = methods.apply(fresh(tokenizer), "lora_ga", **method_options(compose(["model=tiny-llama", "method=lora_ga",
                                                                                   "method.r=2"])))
    model = adapted.model
    loader = make_loader(examples, tokenizer, 4, shuffle=True, seed=3)  # (the training loader is shuffled)
    gradients = adapted.method.gradients(model, loader, torch.device("cpu"), 8)
    # independently: the plain model, each of the first 8 examples on its own, averaged
    plain = fresh(tokenizer).train()
    total = torch.zeros_like(plain.model.layers[1].mlp.down_proj.weight)
    for example in examples[:8]:
        plain.zero_grad()
        ids = torch.tensor([example["input_ids"]])
        plain(input_ids=ids, labels=ids).loss.backward()
        total += plain.model.layers[1].mlp.down_proj.weight.grad
    name = next(n for n in gradients if n.endswith("layers.1.mlp.down_proj"))
    torch.testing.assert_close(gradients[name], total / 8, atol=1e-6, rtol=1e-4)
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())  # restored


def test_lora_ga_trains_from_its_init_and_saves_on_the_original_weights(tokenizer, tmp_path):
    cfg = compose(["model=tiny-llama", "method=lora_ga", "method.r=2", "method.init_examples=3"])
    adapted = methods.apply(fresh(tokenizer), "lora_ga", **method_options(cfg))
    model = adapted.model
    ids = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
    with torch.no_grad():
        reference = fresh(tokenizer)(input_ids=ids).logits
    generator = torch.Generator().manual_seed(0)
    examples = [{"input_ids": (x := torch.randint(3, 500, (12,), generator=generator).tolist()), "labels": x}
                for _ in range(6)]
    adapted.method.before_training(adapted, {"loader": make_loader(examples, tokenizer, 2, True, 0),
                                                     "device": torch.device("cpu")})
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.lora_B["default"].weight.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference, atol=1e-4, rtol=1e-4)
    perturbed(model)
    methods.save(adapted, tmp_path / "lora_ga")
    plain = PeftModel.from_pretrained(fresh(tokenizer), str(tmp_path / "lora_ga")).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-4,
                                   rtol=1e-4)


def test_lora_ga_refuses_a_rank_whose_second_block_does_not_fit():
    from harness.models import empty_model

    cfg = compose(["model=tiny-llama", "method=lora_ga", "method.r=20"])  # 2r = 40 > the 32-wide k / v
    with pytest.raises(methods.MethodConfigError, match="2r=40"):
        methods.validate(empty_model(cfg.model), "lora_ga", **method_options(cfg))
