"""The mixed op of a DARTS edge: ``sum_i w_i * op_i(x)`` with ``w = softmax(alpha)``.

The pure-PyTorch forward here is the reference: the oracle the fused kernel is
tested against, and the fallback where the kernel is not built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

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
    """

    def __init__(self, C: int, stride: int, primitives: Sequence[str], kernel: str = "reference",
                 conv_path: str = "native"):
        super().__init__()
        self.conv_path = conv_path
        self.C = C
        self.stride = stride
        self.primitives = tuple(primitives)
        self.kernel = kernel
        self.ops = nn.ModuleList()
        for name in self.primitives:
            op = OPS[name](C, stride, False)
            if "pool" in name:  # DARTS: an affine-free BN after each pool in the search net
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self.ops.append(op)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel if self.kernel != "auto" else resolve_kernel("auto", x.device.type)
        if kernel == "fused":
            return fused_mixed_op_forward(self, x, weights)
        return reference_mixed_op(self.ops, x, weights)
