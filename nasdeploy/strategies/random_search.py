"""Random search with weight sharing (Li & Talwalkar, 2019, "Random Search and Reproducibility for NAS").

One supernet is trained along uniformly sampled single paths, then uniformly
sampled architectures are ranked by their accuracy with the inherited weights
(``strategy.two_phase_search``). The strategy itself only samples: ``tell``
keeps the history.
"""

from __future__ import annotations

import torch

from ..config import SearchConfig
from ..space.cell import sample_genotype
from ..space.genotype import Genotype


class RandomSearch:
    """Uniform sampling over the space; the best told genotype wins.

    Args:
        ops: the candidate ops (no ``none``).
        steps, multiplier: cell shape.
        generator: the seeded torch generator that draws the samples.
    """

    def __init__(self, ops, steps: int, multiplier: int, generator: torch.Generator):
        self.ops, self.steps, self.multiplier, self.generator = tuple(ops), steps, multiplier, generator
        self.history: list[tuple[Genotype, float]] = []

    @classmethod
    def from_config(cls, cfg: SearchConfig, ops, generator: torch.Generator) -> RandomSearch:
        return cls(ops, cfg.steps, cfg.multiplier, generator)

    def ask(self) -> Genotype:
        return sample_genotype(self.generator, self.ops, self.steps, self.multiplier)

    def tell(self, genotype: Genotype, score: float) -> None:
        self.history.append((genotype, score))

    @property
    def best(self) -> tuple[Genotype, float]:
        return max(self.history, key=lambda gs: gs[1])
