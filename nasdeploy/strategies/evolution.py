"""Regularized (aging) evolution (Real et al., 2019, "Regularized Evolution for Image Classifier
Architecture Search", Algorithm 1), scored by the shared-weight evaluator of ``strategy.py``.

The first ``population`` asks are uniform samples. After that every ask draws
``sample_size`` members uniformly, mutates the best of them (one op or one
input of one edge), and every tell pushes the child and removes the *oldest*
member, not the worst: a genotype survives only by being re-discovered, which
is the regularization of the paper's title.
"""

from __future__ import annotations

import collections

import torch

from ..config import SearchConfig
from ..space.cell import sample_genotype
from ..space.genotype import Genotype


def mutate(genotype: Genotype, ops, generator: torch.Generator) -> Genotype:
    """One of Real et al.'s two mutations on one random edge of one random cell.

    ``op``: replace the edge's op by a different op. ``input`` (their "hidden state mutation"):
    connect the edge to a different earlier node, never to the node's other input.
    """
    reduction = bool(torch.randint(2, (1,), generator=generator))
    edges, concat = genotype.cell(reduction)
    edges = list(edges)
    k = int(torch.randint(len(edges), (1,), generator=generator))
    op, j = edges[k]
    node = 2 + k // 2
    other = edges[k ^ 1][1]  # the other input of the same node
    inputs = [i for i in range(node) if i not in (j, other)]
    if not inputs or bool(torch.randint(2, (1,), generator=generator)):
        others = [o for o in ops if o != op]
        edges[k] = (others[int(torch.randint(len(others), (1,), generator=generator))], j)
    else:
        edges[k] = (op, inputs[int(torch.randint(len(inputs), (1,), generator=generator))])
    if reduction:
        return Genotype(genotype.normal, genotype.normal_concat, tuple(edges), concat)
    return Genotype(tuple(edges), concat, genotype.reduce, genotype.reduce_concat)


class AgingEvolution:
    """Aging evolution behind ask/tell.

    Args:
        ops: candidate ops (no ``none``).
        steps, multiplier: cell shape.
        population: P, members alive at once (paper: 100).
        sample_size: S, tournament size (paper: 25).
        generator: the seeded torch generator for samples, tournaments and mutations.
    """

    def __init__(self, ops, steps: int, multiplier: int, population: int, sample_size: int,
                 generator: torch.Generator):
        self.ops, self.steps, self.multiplier = tuple(ops), steps, multiplier
        self.size, self.sample_size, self.generator = population, sample_size, generator
        self.population: collections.deque[tuple[Genotype, float]] = collections.deque()
        self.history: list[tuple[Genotype, float]] = []

    @classmethod
    def from_config(cls, cfg: SearchConfig, ops, generator: torch.Generator) -> AgingEvolution:
        return cls(ops, cfg.steps, cfg.multiplier, cfg.population, cfg.sample_size, generator)

    def ask(self) -> Genotype:
        if len(self.population) < self.size:  # initial population: uniform samples
            return sample_genotype(self.generator, self.ops, self.steps, self.multiplier)
        picks = torch.randint(len(self.population), (self.sample_size,), generator=self.generator).tolist()
        parent = max((self.population[i] for i in picks), key=lambda gs: gs[1])[0]  # with replacement, as the paper
        return mutate(parent, self.ops, self.generator)

    def tell(self, genotype: Genotype, score: float) -> None:
        self.population.append((genotype, score))
        self.history.append((genotype, score))
        if len(self.population) > self.size:
            self.population.popleft()  # the oldest dies, however good it was

    @property
    def best(self) -> tuple[Genotype, float]:
        """The best of the whole history (the paper reports the best model ever evaluated)."""
        return max(self.history, key=lambda gs: gs[1])
