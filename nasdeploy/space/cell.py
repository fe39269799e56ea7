"""The DARTS cell as arithmetic: edge numbering, strides, concat, derivation, sampling (one home).

A cell has two inputs (nodes 0 and 1) and ``steps`` intermediate nodes;
intermediate node ``i`` (node ``2 + i``) sums one edge from every earlier
node, so it has ``2 + i`` input edges. Everything indexed by edge (the rows of
alpha, the supernet's MixedOps, latency costs, controller logits) uses one
order: node 2's inputs 0, 1, then node 3's inputs 0, 1, 2, and so on. A
genotype keeps two of a node's edges, listed node by node (Liu et al., 2019,
sec. 2.4). The search network, the final network, the latency table and
model, the strategies and the pictures all read the cell through this module.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from .genotype import Edge, Genotype
from .primitives import PRIMITIVES, candidate_ops

# ------------------------------------------------------------------ numbering


def num_edges(steps: int) -> int:
    """Edges of a cell with ``steps`` intermediate nodes: node i has 2 + i inputs."""
    return sum(2 + i for i in range(steps))


def steps_for(edges: int) -> int:
    """The inverse of :func:`num_edges`: ``edges = steps * (steps + 3) / 2``."""
    return int(round((-3 + math.sqrt(9 + 8 * edges)) / 2))


def node_offset(i: int) -> int:
    """Edge index (alpha row) of intermediate node ``i``'s first input edge."""
    return 2 * i + i * (i - 1) // 2


def node_edges(i: int) -> slice:
    """The alpha rows of intermediate node ``i``'s ``2 + i`` input edges."""
    return slice(node_offset(i), node_offset(i) + 2 + i)


def edge_index(i: int, j: int) -> int:
    """Edge index (alpha row) of the edge from node ``j`` into intermediate node ``i``."""
    return node_offset(i) + j


def edge_inputs(steps: int) -> list[tuple[int, int]]:
    """``(node, input)`` per edge in alpha-row order; nodes 0, 1 are the cell inputs."""
    return [(2 + i, j) for i in range(steps) for j in range(2 + i)]


def alpha_rows(edges: Sequence[Edge]) -> list[int]:
    """The alpha row of each edge of a genotype cell (two edges per node, node by node)."""
    return [edge_index(k // 2, j) for k, (_, j) in enumerate(edges)]


def edge_stride(reduction: bool, j: int) -> int:
    """A reduction cell halves the resolution on the edges that read its two inputs, and only there."""
    return 2 if reduction and j < 2 else 1


def concat_nodes(steps: int, multiplier: int) -> tuple[int, ...]:
    """The nodes concatenated into the cell output: the last ``multiplier`` intermediate nodes."""
    return tuple(range(2 + steps - multiplier, 2 + steps))


def reduction_layers(layers: int) -> tuple[int, ...]:
    """Cells at 1/3 and 2/3 of the depth are reduction cells (DARTS)."""
    return tuple(sorted({layers // 3, 2 * layers // 3})) if layers >= 3 else ()


class CellSlot(NamedTuple):
    """One cell of a network: its place and the channels of its inputs and nodes."""

    index: int
    reduction: bool
    reduction_prev: bool
    C_prev_prev: int
    C_prev: int
    C: int


def cell_slots(layers: int, C: int, C_prev_prev: int, C_prev: int, multiplier: Callable[[bool], int],
               reduction_prev: bool = False) -> list[CellSlot]:
    """Channels through the stack of cells: a reduction cell doubles C; a cell outputs ``multiplier * C``.

    ``multiplier(reduction)`` is how many nodes that kind of cell concatenates. Supernet and
    final network both build from this list, so their channel arithmetic cannot drift apart.
    """
    reductions = reduction_layers(layers)
    slots = []
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            C *= 2
        slots.append(CellSlot(i, reduction, reduction_prev, C_prev_prev, C_prev, C))
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, multiplier(reduction) * C
    return slots


# ------------------------------------------------------------------ derivation


def derivation_weights(alphas: torch.Tensor, betas: torch.Tensor | None = None) -> torch.Tensor:
    """What derivation ranks: ``softmax(alpha)`` per edge, detached, in float32.

    With ``betas`` (PC-DARTS edge normalization, Xu et al. 2020, eq. 4) each edge's row is
    multiplied by its ``softmax(beta)`` among the input edges of its node.
    """
    weights = torch.softmax(alphas.detach().float(), dim=-1)
    if betas is None:
        return weights
    return weights * edge_normalization(betas.detach().float())[:, None]


def edge_normalization(betas: torch.Tensor) -> torch.Tensor:
    """PC-DARTS edge weights: ``softmax(beta)`` over the input edges of each node (one per alpha row)."""
    return torch.cat([torch.softmax(betas[node_edges(i)], dim=0) for i in range(steps_for(len(betas)))])


def select_inputs(weights: torch.Tensor, primitives: Sequence[str], steps: int) -> tuple[tuple[Edge, Edge], ...]:
    """The DARTS derivation rule (sec. 2.4): per node the two kept ``(op, input)``.

    An edge's op is its strongest non-``none`` op; a node keeps the two inputs whose
    strongest non-``none`` weight is largest, strongest first, ties to the lower input.
    The latency model prices exactly these edges, so prediction and deployment agree.
    """
    primitives = list(primitives)
    masked = weights.clone()
    if "none" in primitives:
        masked[:, primitives.index("none")] = float("-inf")
    best_val, best_op = masked.max(dim=1)
    nodes = []
    for i in range(steps):
        val, op = best_val[node_edges(i)], best_op[node_edges(i)]
        order = sorted(range(2 + i), key=lambda j: (-float(val[j]), j))[:2]
        nodes.append(tuple((primitives[int(op[j])], j) for j in order))
    return tuple(nodes)


def derive_cell(weights: torch.Tensor, primitives: Sequence[str], steps: int) -> tuple[Edge, ...]:
    """The genotype edges of one cell: :func:`select_inputs`, node by node."""
    return tuple(edge for node in select_inputs(weights, primitives, steps) for edge in node)


def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    primitives: Sequence[str] = PRIMITIVES,
    steps: int = 4,
    multiplier: int = 4,
    betas_normal: torch.Tensor | None = None,
    betas_reduce: torch.Tensor | None = None,
) -> Genotype:
    """DARTS discretization of ``softmax(alpha)`` (Liu et al., 2019, sec. 2.4), edge-normalized by beta if given."""
    concat = concat_nodes(steps, multiplier)
    return Genotype(derive_cell(derivation_weights(alphas_normal, betas_normal), primitives, steps), concat,
                    derive_cell(derivation_weights(alphas_reduce, betas_reduce), primitives, steps), concat)


def limit_skips(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, primitives, steps: int, multiplier: int,
                max_skips: int, betas_normal: torch.Tensor | None = None,
                betas_reduce: torch.Tensor | None = None) -> Genotype:
    """DARTS derivation with at most ``max_skips`` skip_connect edges in the normal cell (P-DARTS, Chen et al.
    2019, sec. 3.3): while too many, zero the skip weight of the chosen skip edge with the smallest one and
    re-derive, so that edge takes its next-best op (and the node may pick other inputs)."""
    primitives = list(primitives)
    g = derive_genotype(alphas_normal, alphas_reduce, primitives, steps, multiplier, betas_normal, betas_reduce)
    if "skip_connect" not in primitives:
        return g
    skip = primitives.index("skip_connect")
    w = derivation_weights(alphas_normal, betas_normal)
    while sum(op == "skip_connect" for op, _ in g.normal) > max_skips:
        rows = [r for r, (op, _) in zip(alpha_rows(g.normal), g.normal) if op == "skip_connect"]
        w[min(rows, key=lambda r: float(w[r, skip])), skip] = 0.0
        g = Genotype(derive_cell(w, primitives, steps), g.normal_concat, g.reduce, g.reduce_concat)
    return g


def op_margins(weights: torch.Tensor, primitives: Sequence[str]) -> torch.Tensor:
    """Per edge: weight of the strongest non-``none`` op minus the runner-up's (how firmly the op is chosen)."""
    keep = [k for k, p in enumerate(primitives) if p != "none"]
    w = weights.detach().float()[:, keep]
    if w.shape[1] < 2:
        return torch.ones(w.shape[0])
    top2 = w.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def genotype_agreement(a: Genotype, b: Genotype) -> float:
    """Share of kept ``(op, input)`` edges two genotypes have in common, node by node (1.0: the same cells)."""
    same = total = 0
    for ea, eb in ((a.normal, b.normal), (a.reduce, b.reduce)):
        for i in range(0, min(len(ea), len(eb)), 2):
            same += len(set(ea[i:i + 2]) & set(eb[i:i + 2]))
            total += 2
    return same / total if total else 1.0


# ------------------------------------------------------------------ sampling and statistics


def _sample(inputs: Callable[[int], list[int]], op: Callable[[], str], steps: int, multiplier: int) -> Genotype:
    """Normal cell, then reduction cell: per node the inputs ``inputs(2 + i)``, then one ``op()`` per input."""
    cells = []
    for _ in range(2):
        edges = []
        for i in range(steps):
            for j in inputs(2 + i):
                edges.append((op(), j))
        cells.append(tuple(edges))
    concat = concat_nodes(steps, multiplier)
    return Genotype(cells[0], concat, cells[1], concat)


def sample_genotype(generator: torch.Generator, ops, steps: int, multiplier: int) -> Genotype:
    """A uniform sample of the space: per node two distinct inputs, each with a uniform op."""
    return _sample(lambda n: torch.randperm(n, generator=generator)[:2].tolist(),
                   lambda: ops[int(torch.randint(len(ops), (1,), generator=generator))], steps, multiplier)


def random_genotype(rng: random.Random, steps: int = 4, multiplier: int = 4,
                    primitives: Sequence[str] = PRIMITIVES) -> Genotype:
    """The same uniform distribution drawn from a stdlib ``random.Random`` (inputs in ascending order)."""
    ops = candidate_ops(primitives)
    return _sample(lambda n: sorted(rng.sample(range(n), 2)), lambda: rng.choice(ops), steps, multiplier)


def op_frequencies(genotypes: list[Genotype], ops, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell a (edges x ops) table: how often each edge carries each op among ``genotypes``."""
    out = []
    for reduction in (False, True):
        t = torch.zeros(num_edges(steps), len(ops))
        for g in genotypes:
            edges, _ = g.cell(reduction)
            for r, (op, _) in zip(alpha_rows(edges), edges):
                t[r, ops.index(op)] += 1
        out.append(t / max(len(genotypes), 1))
    return out[0], out[1]
