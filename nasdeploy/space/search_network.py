"""The DARTS search network (the supernet): cells of mixed edges plus alphas."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .cell import cell_slots, derive_genotype, edge_inputs, edge_normalization, edge_stride, node_offset, num_edges
from .genotype import Genotype
from .mixed_op import MixedOp
from .primitives import PRIMITIVES, FactorizedReduce, ReLUConvBN


class SearchCell(nn.Module):
    """A normal or reduction cell of mixed edges."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, primitives, kernel,
                 partial_channels=1):
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, edge_stride(reduction, j), primitives, kernel, partial_channels=partial_channels)
            for _, j in edge_inputs(steps)
        )

    def forward(self, s0, s1, weights, edge_weights=None):
        """``edge_weights`` (one per edge): PC-DARTS edge normalization, multiplying each edge's output."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            offset = node_offset(i)
            outs = [self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)]
            if edge_weights is not None:
                outs = [o * edge_weights[offset + j] for j, o in enumerate(outs)]
            s = sum(outs)
            states.append(s)
        return torch.cat(states[-self.multiplier :], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS supernet.

    Args:
        C: initial channels (16 in the paper's search).
        num_classes: output classes.
        layers: number of cells (8 in the paper's search).
        in_channels: image channels.
        steps: intermediate nodes per cell.
        multiplier: how many last nodes are concatenated into the cell output.
        stem_multiplier: the stem has ``stem_multiplier * C`` channels.
        primitives: candidate op names, the columns of alpha.
        kernel: mixed-op implementation, ``"auto" | "fused" | "reference"``; ``auto`` resolves per device
            at the first forward (fused where that device's backend is built, else one warning says why not).
        conv_path: the fused kernel's conv candidates, ``"native"`` (oneDNN) or ``"kernel"`` (csrc/).
        partial_channels: PC-DARTS K (Xu et al., 2020): each edge's candidates see 1/K of its channels
            (channel shuffle after), and edge normalization betas (``betas_normal/_reduce``, one per edge)
            weight each node's inputs and enter the derivation; 1 (default): DARTS, no betas.

    Example:
        >>> net = SearchNetwork(16, 10, 8)
        >>> logits = net(torch.randn(2, 3, 32, 32))
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        in_channels: int = 3,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        primitives: Sequence[str] = PRIMITIVES,
        kernel: str = "auto",
        conv_path: str = "native",
        partial_channels: int = 1,
    ):
        super().__init__()
        from ..ops import KERNELS, resolve_kernel

        self.C, self.num_classes, self.layers, self.in_channels = C, num_classes, layers, in_channels
        self.steps, self.multiplier, self.stem_multiplier = steps, multiplier, stem_multiplier
        self.primitives = tuple(primitives)
        if kernel not in KERNELS:
            resolve_kernel(kernel)  # raises: an unknown name is refused at construction
        self.kernel = kernel
        self.conv_path = conv_path
        self.partial_channels = partial_channels

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        slots = cell_slots(layers, C, C_curr, C_curr, lambda reduction: multiplier)
        self.cells = nn.ModuleList(
            SearchCell(steps, multiplier, s.C_prev_prev, s.C_prev, s.C, s.reduction, s.reduction_prev,
                       self.primitives, self.kernel, partial_channels)
            for s in slots
        )
        for m in self.modules():  # the fused kernel's conv path: a setting of every mixed edge
            if isinstance(m, MixedOp):
                m.conv_path = conv_path
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(multiplier * slots[-1].C, num_classes)

        k, n = num_edges(steps), len(self.primitives)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, n))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, n))
        for name in ("betas_normal", "betas_reduce"):  # PC-DARTS edge normalization; None without partial channels
            self.register_parameter(name, nn.Parameter(1e-3 * torch.randn(k)) if partial_channels > 1 else None)

    def arch_parameters(self) -> list[nn.Parameter]:
        betas = [self.betas_normal, self.betas_reduce] if self.betas_normal is not None else []
        return [self.alphas_normal, self.alphas_reduce, *betas]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(a) for a in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def config(self) -> dict:
        """JSON-able constructor arguments (without the kernel)."""
        return {
            "C": self.C,
            "num_classes": self.num_classes,
            "layers": self.layers,
            "in_channels": self.in_channels,
            "steps": self.steps,
            "multiplier": self.multiplier,
            "stem_multiplier": self.stem_multiplier,
            "primitives": list(self.primitives),
            "partial_channels": self.partial_channels,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        e_normal = e_reduce = None
        if self.betas_normal is not None:
            e_normal, e_reduce = edge_normalization(self.betas_normal), edge_normalization(self.betas_reduce)
        for cell in self.cells:
            weights, edges = (w_reduce, e_reduce) if cell.reduction else (w_normal, e_normal)
            s0, s1 = s1, cell(s0, s1, weights, edges)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def genotype(self) -> Genotype:
        """Discretize the current alphas (see ``derive_genotype``; with PC-DARTS, times the edge normalization)."""
        return derive_genotype(self.alphas_normal, self.alphas_reduce, self.primitives, self.steps, self.multiplier,
                               *self.betas())

    def betas(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(betas_normal, betas_reduce), both None without partial channels."""
        return self.betas_normal, self.betas_reduce
