"""Training throughput: useful tokens per second, the share of computed positions that were padding, and on CUDA a
model-FLOPs-utilisation estimate.

FLOPs per token from the model's shapes: a forward pass costs 2 FLOPs per weight of the model's matrices; the
backward pass costs 2 more for the activations' gradients and, when the model's own weights train (full FT), 2
more for theirs: ~4N per token for an adapter on a frozen model, ~6N for full fine-tuning (the adapter's own
FLOPs and attention's are left out, as in the usual 6N estimate). MFU = that x useful tokens/s / the device's
peak dense bf16 FLOPs.
"""

from __future__ import annotations


def flops_per_token(matrix_params: int, trains_all_weights: bool) -> float:
    return (6.0 if trains_all_weights else 4.0) * matrix_params


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s (no sparsity) of the GPU CUDA names so (`conf/gpu/`); None for one not listed (no MFU)."""
    from harness.gpus import by_cuda_name

    spec = by_cuda_name(device_name)
    return spec.peak_flops if spec else None


def summary(useful: int, computed: int, seconds: float, matrix_params: int, trains_all_weights: bool,
            device_name: str | None = None, devices: int = 1) -> dict:
    """{"useful_tokens", "computed_tokens", "padding_share", "useful_tokens_per_s", "mfu"} (mfu: None off CUDA or
    on a device without a known peak). Tokens of all `devices` together; the MFU is against all their peaks."""
    per_s = useful / seconds if seconds > 0 else None
    peak = peak_flops(device_name) * devices if peak_flops(device_name) else None
    mfu = flops_per_token(matrix_params, trains_all_weights) * per_s / peak if peak and per_s else None
    return {"useful_tokens": useful, "computed_tokens": computed,
            "padding_share": 1.0 - useful / computed if computed else None,
            "useful_tokens_per_s": round(per_s, 1) if per_s else None, "mfu": round(mfu, 4) if mfu else None}
