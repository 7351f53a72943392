"""Run by tests/test_cuda.py under `torchrun --nproc_per_node 1` on a GPU (not a test module itself): two steps of
full fine-tuning on the tiny Llama three ways, the plain model, the harness's FSDP2 plugin through accelerate
(harness.sharding, the weights gathered back after) and torch's DDP, over one NCCL process group; the weights
after them must agree. Prints "fsdp2 ok" and "ddp ok"."""

from __future__ import annotations

import copy

import torch
from accelerate import Accelerator, PartialState

from harness import sharding
from harness.config import compose
from harness.models import meta_copy
from harness.recipe import Recipe


def two_steps(model, optimizer, batch, backward=None) -> None:
    for _ in range(2):
        loss = model(**batch).loss
        (backward or (lambda value: value.backward()))(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def close(a, b, what: str) -> None:
    for (name, p), (_, q) in zip(sorted(a.items()), sorted(b.items())):
        torch.testing.assert_close(p.float(), q.float(), rtol=1e-3, atol=1e-5, msg=f"{what}: {name}")


def main() -> None:
    state = PartialState()  # torchrun's environment: an NCCL process group on the GPU
    assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl", state
    recipe = Recipe(compose(["model=tiny-llama", "method=full"]))
    torch.manual_seed(0)
    base, tokenizer = recipe.load(seeded=False)
    base.config.use_cache = False
    batch = {k: v.cuda() for k, v in tokenizer(["The answer to the question is true", "Below is an instruction"],
                                                return_tensors="pt", padding=True).items()}
    batch["labels"] = batch["input_ids"].clone()

    plain = copy.deepcopy(base)
    two_steps(plain, torch.optim.AdamW(plain.parameters(), lr=1e-3), batch)
    expected = {n: p.detach() for n, p in plain.named_parameters()}

    model = copy.deepcopy(base)
    skeleton = meta_copy(model)
    plugin = sharding.plugin({"name": "fsdp2"}, "no")
    accelerator = Accelerator(fsdp_plugin=plugin)
    wrapped, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert accelerator.state.distributed_type.name == "FSDP", accelerator.state.distributed_type
    two_steps(wrapped, optimizer, batch, accelerator.backward)
    close(dict(sharding.gathered(wrapped, skeleton, "cuda").named_parameters()), expected, "fsdp2")
    print("fsdp2 ok", flush=True)

    model = copy.deepcopy(base)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    two_steps(ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-3), batch)
    close(dict(model.named_parameters()), expected, "ddp")
    print("ddp ok", flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
