"""Latency as a function of alpha: expected latency, the derived network's latency, the penalty.

Pure functions over a :class:`LatencyCosts` (per-edge cost tensors that
``LatencyTable.costs(spec)`` sums over the cells of the deployed network).
The search reads latency only through this module and never calls ONNX
Runtime itself.

The model follows the derivation rule of ``space.cell.select_inputs`` (DARTS
sec. 2.4): per edge the kept op is the strongest non-``none`` op, and per
intermediate node the two inputs whose strongest non-``none`` weight is
largest are kept; :func:`derived_latency` calls that very function.

- op choice: ``q = softmax(alpha[non-none] / tau)`` — ``none`` is never
  deployed, so its weight is left out and the rest renormalized;
- edge choice: the strength of edge j is its largest non-``none`` weight
  ``s_j`` of ``softmax(alpha / tau)``; the probability that j is among the two
  kept inputs is the Plackett–Luce top-2 inclusion probability with scores
  ``p_j = s_j / sum(s)``:  ``P(j) = p_j + sum_{k != j} p_k p_j / (1 - p_k)``
  (sums to exactly 2; a node with 2 inputs keeps both with probability 1);
- ``E[lat] = base + sum_edges P(edge) * sum_ops q_op * cost[edge, op]``.

For a one-hot alpha (rows ``-inf`` except one entry; dropped edges one-hot on
``none``) this is exactly the table sum of the derived network. With DARTS's
nearly uniform alphas it is a smooth average; :func:`derived_latency` gives
the latency of the network derivation would produce right now, and
:func:`straight_through` combines both (value of the derived network,
gradient of the expectation), which is what the search penalizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import LatencyTargetError
from ..space.cell import alpha_rows, derivation_weights, edge_index, node_edges, num_edges, select_inputs
from ..space.primitives import candidate_ops


@dataclass(frozen=True)
class LatencyCosts:
    """Calibrated costs of one deployment network: ``base_ms + sum of kept edges' costs`` is its latency.

    ``normal[e, o]`` / ``reduce[e, o]``: ms that op ``o`` (column order ``primitives``) on edge ``e``
    (alpha-row order) adds, summed over every normal / reduction cell of the network.
    """

    normal: torch.Tensor
    reduce: torch.Tensor
    base_ms: float
    primitives: tuple[str, ...]
    steps: int


def _nonnone(primitives: Sequence[str]) -> list[int]:
    """Columns of the ops a derived cell may use."""
    ops = candidate_ops(primitives)
    return [i for i, p in enumerate(primitives) if p in ops]


def _cell_expected(alpha: torch.Tensor, cost: torch.Tensor, keep: list[int], steps: int, tau: float) -> torch.Tensor:
    w = torch.softmax(alpha / tau, dim=-1)
    tiny = torch.finfo(w.dtype).tiny
    # Op distribution among deployable ops (= softmax of their logits); an edge whose only finite
    # logit is 'none' gets q = 0 instead of 0/0.
    q = w[:, keep] / w[:, keep].sum(-1, keepdim=True).clamp_min(tiny)
    per_edge = (q * cost[:, keep].to(q.dtype)).sum(-1)
    strength = w[:, keep].max(dim=-1).values
    total = per_edge.new_zeros(())
    for i in range(steps):
        s = strength[node_edges(i)]
        p = s / s.sum().clamp_min(tiny)
        if len(p) == 2:
            incl = torch.ones_like(p)
        else:
            # Plackett–Luce: j first, or some k first and then j among the rest.
            ratio = p / (1 - p).clamp_min(tiny)
            incl = p + p * (ratio.sum() - ratio)
        total = total + (incl * per_edge[node_edges(i)]).sum()
    return total


def expected_latency(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, costs: LatencyCosts,
                     tau: float = 1.0) -> torch.Tensor:
    """Differentiable expected latency (ms) of the network derived from these alphas.

    Args:
        alphas_normal, alphas_reduce: ``[edges, len(primitives)]`` architecture logits.
        costs: from ``LatencyTable.costs(spec)``.
        tau: softmax temperature (1: DARTS's own softmax).

    Returns:
        A scalar tensor (dtype of the alphas) carrying gradients to both alphas.

    Example:
        >>> costs = table.costs(spec)  # doctest: +SKIP
        >>> expected_latency(net.alphas_normal, net.alphas_reduce, costs).backward()  # doctest: +SKIP
    """
    keep = _nonnone(costs.primitives)
    rows = num_edges(costs.steps)
    for name, a in (("alphas_normal", alphas_normal), ("alphas_reduce", alphas_reduce)):
        if tuple(a.shape) != (rows, len(costs.primitives)):
            want = (rows, len(costs.primitives))
            raise ValueError(f"{name} has shape {tuple(a.shape)}, the latency costs need {want}")
    return (costs.base_ms + _cell_expected(alphas_normal, costs.normal, keep, costs.steps, tau)
            + _cell_expected(alphas_reduce, costs.reduce, keep, costs.steps, tau))


def _cell_derived(alpha: torch.Tensor, cost: torch.Tensor, primitives: Sequence[str], steps: int) -> float:
    # The edges derivation keeps (the deployed ones), by the derivation's own function.
    col = {p: c for c, p in enumerate(primitives)}
    total = 0.0
    for i, kept in enumerate(select_inputs(derivation_weights(alpha), primitives, steps)):
        total += sum(float(cost[edge_index(i, j), col[op]]) for op, j in kept)
    return total


def derived_latency(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, costs: LatencyCosts) -> float:
    """Predicted latency (ms) of exactly the genotype ``derive_genotype`` returns for these alphas."""
    return (costs.base_ms + _cell_derived(alphas_normal, costs.normal, costs.primitives, costs.steps)
            + _cell_derived(alphas_reduce, costs.reduce, costs.primitives, costs.steps))


def genotype_latency(genotype, costs: LatencyCosts) -> float:
    """Predicted latency (ms) of a genotype: base + each kept edge's cost."""
    col = {p: i for i, p in enumerate(costs.primitives)}
    total = costs.base_ms
    for edges, cost in ((genotype.normal, costs.normal), (genotype.reduce, costs.reduce)):
        for r, (op, _) in zip(alpha_rows(edges), edges):
            total += float(cost[r, col[op]])
    return total


def straight_through(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, costs: LatencyCosts,
                     tau: float = 1.0) -> torch.Tensor:
    """Value: the derived network's latency; gradient: that of :func:`expected_latency`."""
    soft = expected_latency(alphas_normal, alphas_reduce, costs, tau)
    return soft + (derived_latency(alphas_normal, alphas_reduce, costs) - soft.detach())


def penalty(pred: torch.Tensor, target: float, weight: float, under: float = 1.0,
            aim: float = 0.95) -> torch.Tensor:
    """The budget loss: ``weight * (relu(r - aim) + under * relu(aim - r))`` with ``r = pred / target``.

    Asymmetric (docs/latency.md): above ``aim * target`` the full slope pushes latency down; below
    it a slope ``under`` times as steep pulls gently up, so a net far under the budget spends it on
    accuracy (MnasNet's soft constraint) while the hard side stays steep. ``under = 0`` is the pure
    hinge (MnasNet's hard constraint), ``under = 1, aim = 1`` TuNAS's absolute reward. The budget
    itself (measured p50 <= target) is enforced after the search by ``latency.budget`` (measure, repair).
    """
    if target <= 0:
        raise LatencyTargetError(f"latency target {target!r} ms is not positive", "give a target in ms > 0")
    r = pred / target
    return weight * (torch.relu(r - aim) + under * torch.relu(aim - r))


def _cell_extreme(cost: torch.Tensor, keep: list[int], steps: int, largest: bool) -> float:
    # Per node: the best (or worst) op per input, then the best two distinct inputs.
    total = 0.0
    for i in range(steps):
        sub = cost[node_edges(i)][:, keep]
        per_input = sub.max(dim=1).values if largest else sub.min(dim=1).values
        total += float(per_input.sort(descending=largest).values[:2].sum())
    return total


def achievable_range(costs: LatencyCosts) -> tuple[float, float]:
    """(fastest, slowest) predicted latency in ms over every derivable genotype (exact under the additive model)."""
    keep = _nonnone(costs.primitives)
    lo = costs.base_ms + _cell_extreme(costs.normal, keep, costs.steps, False) + _cell_extreme(
        costs.reduce, keep, costs.steps, False)
    hi = costs.base_ms + _cell_extreme(costs.normal, keep, costs.steps, True) + _cell_extreme(
        costs.reduce, keep, costs.steps, True)
    return lo, hi


def check_target(target: float, costs: LatencyCosts) -> tuple[float, float]:
    """Refuse a target outside the achievable range; returns the range."""
    lo, hi = achievable_range(costs)
    if target is None or not target > 0:
        raise LatencyTargetError(f"latency target {target!r} ms is not positive",
                                 f"give a target in ms within the achievable range {lo:.4g}–{hi:.4g} ms")
    if not lo <= target <= hi:
        side = "below the fastest" if target < lo else "above the slowest"
        raise LatencyTargetError(
            f"latency target {target:.4g} ms is {side} derivable network: this search space at this deployment "
            f"config spans {lo:.4g}–{hi:.4g} ms (predicted ORT p50)",
            f"choose a target between {lo:.4g} and {hi:.4g} ms, or change channels/layers/input size")
    return lo, hi


def search_penalty(costs: LatencyCosts, target: float, weight: float, tau: float = 1.0, derive=None,
                   under: float = 1.0, aim: float = 0.95, check: bool = True):
    """``penalty(model)`` for ``search(..., penalty=...)``: the straight-through latency against the target.

    ``derive(model) -> Genotype`` is the derivation that will be deployed (e.g. with the P-DARTS skip
    limit); its predicted latency is the penalty's value, so the search steers the genotype it ships.
    None: plain DARTS derivation.
    """
    if check:
        check_target(target, costs)

    def fn(model) -> torch.Tensor:
        if derive is None:
            pred = straight_through(model.alphas_normal, model.alphas_reduce, costs, tau)
        else:
            soft = expected_latency(model.alphas_normal, model.alphas_reduce, costs, tau)
            pred = soft + (genotype_latency(derive(model), costs) - soft.detach())
        return penalty(pred, target, weight, under, aim)

    return fn
