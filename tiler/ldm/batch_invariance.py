"""Batch invariance on CPU: a tile's result must not depend on how tiles are batched, so that the
output does not depend on batch size, worker count or restart point (bit for bit)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


# --- batch invariance on CPU
# -----------------------------------------------------------------------
def enable_cpu_determinism() -> None:
    """Switch oneDNN (mkldnn) off, process-wide: its CPU convolution kernels pick algorithms by
    batch size, so a sample's result would depend on its batch. Costs CPU conv speed."""
    import torch

    torch.backends.mkldnn.enabled = False


def make_batch_invariant(module):
    """Make ``module``'s per-sample results independent of batch size on CPU, bit for bit (with
    ``enable_cpu_determinism``). In place; returns the module; calling it twice is harmless.

    (a) ``time_embedding`` and every resnet ``time_emb_proj`` run on row 0 only, expanded to the
        batch. CONTRACT: the UNet is called with ONE timestep per call (tiler steps a whole region's
        tiles in lockstep), so all rows of the time embedding are equal; a batch mixing timesteps
        raises ValueError (checked on CPU).
    (b) every ``torch.nn.GroupNorm`` is replaced by a group norm computed with ``torch.var_mean``
        over each (sample, group) row (same parameters).
    (c) every ``Conv2d`` gets its input made contiguous (a forward pre-hook).
    """
    import torch

    first_row_broadcast, var_mean_group_norm = batch_invariant_modules()
    if getattr(module, "_tiler_batch_invariant", False):
        return module
    # (a) time embedding and its projections: row 0 only
    if isinstance(getattr(module, "time_embedding", None), torch.nn.Module):
        module.time_embedding = first_row_broadcast(module.time_embedding)
    for sub in list(module.modules()):
        projection = getattr(sub, "time_emb_proj", None)
        if isinstance(projection, torch.nn.Module) and not isinstance(
            projection, first_row_broadcast
        ):
            sub.time_emb_proj = first_row_broadcast(projection)
    # (b) group norms
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.GroupNorm):
                setattr(parent, name, var_mean_group_norm(child))
    # (c) contiguous conv inputs
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            sub.register_forward_pre_hook(_contiguous_input)
    module._tiler_batch_invariant = True
    return module


def _contiguous_input(_module, args):
    return (args[0].contiguous(), *args[1:])


@functools.cache
def batch_invariant_modules() -> tuple[type, type]:
    """The module classes make_batch_invariant inserts: (FirstRowBroadcast, VarMeanGroupNorm)
    (defined on first use: torch is imported lazily)."""
    import torch

    class FirstRowBroadcast(torch.nn.Module):
        """Runs ``inner`` on row 0 of its input and expands the result to the batch: valid when all
        rows are equal (one timestep per UNet call), and independent of the batch size."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x, *args, **kwargs):
            if x.device.type == "cpu" and x.shape[0] > 1 and not torch.equal(x, x[:1].expand_as(x)):
                raise ValueError(
                    "a batch-invariant UNet takes one timestep per call: the rows of "
                    "its time embedding differ"
                )
            out = self.inner(x[:1], *args, **kwargs)
            return out.expand(x.shape[0], *out.shape[1:])

    class VarMeanGroupNorm(torch.nn.Module):
        """GroupNorm computed per (sample, group) row with ``torch.var_mean``: the same result for a
        sample whatever the batch size (torch's CPU group norm kernel splits its reductions by
        batch). Keeps the original module's weight and bias."""

        def __init__(self, norm: torch.nn.GroupNorm):
            super().__init__()
            self.num_groups = norm.num_groups
            self.num_channels = norm.num_channels
            self.eps = norm.eps
            self.affine = norm.affine
            self.weight = norm.weight
            self.bias = norm.bias

        def forward(self, x):
            n = x.shape[0]
            rows = x.reshape(n * self.num_groups, -1)
            low_precision = rows.dtype in (torch.float16, torch.bfloat16)
            if low_precision:
                rows = rows.float()
            var, mean = torch.var_mean(rows, dim=1, unbiased=False, keepdim=True)
            out = ((rows - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape).to(x.dtype)
            if self.affine:
                shape = (1, self.num_channels) + (1,) * (x.dim() - 2)
                out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
            return out

        def extra_repr(self):
            return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"

    return FirstRowBroadcast, VarMeanGroupNorm
