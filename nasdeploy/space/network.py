"""The final (evaluation) network built from a genotype: the DARTS retrain model."""

from __future__ import annotations

import torch
from torch import nn

from .cell import cell_slots, edge_stride
from .genotype import Genotype
from .primitives import OPS, FactorizedReduce, Identity, ReLUConvBN

STEMS = ("cifar", "imagenet")


def stem_for(input_shape: tuple[int, ...], stem: str) -> str:
    """Resolve ``"auto"``: the ImageNet stem (three stride-2 convs) for inputs of 128 px or more."""
    if stem != "auto":
        return stem
    return "imagenet" if input_shape[1] >= 128 else "cifar"


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a path with probability ``drop_prob`` (FractalNet / DARTS)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class Cell(nn.Module):
    """A discrete cell: two ops per intermediate node, summed; concat of ``concat`` nodes."""

    def __init__(
        self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool
    ):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        edges, concat = genotype.cell(reduction)
        self.steps = len(edges) // 2
        self.concat = tuple(concat)
        self.multiplier = len(concat)
        self.indices = tuple(j for _, j in edges)
        self.ops = nn.ModuleList(OPS[name](C, edge_stride(reduction, j), True) for name, j in edges)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self.steps):
            hs = []
            for k in (2 * i, 2 * i + 1):
                h = self.ops[k](states[self.indices[k]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier at 2/3 depth (training only).

    The reference pools 8x8 maps with a 5x5/3 window to 2x2; pooling adaptively
    to 2x2 keeps the same weights and works at any input size.
    """

    def __init__(self, C: int, num_classes: int, bn_after_conv2: bool = True):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if bn_after_conv2:  # the ImageNet head of the reference has no BN here
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class Network(nn.Module):
    """The DARTS evaluation network for a genotype.

    Args:
        genotype: the cells to stack.
        C: initial channels (36 for CIFAR-10, 48 for ImageNet mobile in the paper).
        num_classes: output classes.
        layers: number of cells (20 CIFAR-10, 14 ImageNet).
        auxiliary: add the auxiliary head at 2/3 depth (used in training only).
        in_channels: image channels.
        stem: ``"cifar"`` (one 3x3 conv, 3*C channels) or ``"imagenet"`` (two stride-2 stems).
        drop_path_prob: drop-path probability; the trainer schedules it.

    Example:
        >>> net = Network(GENOTYPES["DARTS_V2"], C=36, num_classes=10, layers=20)
        >>> net.eval()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        genotype: Genotype,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool = False,
        in_channels: int = 3,
        stem: str = "cifar",
        drop_path_prob: float = 0.0,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        self.genotype, self.drop_path_prob = genotype, drop_path_prob
        self.C, self.num_classes, self.layers, self.in_channels = C, num_classes, layers, in_channels
        self.auxiliary, self.stem_type = auxiliary, stem
        self.aux_layer = 2 * layers // 3

        if stem == "cifar":
            C_stem = 3 * C
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem)
            )
            self.stem1 = None
            C_prev_prev, C_prev, reduction_prev = C_stem, C_stem, False
        else:
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C // 2),
                nn.ReLU(inplace=False),
                nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=False), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C)
            )
            C_prev_prev, C_prev, reduction_prev = C, C, True

        concat = {False: len(genotype.normal_concat), True: len(genotype.reduce_concat)}
        slots = cell_slots(layers, C, C_prev_prev, C_prev, concat.__getitem__, reduction_prev)
        self.cells = nn.ModuleList(
            Cell(genotype, s.C_prev_prev, s.C_prev, s.C, s.reduction, s.reduction_prev) for s in slots
        )

        def out_channels(i: int) -> int:
            return concat[slots[i].reduction] * slots[i].C

        C_aux = out_channels(self.aux_layer)
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, bn_after_conv2=stem == "cifar") if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(out_channels(-1), num_classes)

    def config(self) -> dict:
        """JSON-able constructor arguments (the genotype is stored beside them)."""
        return {
            "C": self.C,
            "num_classes": self.num_classes,
            "layers": self.layers,
            "auxiliary": self.auxiliary,
            "in_channels": self.in_channels,
            "stem": self.stem_type,
        }

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cells up to the last one; also the auxiliary logits when training with the head."""
        s0 = self.stem0(x)
        s1 = s0 if self.stem1 is None else self.stem1(s0)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_layer and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        return s1, aux

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pooling(features).flatten(1))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and auxiliary logits (None without the head or in eval mode)."""
        features, aux = self.forward_features(x)
        return self.forward_head(features), aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The served output: logits only."""
        return self.forward_train(x)[0]


def count_weights(module: nn.Module, exclude_prefix: str | None = None) -> int:
    """Number of trainable weights, optionally leaving out a sub-module by name prefix."""
    return sum(
        p.numel() for n, p in module.named_parameters() if exclude_prefix is None or not n.startswith(exclude_prefix)
    )


def count_mult_adds(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one eval-mode forward of a single image (FlopCounterMode's FLOPs / 2: convs, linear)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2
