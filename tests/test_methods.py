"""Methods on a tiny Llama: no-op at init, SVD components, merge, parameter counts, save/reload."""

import pytest
import torch
from peft.tuners.lora import LoraLayer

from harness import methods
from harness.methods.base import MethodConfigError
from method_presets import preset  # noqa: E402  (tests/method_presets.py)

TARGETS = ["q_proj", "v_proj", "up_proj"]
ALL = [("lora", dict(r=4, alpha=8, dropout=0.0)), ("dora", dict(r=4, alpha=8, dropout=0.0)),
       ("pissa", dict(r=4, alpha=4, dropout=0.0)), ("pissa", dict(r=4, alpha=8, svd_niter=4)),
       ("milora", dict(r=4, alpha=4, dropout=0.0)), ("milora", dict(r=4, alpha=16)),
       ("neat", dict(r=4)), ("neat", dict(r=4, depth=1, convention="d_in")), ("neat", dict(r=4, act_fn="sin2pi")),
       ("full", {})]


def adapt(model, name, opts):
    """The method's config-file options (dropout off, for exact comparisons), these, on TARGETS."""
    if name != "full":
        base = preset(name)
        if "dropout" in base:
            base["dropout"] = 0.0
        opts = {**base, **opts, "target_modules": TARGETS}
    return methods.apply(model, name, **opts)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def perturb(model):
    """Moves every trainable parameter away from its init, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("name,opts", ALL)
def test_init_leaves_outputs_unchanged(tiny_model, inputs, name, opts):
    before = logits(tiny_model, inputs)
    after = logits(adapt(tiny_model, name, opts).model, inputs)
    torch.testing.assert_close(after, before, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name,opts", [c for c in ALL if c[0] != "full"])
def test_merge_equals_unmerged_forward(tiny_model, inputs, name, opts):
    adapted = adapt(tiny_model, name, opts)
    model = adapted.model.eval()
    perturb(model)
    unmerged = logits(model, inputs)
    merged = methods.merge(adapted)
    assert not any("lora_" in n or "peanut_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, inputs), unmerged, atol=1e-4, rtol=1e-4)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("name,pick", [("pissa", "largest"), ("milora", "smallest"), ("milora", "principal"),
                                       ("milora", "random")])
@pytest.mark.parametrize("alpha", [4, 16])
def test_svd_init_picks_components_and_reconstructs_weight(tiny_model, name, pick, alpha):
    r = 4
    original = {n: m.weight.detach().clone() for n, m in tiny_model.named_modules() if n.endswith(tuple(TARGETS))}
    init = {"components": pick, "components_seed": 3} if pick in ("principal", "random") else {}
    adapted = methods.apply(tiny_model, name, **preset(name, r=r, alpha=alpha, dropout=0.0, target_modules=TARGETS,
                                                       **init))
    model = adapted.model
    draw = torch.Generator().manual_seed(3)  # MiLoRA's random components: one draw per matrix, in module order
    layers = _layers(model)
    assert layers
    for layer in layers:
        name_ = next(n for n, m in model.named_modules() if m is layer)
        w0 = original[name_.removeprefix("base_model.model.")]
        U, S, Vh = torch.linalg.svd(w0, full_matrices=False)
        sl = {"largest": slice(0, r), "principal": slice(0, r), "smallest": slice(-r, None)}.get(pick)
        if pick == "random":
            sl = torch.randperm(S.shape[0], generator=draw)[:r].sort().values
            assert sl.tolist() not in ([0, 1, 2, 3], list(range(S.shape[0] - r, S.shape[0])))
        expected = U[:, sl] @ torch.diag(S[sl]) @ Vh[sl]
        scale = layer.scaling["default"]
        assert scale == alpha / r
        adapter_part = scale * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        torch.testing.assert_close(adapter_part, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer.get_base_layer().weight + adapter_part, w0, atol=1e-5, rtol=1e-5)


def test_parameter_counts_equal_spec_formulas(tiny_model):
    cfg = tiny_model.config
    d, kv, ff, layers = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads), cfg.intermediate_size, cfg.num_hidden_layers
    shapes = [(d, d), (kv, d), (ff, d)]  # (d_out, d_in) of q, v, up
    r = 4
    total = methods.total_parameters(tiny_model)
    lora = layers * sum(r * (i + o) for o, i in shapes)
    expected = {
        "lora": lora,
        "dora": lora + layers * sum(o for o, _ in shapes),
        "pissa": lora,
        "milora": lora,
        "neat": layers * sum(2 * r * o for o, _ in shapes),
    }
    import copy
    for name, count in expected.items():
        adapted = methods.apply(copy.deepcopy(tiny_model), name, **preset(name, r=r, target_modules=TARGETS))
        model = adapted.model
        assert methods.trainable_parameters(model) == count, name
    deep_adapted = methods.apply(copy.deepcopy(tiny_model), "neat", **preset("neat", r=r, depth=2,
                                                                             target_modules=TARGETS))
    deep = deep_adapted.model
    assert methods.trainable_parameters(deep) == expected["neat"] + layers * len(shapes) * 2 * 2 * r * r
    din_adapted = methods.apply(copy.deepcopy(tiny_model), "neat", **preset("neat", r=r, convention="d_in",
                                                                            target_modules=TARGETS))
    din = din_adapted.model
    assert methods.trainable_parameters(din) == layers * sum(2 * r * i for _, i in shapes)
    full_adapted = methods.apply(copy.deepcopy(tiny_model), "full")
    full = full_adapted.model
    assert methods.trainable_parameters(full) == total
    # tied embeddings count once
    assert total == sum(p.numel() for n, p in tiny_model.named_parameters())


@pytest.mark.parametrize("name,opts", [("milora", dict(r=4, alpha=4)), ("pissa", dict(r=4, alpha=8)),
                                       ("lora", dict(r=4)), ("neat", dict(r=4, convention="d_in")),
                                       ("neat", dict(r=2)), ("neat", dict(r=2, depth=1, act_fn="sin2pi"))])
def test_save_and_reload_on_the_original_weights(tiny_cfg, tokenizer, inputs, tmp_path, name, opts):
    from harness.models import load_model

    torch.manual_seed(0)
    adapted = adapt(load_model(tiny_cfg.model, tokenizer), name, opts)
    model = adapted.model.eval()
    perturb(model)
    expected = logits(model, inputs)
    methods.save(adapted, tmp_path / "adapter")
    torch.manual_seed(0)
    fresh = load_model(tiny_cfg.model, tokenizer)  # the untouched pretrained weights
    reloaded_adapted = methods.load(fresh, tmp_path / "adapter")
    reloaded = reloaded_adapted.model.eval()
    torch.testing.assert_close(logits(reloaded, inputs), expected, atol=1e-4, rtol=1e-4)
    if name in ("milora", "pissa"):
        # converted to a plain rank-2r LoRA that peft loads without the harness
        import json
        config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 2 * opts["r"] and config["init_lora_weights"] is True


def test_bad_options_are_named(tiny_model):
    with pytest.raises(MethodConfigError, match="unknown option.*'rank'"):
        methods.apply(tiny_model, "lora", rank=4)
    with pytest.raises(MethodConfigError, match="unknown method 'lorax'"):
        methods.apply(tiny_model, "lorax")
    with pytest.raises(MethodConfigError, match="r must be a positive integer"):
        methods.apply(tiny_model, "milora", r=0, alpha=0, dropout=0.0)
    with pytest.raises(MethodConfigError, match="convention"):
        methods.apply(tiny_model, "neat", **preset("neat", r=2, convention="sideways"))


@pytest.mark.parametrize("opts", [dict(r=4), dict(r=3, depth=1), dict(r=4, convention="d_in"),
                                  dict(r=3, depth=1, convention="d_in", scaling=0.5), dict(r=3, act_fn="sin2pi")])
def test_neat_factored_forward_equals_the_dense_delta_weight(tiny_model, inputs, opts):
    """Neat's forward from two thin factors (no d_out x d_in delta) gives the outputs and gradients of the dense
    delta weight: peft's own PEANuT layer for its convention, the paper's formula for d_in."""
    import copy

    from peft.tuners.peanut.layer import Linear as PeanutLinear
    from transformers.activations import ACT2FN

    model = adapt(tiny_model, "neat", opts).model
    perturb(model)  # B away from zero: a delta to compare
    layers = [m for m in model.modules() if isinstance(m, PeanutLinear)]
    assert layers and all(type(m) is not PeanutLinear for m in layers)
    for layer in layers:  # the delta weight of the factors is the convention's formula
        W0, A, B, s = layer.base_layer.weight, layer.peanut_A["default"].weight, layer.peanut_B["default"].weight, layer.scaling["default"]
        if opts.get("convention") == "d_in":
            h = ACT2FN["relu"](W0 @ A.t())
            if opts.get("depth"):
                h = ACT2FN["relu"](layer.peanut_decoders["default"][0](ACT2FN["relu"](layer.peanut_encoders["default"][0](h)))) + h
            expected = s * h @ B.t()
        else:
            expected = PeanutLinear._compute_delta_weight(layer, "default", W0)  # peft's own computation
            if opts.get("act_fn") == "sin2pi":  # the paper's sigma(x) = sin(2 pi x), written out
                expected_sin = s * B @ torch.sin(2 * torch.pi * (A @ W0))
                torch.testing.assert_close(expected, expected_sin, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.get_delta_weight("default"), expected, rtol=1e-5, atol=1e-7)

    dense = copy.deepcopy(model)
    for m in dense.modules():  # peft's forward: x @ (the dense delta weight)^T
        if isinstance(m, PeanutLinear):
            m.forward = PeanutLinear.forward.__get__(m)
    outputs = {}
    for name, net in (("factored", model), ("dense", dense)):
        net.zero_grad(set_to_none=True)
        out = net(**inputs).logits
        out.square().mean().backward()
        outputs[name] = out.detach(), {n: p.grad for n, p in net.named_parameters() if p.requires_grad}
    torch.testing.assert_close(outputs["factored"][0], outputs["dense"][0], rtol=1e-5, atol=1e-5)
    for n, grad in outputs["dense"][1].items():
        torch.testing.assert_close(outputs["factored"][1][n], grad, rtol=1e-4, atol=1e-7, msg=n)


def test_every_option_has_its_default_in_one_place():
    """A method's own config file (conf/method/<name>.yaml) and its options class never both hold a default: an
    option the file sets has none in the class (a library call must name it), and a default of the class is for
    an option the file leaves out, states as null, or takes from another group (`${model.target_modules}`). Every
    key the file sets is an option of the class."""
    import dataclasses

    from omegaconf import OmegaConf

    from harness.config import compose

    for name in methods.names():
        options_class = methods.get(name).options_class
        fields = {f.name: f for f in dataclasses.fields(options_class)}
        raw = OmegaConf.to_container(compose([f"method={name}", "model=tiny-llama"]).method, resolve=False)
        stated = {k: v for k, v in raw.items() if k not in ("name", "label", "display_order")}
        assert set(stated) <= set(fields), (name, sorted(set(stated) - set(fields)))
        for option, field in fields.items():
            if option in options_class.required():
                assert option in stated, f"{name}: {option} has no default and conf/method/{name}.yaml sets none"
            elif option in stated:
                value = stated[option]
                from_elsewhere = isinstance(value, str) and value.startswith("${") and not value.startswith("${.")
                assert (value is None and field.default is None) or from_elsewhere, \
                    f"{name}: {option} has a default in the class ({field.default!r}) and in the file ({value!r})"


def test_every_method_file_names_how_tables_show_it():
    """Label and place in tables are the method's own file's (conf/method/<name>.yaml), as constants (method=peft's
    label follows the tuner's type), and stay out of the run id except a preset's own label."""
    from harness.config import compose
    from harness.identity import semantic_config
    from harness.methods import display

    for name in methods.names():
        label, order = display.own_display(name)
        assert order != display.UNKNOWN_ORDER, f"conf/method/{name}.yaml states no display_order"
        assert label or name == "peft", f"conf/method/{name}.yaml states no label"
    cfg = compose(["method=lora", "model=tiny-llama"])
    assert (cfg.method.label, display.order("lora"), display.label("lora", {})) == ("LoRA", 1, "LoRA")
    assert display.label_key("lora", dict(cfg.method)) == "lora"
    shown = semantic_config(cfg, with_inputs=False)["method"]
    assert "label" not in shown and "display_order" not in shown
    preset = compose(["method=neat_s", "model=tiny-llama"])
    assert semantic_config(preset, with_inputs=False)["method"]["label"] == "Neat-S"
    assert display.label_key("neat", dict(preset.method)) == "neat-s"
