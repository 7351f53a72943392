"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2`: applies the methods whose set-up reads
the weights (PiSSA and MiLoRA's SVD, RoSA's masks) as a run does, and prints from each process how often it
computed them and a digest of the weights it holds (each process into its own file under the folder given as the
first argument: two processes printing to one pipe can interleave their lines)."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from harness import distributed, methods
from harness.config import compose
from harness.methods import rosa
from harness.models import load_model, load_tokenizer
from harness.recipe import apply_method
from harness.train import make_loader
from method_presets import preset  # noqa: E402  (tests/method_presets.py)


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main() -> None:
    torch.set_num_threads(1)
    distributed.start(cpu=True)
    svd_calls = {"n": 0}
    real_svd = torch.linalg.svd

    def counted_svd(*args, **kwargs):
        svd_calls["n"] += 1
        return real_svd(*args, **kwargs)

    torch.linalg.svd = counted_svd
    mask_calls = {"n": 0}
    real_scores = rosa.accumulate_gradient_scores

    def counted_scores(*args, **kwargs):
        mask_calls["n"] += 1
        return real_scores(*args, **kwargs)

    rosa.accumulate_gradient_scores = counted_scores

    cfg = compose(["model=tiny-llama"])
    tokenizer = load_tokenizer(cfg.model)
    report = {"rank": distributed.rank()}
    targets = ["q_proj", "v_proj"]
    for method, options in (("pissa", dict(r=2, alpha=4, dropout=0.0)), ("milora", dict(r=2, alpha=4, dropout=0.0))):
        torch.manual_seed(100 + distributed.rank())  # different random states: only the shared values can agree
        adapted = apply_method(load_model(cfg.model, tokenizer), method, (), dict(options, target_modules=targets))
        report[method] = {"digest": digest(adapted.model), "svd_calls": svd_calls["n"]}
        svd_calls["n"] = 0

    torch.manual_seed(0)
    adapted = methods.apply(load_model(cfg.model, tokenizer), "rosa", **preset("rosa", dropout=0.0, r=2, density=0.05,
                                                                               target_modules=targets,
                                                                               mask_warmup_steps=2))
    adapted.model.config.use_cache = False
    examples = [{"input_ids": list(range(5 + i, 15 + 2 * i)), "labels": list(range(5 + i, 15 + 2 * i))} for i in range(8)]
    loader = make_loader(examples, tokenizer, 2, shuffle=True, seed=distributed.rank(), batching="packed")
    training = compose(["training.warmup_steps=1"]).training
    adapted.method.before_training(adapted, {"loader": loader, "device": torch.device("cpu"),
                                                     "training": training, "accumulation": 1, "total_steps": 4,
                                                     "on_main": distributed.on_main})
    masks = {name: m.rosa_sparse.indices() for name, m in rosa.state(adapted).targets.items()}
    h = hashlib.sha256()
    for name in sorted(masks):
        h.update(torch.stack(masks[name]).numpy().tobytes())
    report["rosa"] = {"mask_digest": h.hexdigest()[:16], "mask_generations": mask_calls["n"]}
    (Path(sys.argv[1]) / f"report-{report['rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
