"""LoReFT / DiReFT through pyreft on a tiny BERT classifier: the count is 2*r*d + r per intervention, the
interventions change the output, save / reload gives the same outputs, a budget solves r, a causal LM is refused
before training, and a GLUE run trains and scores with it."""

import pytest
import torch

pytest.importorskip("pyreft", reason="pyreft is not installed (make setup installs it with --no-deps)")

from harness import methods  # noqa: E402
from harness.config import compose, method_options  # noqa: E402
from harness.models import load_model, load_tokenizer  # noqa: E402
from method_presets import preset  # noqa: E402  (tests/method_presets.py)

HEAD = {"kind": "sequence_classification", "num_labels": 2}
HIDDEN, BLOCKS = 32, 6  # tiny-bert


def fresh():
    torch.manual_seed(0)
    return load_model(compose(["model=tiny-bert"]).model, head=HEAD).eval()


@pytest.fixture(scope="module")
def batch():
    tokenizer = load_tokenizer(compose(["model=tiny-bert"]).model)
    return dict(tokenizer(["a fine film", "the worst plot I have seen in years"], return_tensors="pt", padding=True))


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("name", ["loreft", "direft"])
@pytest.mark.parametrize("positions,share,groups", [("f1+l1", False, 2), ("f1+l1", True, 1), ("l2", False, 1)])
def test_reft_counts_intervenes_and_round_trips(tmp_path, batch, name, positions, share, groups):
    cfg = compose(["model=tiny-bert", f"method={name}", "method.r=2", f"method.positions={positions}",
                   f"method.share_weights={share}"])
    reference = logits(fresh(), batch)
    adapted = methods.apply(fresh(), name, head_modules=("classifier",), **method_options(cfg))
    model = adapted.model.eval()
    head = methods.trainable_parameters(model, within=("classifier",))
    assert head == HIDDEN * 2 + 2
    assert methods.trainable_parameters(model) - head == BLOCKS * groups * (2 * 2 * HIDDEN + 2)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # moved as training would move them
        for n, p in model.named_parameters():
            if p.requires_grad and "classifier" not in n:
                p.add_(0.5 * torch.randn(p.shape, generator=generator))
    intervened = logits(model, batch)
    assert not torch.allclose(intervened, reference, atol=1e-4)
    methods.save(adapted, tmp_path / "saved")
    reloaded_adapted = methods.load(fresh(), tmp_path / "saved")
    reloaded = reloaded_adapted.model.eval()
    torch.testing.assert_close(logits(reloaded, batch), intervened, atol=1e-5, rtol=1e-5)
    assert not adapted.method.can_merge(adapted)


def test_reft_budget_and_refusals():
    from harness import budget
    from harness.models import empty_model

    cfg = compose(["model=tiny-bert", "method=loreft", "budget.params=1000"])
    architecture = empty_model(cfg.model, HEAD)
    solved, record = budget.solved_for_model(cfg, architecture, methods.total_parameters(architecture))
    real_adapted = methods.apply(fresh(), "loreft", **method_options(solved))
    real = real_adapted.model
    assert methods.trainable_parameters(real) == record["predicted"] and record["value"] == solved.method.r
    llama = load_model(compose(["model=tiny-llama"]).model)
    with pytest.raises(methods.MethodConfigError, match="classification tasks here"):
        methods.validate(llama, "loreft", **method_options(compose(["model=tiny-llama", "method=loreft"])))
    with pytest.raises(methods.MethodConfigError, match="positions='x3'"):
        methods.apply(fresh(), "loreft", **preset("loreft", r=1, positions="x3"))
    with pytest.raises(methods.MethodConfigError, match=r"layers \[9\] do not exist"):
        methods.apply(fresh(), "loreft", **preset("loreft", r=1, layers=[9]))


@pytest.mark.slow
def test_a_glue_run_trains_and_scores_with_loreft(tmp_path, data_dir):
    from harness.run import run_one

    record = run_one(compose(["task=glue", "protocol=glue_dev", "task.dataset=sst2", "model=tiny-bert", "method=loreft",
                              "task.train_subset=16", "task.test_subset=8", "training.micro_batch_size=8",
                              "training.batch_size=8", "training.max_steps=2", "training.warmup_steps=0",
                              "meta.run.progress=false", f"meta.run.results_dir={tmp_path}"]))
    assert record["status"] == "finished" and record["params"]["trainable"] == BLOCKS * 2 * (2 * HIDDEN + 1)
    assert record["eval"]["merged"] is False and record["eval"]["metrics"]["sst2"]["n"] == 8
