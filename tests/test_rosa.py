"""RoSA / SpA: sparse kernels against dense references, mask generation, the LoRA limit, save/reload."""

import copy
import math

import pytest
import torch

from harness import methods
from harness.benchmarks.commonsense import data as commonsense
from harness.config import compose
from harness.methods import rosa
from harness.methods.rosa import SPARSE_FILE
from harness.methods.sparse import SparseDelta, topk_mask
from harness.train import RunContext, TrainingData, make_loader, train
from method_presets import preset  # noqa: E402  (tests/method_presets.py)

QUIET = RunContext(seed=0, progress=False)

TARGETS = ["q_proj", "v_proj", "up_proj"]


@pytest.fixture
def loader(tokenizer, data_dir):
    task = compose(["task.train_subset=12", "task.val_set_size=0"]).task
    records, _ = commonsense.training_records(task, seed=0)
    examples = [commonsense.tokenize(r, tokenizer, 96, train_on_inputs=True) for r in records]
    return make_loader(examples, tokenizer, 4, shuffle=False, seed=0)


def context(loader):
    training = compose(["training.lr=1e-3", "training.batch_size=4", "training.micro_batch_size=4"]).training
    return {"loader": loader, "device": torch.device("cpu"), "training": training, "accumulation": 1, "total_steps": 10}


def test_sparse_delta_matches_the_dense_masked_reference():
    torch.manual_seed(0)
    d_out, d_in = 24, 16
    rows, cols = topk_mask(torch.rand(d_out, d_in), 0.1)
    S = SparseDelta(d_out, d_in, rows, cols)
    with torch.no_grad():
        S.values.copy_(torch.randn(S.nnz))
    dense = S.to_dense().detach().requires_grad_(True)  # the reference: a dense matrix that is zero off the mask
    x = torch.randn(2, 5, d_in, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    g = torch.randn(2, 5, d_out)
    (S(x) * g).sum().backward()
    (x_ref @ dense.t() * g).sum().backward()
    torch.testing.assert_close(S(x), x_ref @ dense.t())
    torch.testing.assert_close(x.grad, x_ref.grad)
    r, c = S.indices()
    torch.testing.assert_close(S.values.grad, dense.grad[r, c])  # the dense gradient restricted to the mask
    assert S.nnz == math.floor(0.1 * d_out * d_in)


def test_init_is_a_no_op_and_counts_add_up(tiny_model, inputs, loader):
    with torch.no_grad():
        before = tiny_model(**inputs).logits
    lora = methods.apply(copy.deepcopy(tiny_model), "lora", r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
    lora_count = methods.trainable_parameters(lora.model)
    adapted = methods.apply(tiny_model, "rosa", **preset("rosa", dropout=0.0, r=4, density=0.05, mask_warmup_steps=2,
                                                         mask_grad_batches=2, target_modules=TARGETS))
    model = adapted.model
    adapted.method.before_training(adapted, context(loader))
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, atol=1e-5, rtol=1e-4)
    cfg = tiny_model.config
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    shapes = [(cfg.hidden_size, cfg.hidden_size), (kv, cfg.hidden_size), (cfg.intermediate_size, cfg.hidden_size)]
    sparse = cfg.num_hidden_layers * sum(math.floor(0.05 * o * i) for o, i in shapes)
    assert methods.trainable_parameters(model) == lora_count + sparse


def test_mask_is_the_topk_of_the_per_example_fisher(tiny_model, loader):
    density = 0.03
    reference_model = copy.deepcopy(tiny_model)
    adapted = methods.apply(tiny_model, "rosa", **preset("rosa", dropout=0.0, r=2, density=density,
                                                         mask_warmup_steps=0, mask_grad_batches=3,
                                                         target_modules=TARGETS))
    model = adapted.model
    adapted.method.before_training(adapted, context(loader))
    # Independently: autograd's dense weight gradient of each target matrix for each example alone (micro-batch 1,
    # as the official hook sees it), squared, summed over the examples of the batches.
    for p in reference_model.parameters():
        p.requires_grad_(False)
    weights = {n.removesuffix(".weight"): p for n, p in reference_model.named_parameters() if n.endswith(tuple(f"{t}.weight" for t in TARGETS))}
    for p in weights.values():
        p.requires_grad_(True)
    acc = {n: torch.zeros_like(p) for n, p in weights.items()}
    batches = iter(loader)
    for _ in range(3):
        batch = next(batches)
        for i in range(batch["input_ids"].shape[0]):
            reference_model.zero_grad()
            reference_model(**{k: v[i:i + 1] for k, v in batch.items()}).loss.backward()
            for n, p in weights.items():
                acc[n] += p.grad.square()
    state = rosa.state(adapted)
    assert set(state.masks) == set(acc)
    for name, score in acc.items():
        k = math.floor(density * score.numel())
        rows, cols = state.masks[name]
        assert rows.numel() == k  # density exact
        expected = set(torch.topk(score.flatten(), k).indices.tolist())
        got = set((rows * score.shape[1] + cols).tolist())
        kth = torch.topk(score.flatten(), k).values[-1]
        # identical up to ties at the k-th value
        assert all(score.flatten()[i] >= kth * (1 - 1e-4) for i in got)
        assert len(expected & got) >= k - 1


def test_the_fisher_score_does_not_depend_on_the_micro_batch_size(tiny_model, tokenizer):
    """The per-example Fisher of a batch is the same in one micro-batch, in halves or one example at a time (the
    official micro-batch 1); the squared batch gradient (`batch_squared`, not the paper's) is another score."""
    from harness.methods.rosa import accumulate_gradient_scores

    task = compose(["task.train_subset=8", "task.val_set_size=0"]).task
    records, _ = commonsense.training_records(task, seed=0)
    examples = [commonsense.tokenize(r, tokenizer, 256, train_on_inputs=False) for r in records][:4]  # unequal lengths
    whole = next(iter(make_loader(examples, tokenizer, 4, shuffle=False, seed=0)))
    halves = list(make_loader(examples, tokenizer, 2, shuffle=False, seed=0))
    singles = list(make_loader(examples, tokenizer, 1, shuffle=False, seed=0))
    adapted = methods.apply(tiny_model, "rosa", **preset("rosa", dropout=0.0, r=2, density=0.05,
                                                         target_modules=TARGETS))
    model = adapted.model
    targets = rosa.state(adapted).targets
    one = accumulate_gradient_scores(model, [[whole]], targets, "fisher")
    split = accumulate_gradient_scores(model, [halves], targets, "fisher")
    official = accumulate_gradient_scores(model, [singles], targets, "fisher")
    squared = accumulate_gradient_scores(model, [[whole]], targets, "batch_squared")
    for name in targets:
        torch.testing.assert_close(one[name], official[name], rtol=1e-4, atol=1e-12)
        torch.testing.assert_close(split[name], official[name], rtol=1e-4, atol=1e-12)
        assert one[name].device.type == "cpu"  # the dense buffers live on the CPU
        assert not torch.allclose(squared[name] / squared[name].sum(), one[name] / one[name].sum(), rtol=1e-2)


def test_the_mask_warm_up_runs_on_the_runs_optimizer_and_schedule(tiny_model, loader):
    adapted = methods.apply(tiny_model, "rosa", **preset("rosa", dropout=0.0, r=2, density=0.02, mask_warmup_steps=3,
                                                         lr_lowrank=7e-4, target_modules=TARGETS))
    model = adapted.model
    ctx = context(loader)
    ctx["training"] = compose(["training.lr=2e-4", "training.warmup_steps=4", "training.weight_decay=0.0",
                               "training.batch_size=4", "training.micro_batch_size=4"]).training
    adapted.method.before_training(adapted, ctx)
    state = rosa.state(adapted)
    # the low-rank group at its own rate, ramping over the run's 4 warm-up steps (not a constant rate)
    assert [lrs[0] for lrs in state.warmup_lrs] == pytest.approx([0.0, 7e-4 / 4, 7e-4 / 2])
    assert state.warmup_weight_decay == [0.0]  # the run's, not AdamW's default 0.01


def test_rosa_with_zero_density_is_lora(tiny_model, tokenizer, loader):
    examples = list(loader.dataset)
    cfg = compose(["training.batch_size=4", "training.micro_batch_size=4", "training.max_steps=3", "training.warmup_steps=1"]).training
    outputs = []
    for name, opts in (("lora", {}), ("rosa", {"density": 0.0})):
        torch.manual_seed(0)
        adapted = methods.apply(copy.deepcopy(tiny_model), name, **preset(name, r=4, alpha=8, dropout=0.0,
                                                                        target_modules=TARGETS, **opts))
        model = adapted.model
        out = train(adapted, TrainingData(examples, [], tokenizer), cfg, QUIET)
        batch = next(iter(loader))
        with torch.no_grad():
            outputs.append(out["model"].eval()(**batch).logits)
    torch.testing.assert_close(outputs[0], outputs[1])


def test_spa_trains_only_masked_entries(tiny_model, tokenizer, loader):
    original = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    adapted = methods.apply(tiny_model, "spa", **preset("spa", density=0.02, mask_grad_batches=2,
                                                        target_modules=TARGETS))
    model = adapted.model
    cfg = compose(["training.batch_size=4", "training.micro_batch_size=4", "training.max_steps=3", "training.warmup_steps=1",
                   "training.lr=1e-2"]).training
    out = train(adapted, TrainingData(list(loader.dataset), [], tokenizer), cfg, QUIET)
    masks = {n: m for n, m in rosa.state(adapted).masks.items()}
    merged = methods.merge(adapted)
    for name, p in merged.named_parameters():
        changed = (p.detach() != original[name])
        module = name.removesuffix(".weight")
        if module in masks:
            rows, cols = masks[module]
            allowed = torch.zeros_like(changed)
            allowed[rows, cols] = True
            assert changed.any() and not (changed & ~allowed).any(), name
        else:
            assert not changed.any(), name


def test_save_reload_merge_and_mask_reuse(tiny_cfg, tokenizer, inputs, loader, tmp_path):
    from harness.models import load_model

    torch.manual_seed(0)
    adapted = methods.apply(load_model(tiny_cfg.model, tokenizer), "rosa", **preset("rosa", dropout=0.0, r=4,
                                                                                    density=0.05, mask_warmup_steps=1,
                                                                                    mask_grad_batches=1,
                                                                                    target_modules=TARGETS))
    model = adapted.model
    adapted.method.before_training(adapted, context(loader))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        expected = model.eval()(**inputs).logits
    methods.save(adapted, tmp_path / "rosa")
    assert (tmp_path / "rosa" / SPARSE_FILE).is_file()
    torch.manual_seed(0)
    reloaded_adapted = methods.load(load_model(tiny_cfg.model, tokenizer), tmp_path / "rosa")
    reloaded = reloaded_adapted.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(methods.merge(reloaded_adapted)(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    # another run reuses the saved masks instead of generating them
    reuse_adapted = methods.apply(load_model(tiny_cfg.model, tokenizer), "rosa", **preset("rosa", dropout=0.0, r=4,
                                                                                          density=0.05,
                                                                                          target_modules=TARGETS,
                                                                                          masks=str(tmp_path / "rosa")))
    reuse = reuse_adapted.model
    for name, (rows, cols) in rosa.state(adapted).masks.items():
        r2, c2 = rosa.state(reuse_adapted).masks[name]
        assert torch.equal(rows, r2) and torch.equal(cols, c2)


def test_rosa_options_are_checked(tiny_model):
    from harness.methods.base import MethodConfigError

    with pytest.raises(MethodConfigError, match="density must be in"):
        methods.apply(copy.deepcopy(tiny_model), "rosa", **preset("rosa", dropout=0.0, density=2.0,
                                                                  target_modules=TARGETS))
    with pytest.raises(MethodConfigError, match="method=spa is RoSA with r=0"):
        methods.apply(copy.deepcopy(tiny_model), "spa", **preset("spa", r=4, target_modules=TARGETS))
    with pytest.raises(MethodConfigError, match="no such file"):
        methods.apply(copy.deepcopy(tiny_model), "rosa", **preset("rosa", dropout=0.0, masks="/nonexistent/masks",
                                                                  target_modules=TARGETS))


def test_sparse_delta_trains_under_bf16_autocast():
    """Training on CUDA runs under bf16 autocast, where the sparse kernels have no bf16 product; the sparse part
    computes in fp32 outside autocast (found on an H100: cuSPARSE refused the mixed product)."""
    from harness.methods.sparse import SparseDelta, topk_mask

    torch.manual_seed(0)
    rows, cols = topk_mask(torch.rand(8, 6), 0.3)
    delta = SparseDelta(8, 6, rows, cols)
    with torch.no_grad():
        delta.values.normal_()
    x = torch.randn(3, 6)
    reference = delta(x)
    reference.sum().backward()
    grad_fp32 = delta.values.grad.clone()
    delta.values.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = delta(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.allclose(out.float(), reference, atol=0.05)
    assert torch.allclose(delta.values.grad, grad_fp32, atol=0.05)


def test_rosa_trains_a_b_and_s_in_bf16_when_asked_and_fp32_by_default(tiny_model, tokenizer, loader):
    examples = list(loader.dataset)
    cfg = compose(["training.batch_size=4", "training.micro_batch_size=4", "training.max_steps=2", "training.warmup_steps=0"]).training
    dtypes = {}
    for choice in ("fp32", "bf16"):
        adapted = methods.apply(copy.deepcopy(tiny_model), "rosa", **preset("rosa", dropout=0.0, r=2, density=0.02,
                                                                            mask_warmup_steps=1,
                                                                            target_modules=TARGETS,
                                                                            adapter_dtype=choice))
        model = adapted.model
        out = train(adapted, TrainingData(examples, [], tokenizer), cfg, QUIET)
        dtypes[choice] = out["stats"]["trainable_dtypes"]
        values = next(m.rosa_sparse.values for m in rosa.state(adapted).targets.values())
        assert values.dtype == (torch.bfloat16 if choice == "bf16" else torch.float32) and values.abs().sum() > 0
    assert dtypes == {"fp32": ["float32"], "bf16": ["bfloat16"]}
    with pytest.raises(methods.MethodConfigError, match="adapter_dtype must be one of"):
        methods.apply(copy.deepcopy(tiny_model), "rosa", **preset("rosa", dropout=0.0, r=2, target_modules=TARGETS,
                                                                  adapter_dtype="fp8"))
