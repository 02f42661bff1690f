"""
One matmul per group of rows, every group at once, for the MoE experts (model.MoE.dispatch_grouped).

torch._grouped_mm runs every expert in one kernel with the group boundaries in a device tensor, so nothing waits
for the host. It is wrapped in a custom op because torch's own shape function (used on the meta device and by
torch.compile) accepts only bf16, while the kernel itself runs fp32 too. The op has its own backward (two more
grouped matmuls) and FLOP formula, so torch's FLOP counter sees it.
"""
import torch
import torch.utils.flop_counter


@torch.library.custom_op('modgpt::grouped_mm', mutates_args=())
def grouped_mm(a: torch.Tensor, b: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """a (rows, in) @ b (groups, in, out) -> (rows, out), rows ends[g-1]:ends[g] by b[g]; or, with a 2-D b (the
    weight gradient), a (in, rows) @ b (rows, out) -> (groups, in, out), one product per group of rows."""
    if a.dtype == torch.float64:  # no float64 kernel: a loop, for gradient checks
        starts = [0] + ends.tolist()[:-1]
        if b.dim() == 2:
            return torch.stack([a[:, s:e] @ b[s:e] for s, e in zip(starts, ends.tolist())])
        return torch.cat([a[s:e] @ b[g] for g, (s, e) in enumerate(zip(starts, ends.tolist()))])
    return torch._grouped_mm(a, b, offs=ends)


@grouped_mm.register_fake
def _(a, b, ends):
    if b.dim() == 2:
        return a.new_empty(ends.size(0), a.size(0), b.size(1))
    return a.new_empty(a.size(0), b.size(-1))


@torch.utils.flop_counter.register_flop_formula(torch.ops.modgpt.grouped_mm)
def _(a_shape, b_shape, ends_shape, **kwargs):  # 2*m*n*k over all rows, the padding included
    return 2 * a_shape[0] * a_shape[1] * b_shape[-1]


def _grouped_mm_backward(ctx, grad):
    a, b, ends = ctx.saved_tensors
    grad = grad.contiguous()
    return grouped_mm(grad, b.transpose(-2, -1), ends), grouped_mm(a.t(), grad, ends), None


grouped_mm.register_autograd(_grouped_mm_backward,
                             setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))
