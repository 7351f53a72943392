"""A trainable sparse weight delta S with a fixed mask, stored sparse (values + CSR indices).

No library provides this with current peft (RoSA's authors ship a peft-0.7 fork with CUDA-only kernels), so it
is written here. The forward adds x @ S^T with a sparse-dense product; the backward computes
- grad_x = grad_out @ S, again sparse-dense (S^T kept as its own CSR), and
- grad_values = (grad_out^T @ x) sampled at the mask (SDDMM, `torch.sparse.sampled_addmm`),
so no dense d_out x d_in tensor exists during training. The product runs in float32 (the CPU kernels have no
bf16 path, and fp32 accumulation is what the sparse values want anyway).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _csr(rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow_indices, col_indices, order) of the CSR form of the (rows, cols) pattern."""
    order = torch.argsort(rows * (cols.max().item() + 1 if cols.numel() else 1) + cols)
    rows, cols = rows[order], cols[order]
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow, cols, order


class _SparseDeltaFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, values, crow, col, t_crow, t_col, t_order, shape):
        S = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
        ctx.save_for_backward(x2d, values, crow, col, t_crow, t_col, t_order)
        ctx.shape = shape
        return torch.mm(S, x2d.t()).t()

    @staticmethod
    def backward(ctx, grad_out):
        x2d, values, crow, col, t_crow, t_col, t_order = ctx.saved_tensors
        d_out, d_in = ctx.shape
        grad_out = grad_out.float().contiguous()
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            S_t = torch.sparse_csr_tensor(t_crow, t_col, values[t_order], (d_in, d_out), check_invariants=False)
            grad_x = torch.mm(S_t, grad_out.t()).t()
        if ctx.needs_input_grad[1]:
            pattern = torch.sparse_csr_tensor(crow, col, torch.zeros_like(values), ctx.shape, check_invariants=False)
            grad_values = torch.sparse.sampled_addmm(pattern, grad_out.t().contiguous(), x2d, beta=0.0).values()
        return grad_x, grad_values, None, None, None, None, None, None


class SparseDelta(nn.Module):
    """S [d_out, d_in] with trainable values on a fixed mask; S starts at 0."""

    def __init__(self, d_out: int, d_in: int, rows: torch.Tensor, cols: torch.Tensor, device=None):
        super().__init__()
        self.shape = (d_out, d_in)
        rows, cols = rows.to(device=device, dtype=torch.int64), cols.to(device=device, dtype=torch.int64)
        crow, col, _ = _csr(rows, cols, d_out)
        sorted_rows = torch.repeat_interleave(torch.arange(d_out, device=rows.device), torch.diff(crow))
        # The pattern of S^T, and where each of its entries sits in S's value order.
        t_crow, t_col, t_order = _csr(col, sorted_rows, d_in)
        for name, tensor in (("crow", crow), ("col", col), ("t_crow", t_crow), ("t_col", t_col), ("t_order", t_order)):
            self.register_buffer(name, tensor, persistent=False)
        self.values = nn.Parameter(torch.zeros(col.numel(), dtype=torch.float32, device=rows.device))

    function = _SparseDeltaFunction

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the stored values, in value order."""
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.crow.device), torch.diff(self.crow))
        return rows, self.col

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.shape[1]).to(torch.float32)
        # Outside autocast: under bf16 autocast (training on CUDA) `mm` would cast to bf16, which the sparse
        # kernels lack (MKL on the CPU; cuSPARSE refuses the mixed fp32-S / bf16-gradient product).
        with torch.autocast(x.device.type, enabled=False):
            # values kept in bf16 (RoSA's bf16 option) enter the product in fp32; their gradient returns in bf16
            out = self.function.apply(x2d, self.values.float(), self.crow, self.col, self.t_crow, self.t_col,
                                      self.t_order, self.shape)
        return out.reshape(*x.shape[:-1], self.shape[0]).to(x.dtype)

    def to_dense(self) -> torch.Tensor:
        rows, cols = self.indices()
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        dense[rows, cols] = self.values
        return dense


class _ShapesOnlyFunction(torch.autograd.Function):
    """`_SparseDeltaFunction` with the same saved tensors and the same allocations in both passes, but no sparse
    kernels (they need the mask's values, and fake tensors have none): the planner's stand-in
    (`PlannedSparseDelta`); `tests/test_plan.py` checks that it saves what the real function saves."""

    @staticmethod
    def forward(ctx, x2d, values, crow, col, t_crow, t_col, t_order, shape):
        ctx.save_for_backward(x2d, values, crow, col, t_crow, t_col, t_order)
        ctx.shape = shape
        return x2d.new_empty(shape[0], x2d.shape[0]).t()

    @staticmethod
    def backward(ctx, grad_out):
        x2d, values, *_ = ctx.saved_tensors
        d_out, d_in = ctx.shape
        grad_out = grad_out.float().contiguous()
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            transposed_values = values.new_empty(values.shape)  # values[t_order]
            grad_x = grad_out.new_empty(d_in, grad_out.shape[0]).t()
            del transposed_values
        if ctx.needs_input_grad[1]:
            pattern_values = torch.zeros_like(values)
            grad_values = values.new_empty(values.shape)
            del pattern_values
        return grad_x, grad_values, None, None, None, None, None, None


class PlannedSparseDelta(SparseDelta):
    """A `SparseDelta` of `nnz` entries with the real one's parameters, buffers and step memory, and no mask
    (any positions): what `harness.plan` traces for a mask that a run chooses from gradients."""

    def __init__(self, d_out: int, d_in: int, nnz: int, device=None):
        nn.Module.__init__(self)
        self.shape = (d_out, d_in)
        for name, size in (("crow", d_out + 1), ("col", nnz), ("t_crow", d_in + 1), ("t_col", nnz), ("t_order", nnz)):
            self.register_buffer(name, torch.zeros(size, dtype=torch.int64, device=device), persistent=False)
        self.values = nn.Parameter(torch.zeros(nnz, dtype=torch.float32, device=device))

    function = _ShapesOnlyFunction


def topk_mask(score: torch.Tensor, density: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the floor(density * numel) largest entries of `score` (RoSA's per-matrix mask)."""
    k = int(density * score.numel())
    if k == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=score.device)
        return empty, empty
    flat = torch.topk(score.reshape(-1).float(), k, sorted=False).indices
    return flat // score.shape[1], flat % score.shape[1]
