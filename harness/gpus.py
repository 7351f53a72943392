"""GPU specs (memory, dense bf16 peak, memory bandwidth): the `conf/gpu/` group, one file per GPU, read by the
planner (`harness.plan`, `gpu=h100-80gb`) and by the MFU of a result (the GPU a run found, by its CUDA name)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from omegaconf import OmegaConf

from harness.config import CONFIG_DIR
from harness.errors import ConfigError

GPU_DIR = CONFIG_DIR / "gpu"


@dataclass(frozen=True)
class GpuSpec:
    name: str
    label: str
    cuda_names: tuple[str, ...]
    memory_mib: int
    bf16_tflops: float
    memory_tb_s: float

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12


def of(node) -> GpuSpec:
    """The spec from a composed `gpu` node (or a file's contents)."""
    try:
        return GpuSpec(str(node["name"]), str(node["label"]), tuple(str(n) for n in node["cuda_names"]),
                       int(node["memory_mib"]), float(node["bf16_tflops"]), float(node["memory_tb_s"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"gpu {dict(node).get('name', '?')}: {exc!r} (a conf/gpu file names name, label, "
                          "cuda_names, memory_mib, bf16_tflops, memory_tb_s)") from None


@lru_cache(maxsize=1)
def known() -> tuple[GpuSpec, ...]:
    return tuple(of(OmegaConf.to_container(OmegaConf.load(path))) for path in sorted(GPU_DIR.glob("*.yaml")))


def by_cuda_name(device_name: str | None) -> GpuSpec | None:
    """The spec whose CUDA names occur in `device_name` (torch.cuda.get_device_name), or None."""
    name = (device_name or "").upper()
    return next((g for g in known() if any(n.upper() in name for n in g.cuda_names)), None) if name else None
