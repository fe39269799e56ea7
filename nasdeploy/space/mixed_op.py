"""The mixed op of a DARTS edge: ``sum_i w_i * op_i(x)`` with ``w = softmax(alpha)``.

The pure-PyTorch forward here is the reference: the oracle the fused kernel is
tested against, and the fallback where the kernel is not built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..ops import resolve_kernel
from ..ops.mixed_op import fused_mixed_op_forward, reference_mixed_op  # noqa: F401 (oracle, re-exported)
from .primitives import OPS


class MixedOp(nn.Module):
    """All candidates of one edge, ``ops[i]`` in the order of ``primitives``.

    Args:
        C: channels in and out.
        stride: 1, or 2 for edges leaving the inputs of a reduction cell.
        primitives: candidate names (columns of alpha).
        kernel: ``"auto"``, ``"fused"`` or ``"reference"``; ``auto`` is resolved per call for the
            device of the input (fused where its backend is built, else the reference with one warning).
        conv_path: how the fused kernel runs the conv candidates, ``"native"`` or ``"kernel"``.
        partial_channels: K of PC-DARTS (Xu et al., 2020): the candidates see the first ``C // K``
            channels, the rest bypass the edge (max-pooled at stride 2), then a channel shuffle.
            1: DARTS.
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], kernel: str = "reference",
                 conv_path: str = "native", partial_channels: int = 1):
        super().__init__()
        if partial_channels < 1 or C % partial_channels:
            raise ConfigError(f"partial_channels = {partial_channels} does not divide the {C} channels of an edge",
                              "use a K that divides C (and 2C, 4C at the reductions), e.g. 1, 2 or 4")
        self.conv_path = conv_path
        self.C = C
        self.stride = stride
        self.primitives = tuple(primitives)
        self.kernel = kernel
        self.partial_channels = partial_channels
        Cp = C // partial_channels
        self.ops = nn.ModuleList()
        for name in self.primitives:
            op = OPS[name](Cp, stride, False)
            if "pool" in name:  # DARTS: an affine-free BN after each pool in the search net
                op = nn.Sequential(op, nn.BatchNorm2d(Cp, affine=False))
            self.ops.append(op)

    def mixed(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_i w_i * op_i(x)`` on the kernel this module resolves to for ``x``'s device."""
        kernel = self.kernel if self.kernel != "auto" else resolve_kernel("auto", x.device.type)
        if kernel == "fused":
            return fused_mixed_op_forward(self, x, weights)
        return reference_mixed_op(self.ops, x, weights)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        K = self.partial_channels
        if K == 1:
            return self.mixed(x, weights)
        # PC-DARTS (Xu et al., 2020, eq. 2): 1/K of the channels through the edge, the rest bypass it.
        Cp = x.shape[1] // K
        out = self.mixed(x[:, :Cp], weights)
        rest = x[:, Cp:]
        if self.stride == 2:  # ceil_mode: the bypass matches the stride-2 candidates' (H - 1) // 2 + 1
            rest = F.max_pool2d(rest, 2, 2, ceil_mode=True)
        return channel_shuffle(torch.cat([out, rest], dim=1), K)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (groups, C / groups) -> (C / groups, groups), so that every edge's
    next sampled 1/K of the channels differs from this one's."""
    N, C, H, W = x.shape
    return x.view(N, groups, C // groups, H, W).transpose(1, 2).reshape(N, C, H, W)
