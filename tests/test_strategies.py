"""Search strategies: artifacts and budgets, aging evolution, REINFORCE math, the collapse guard."""

import dataclasses
import math
import warnings

import pytest
import torch

from nasdeploy.artifacts import RunDir, load_checkpoint, read_json, read_jsonl
from nasdeploy.config import SearchConfig
from nasdeploy.errors import ConfigError
from nasdeploy.space.cell import derive_genotype
from nasdeploy.space.genotype import Genotype
from nasdeploy.space.primitives import PRIMITIVES
from nasdeploy.strategies.darts import CollapseWarning, derive, limit_skips
from nasdeploy.strategies.dispatch import run_strategy
from nasdeploy.strategies.evolution import AgingEvolution, mutate
from nasdeploy.strategies.reinforce import Controller, Reinforce, decode
from nasdeploy.strategies.strategy import SharedSupernet, candidate_ops, node_offset, sample_genotype

TINY = SearchConfig(epochs=2, batch_size=64, C=4, layers=3, steps=2, multiplier=2, w_lr=0.05, a_lr=3e-3,
                    candidates=6, population=3, sample_size=2, controller_lr=0.1, baseline_decay=0.5,
                    collapse_threshold=1.0, kernel="reference", seed=3)
OPS = candidate_ops(PRIMITIVES)


def _distinct_inputs(g: Genotype) -> bool:
    return all(edges[k][1] != edges[k + 1][1] for edges in (g.normal, g.reduce) for k in range(0, len(edges), 2))


@pytest.mark.parametrize("strategy", ["random", "evolution", "rl"])
def test_black_box_strategy_writes_the_search_artifacts(digits, tmp_path, strategy):
    cfg = dataclasses.replace(TINY, strategy=strategy)
    res = run_strategy(cfg, digits, tmp_path, progress=False, pictures=False)
    run = RunDir(tmp_path)
    g = Genotype.load(run.genotype)  # validates
    assert g == res.genotype and g.steps == 2 and _distinct_inputs(g)
    assert 0.0 <= res.val_acc <= 1.0
    assert [m["epoch"] for m in read_jsonl(run.search_metrics)] == [0, 1]
    cands = read_jsonl(run.search / "candidates.jsonl")
    assert len(cands) == cfg.candidates  # the candidate budget, exactly
    assert [c["best_score"] for c in cands] == sorted(c["best_score"] for c in cands)  # a running maximum
    summary = read_json(run.search / "summary.json")
    assert summary["strategy"] == strategy and summary["candidates_scored"] == cfg.candidates
    assert summary["stopped_by"] == "budget"
    ck = load_checkpoint(run.supernet, "supernet")
    assert ck["epoch"] == 1 and ck["strategy"] == strategy and "w_optimizer" in ck
    rec = read_jsonl(run.alphas)[-1]
    assert torch.tensor(rec["weights_normal"]).shape == (5, len(OPS))


def test_darts_through_run_strategy_draws_pictures_and_warns_once(digits, tmp_path):
    cfg = dataclasses.replace(TINY, collapse_threshold=0.01)  # any derived cell crosses it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_strategy(cfg, digits, tmp_path, progress=False)
    assert sum(issubclass(w.category, CollapseWarning) for w in caught) == 1  # two epochs, one warning
    run = RunDir(tmp_path)
    assert Genotype.load(run.genotype) == res.genotype
    for name in ("cells_normal.png", "cells_normal.svg", "cells_reduce.png", "cells_reduce.svg", "alphas.png",
                 "curves.png"):
        assert (run.search / name).stat().st_size > 1000, name
    assert read_json(run.search / "summary.json")["strategy"] == "darts"


def test_wall_time_budget_stops_every_strategy_early(digits, tmp_path):
    for strategy in ("random", "rl", "darts"):
        cfg = dataclasses.replace(TINY, strategy=strategy, epochs=5, candidates=50, max_seconds=1e-3)
        res = run_strategy(cfg, digits, tmp_path / strategy, progress=False, pictures=False)
        s = read_json(RunDir(tmp_path / strategy).search / "summary.json")
        assert s["stopped_by"] == "max_seconds", strategy
        assert len(res.metrics) <= 1  # darts finishes the epoch it is in; the others stop before
        if strategy != "darts":
            assert s["candidates_scored"] == 1  # at least one candidate, so there is a genotype


def test_latency_target_is_refused_for_black_box_strategies(digits, tmp_path):
    cfg = dataclasses.replace(TINY, strategy="random", latency_target=1.0)
    with pytest.raises(ConfigError, match="latency target"):
        run_strategy(cfg, digits, tmp_path, progress=False)


def test_black_box_resume_matches_an_uninterrupted_run(digits, tmp_path):
    cfg = dataclasses.replace(TINY, strategy="random")
    a = run_strategy(cfg, digits, tmp_path / "a", progress=False, pictures=False)

    class Killed(Exception):
        pass

    def kill(rec):
        if rec["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_strategy(cfg, digits, tmp_path / "b", progress=False, pictures=False, log=kill)
    b = run_strategy(cfg, digits, tmp_path / "b", progress=False, pictures=False, resume=True)
    sa = load_checkpoint(RunDir(tmp_path / "a").supernet, "supernet")["state_dict"]
    sb = load_checkpoint(RunDir(tmp_path / "b").supernet, "supernet")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.genotype == b.genotype and [m["train_loss"] for m in a.metrics] == [m["train_loss"] for m in b.metrics]


def test_single_path_equals_the_mixed_op_with_one_hot_weights(digits):
    net = SharedSupernet(TINY, digits)
    g = sample_genotype(torch.Generator().manual_seed(0), net.ops, TINY.steps, TINY.multiplier)
    m = net.model.eval()
    x = digits.x_val[:8]

    def one_hot(edges):
        w = torch.zeros(5, len(m.primitives))
        for k, (op, j) in enumerate(edges):
            w[node_offset(k // 2) + j, m.primitives.index(op)] = 1.0
        return w

    s0 = s1 = m.stem(x)
    for cell in m.cells:
        s0, s1 = s1, cell(s0, s1, one_hot(g.reduce if cell.reduction else g.normal))
    ref = m.classifier(m.global_pooling(s1).flatten(1))
    torch.testing.assert_close(net.forward(g, x), ref)


# ----------------------------------------------------------------- aging evolution

def test_aging_evolution_removes_the_oldest_not_the_worst():
    evo = AgingEvolution(OPS, 2, 2, population=3, sample_size=2, generator=torch.Generator().manual_seed(0))
    scores = iter([1.0, 0.1, 0.2, 0.3, 0.4])  # the first member is the best ever
    told = []
    for _ in range(3):  # the initial population: uniform samples
        g = evo.ask()
        told.append(g)
        evo.tell(g, next(scores))
    assert [s for _, s in evo.population] == [1.0, 0.1, 0.2]
    child = evo.ask()  # a mutation of a tournament winner
    assert any(_edit_distance(child, p) == 1 for p in told)
    evo.tell(child, next(scores))
    assert [s for _, s in evo.population] == [0.1, 0.2, 0.3]  # 1.0 aged out although it was best
    assert evo.best == (told[0], 1.0)  # the result is the best of the whole history
    evo.tell(evo.ask(), next(scores))
    assert [s for _, s in evo.population] == [0.2, 0.3, 0.4] and len(evo.history) == 5


def test_tournament_picks_the_best_sampled_member():
    evo = AgingEvolution(OPS, 2, 2, population=3, sample_size=50, generator=torch.Generator().manual_seed(1))
    gs = [sample_genotype(torch.Generator().manual_seed(i), OPS, 2, 2) for i in range(3)]
    for g, s in zip(gs, (0.2, 0.9, 0.5)):
        evo.tell(g, s)
    # 50 draws with replacement from 3 members include the best (probability 1 - (2/3)^50)
    assert _edit_distance(evo.ask(), gs[1]) == 1


def _edit_distance(a: Genotype, b: Genotype) -> int:
    return sum(x != y for x, y in zip(a.normal + a.reduce, b.normal + b.reduce))


def test_mutation_changes_exactly_one_edge_and_stays_valid():
    gen = torch.Generator().manual_seed(0)
    g = sample_genotype(gen, OPS, 4, 4)
    for _ in range(200):
        child = mutate(g, OPS, gen)
        assert _edit_distance(child, g) == 1
        assert Genotype.from_dict(child.to_dict()) == child and _distinct_inputs(child)
        g = child


# ----------------------------------------------------------------- REINFORCE

def _controller():
    c = Controller(steps=2, n_ops=3)
    with torch.no_grad():
        c.in_logits.copy_(torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 2.0]], [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]]))
        c.op_logits.copy_(torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3) / 10)
    return c


# (cell, node, j1, j2, op of j1, op of j2)
ACTIONS = [(0, 0, 1, 0, 2, 0), (0, 1, 2, 0, 1, 1), (1, 0, 0, 1, 0, 0), (1, 1, 1, 2, 2, 1)]


def test_log_prob_matches_a_hand_computation():
    c = _controller()

    def lsm(v, i):
        return v[i] - math.log(sum(math.exp(x) for x in v))

    op = (torch.arange(30, dtype=torch.float64).reshape(2, 5, 3) / 10).tolist()
    want = (
        # normal node 0: inputs (1, then 0 of {0}), ops on edges 1 and 0
        lsm([0.0, 1.0], 1) + lsm([0.0], 0) + lsm(op[0][1], 2) + lsm(op[0][0], 0)
        # normal node 1: inputs 2 then 0 of {0, 1}; edges 2 + j
        + lsm([1.0, 0.0, 2.0], 2) + lsm([1.0, 0.0], 0) + lsm(op[0][4], 1) + lsm(op[0][2], 1)
        + lsm([0.5, 0.5], 0) + lsm([0.5], 0) + lsm(op[1][0], 0) + lsm(op[1][1], 0)
        + lsm([0.0, 0.0, 0.0], 1) + lsm([0.0, 0.0], 1) + lsm(op[1][3], 2) + lsm(op[1][4], 1)
    )
    assert c.log_prob(ACTIONS).item() == pytest.approx(want, abs=1e-5)


def test_log_prob_gradient_matches_softmax_calculus():
    c = _controller()
    c.log_prob(ACTIONS).backward()
    # normal node 1 picked 2 from softmax([1, 0, 2]) then 0 from softmax([1, 0]) over {0, 1}:
    # d/dl = (e_2 - p) + (e_0 - q), q zero at the masked input 2
    p = torch.tensor([1.0, 0.0, 2.0]).softmax(0)
    q = torch.tensor([1.0, 0.0]).softmax(0)
    want = torch.tensor([0.0, 0.0, 1.0]) - p + torch.tensor([1.0 - q[0], -q[1], 0.0])
    torch.testing.assert_close(c.in_logits.grad[0, 1], want)
    # op logits of normal edge 4 (node 1 <- input 2) chose op 1: e_1 - softmax
    torch.testing.assert_close(c.op_logits.grad[0, 4], torch.tensor([0.0, 1.0, 0.0]) - c.op_logits[0, 4].softmax(0))
    # an edge no action used gets no gradient
    assert torch.count_nonzero(c.op_logits.grad[0, 3]) == 0


def test_reinforce_update_and_moving_average_baseline():
    agent = Reinforce(OPS, 2, 2, lr=1.0, baseline_decay=0.9, generator=torch.Generator().manual_seed(0))
    agent.optimizer = torch.optim.SGD(agent.controller.parameters(), lr=1.0)  # plain steps: checkable by hand
    g = agent.ask()
    before = [p.detach().clone() for p in agent.controller.parameters()]
    agent.tell(g, 0.5)
    assert agent.baseline == pytest.approx(0.5)  # the first reward sets it, and the first step is zero
    assert all(torch.equal(a, b) for a, b in zip(before, agent.controller.parameters()))

    g = agent.ask()
    actions = agent._pending[1]
    c = agent.controller
    c.zero_grad()
    c.log_prob(actions).backward()
    grads = [p.grad.clone() for p in c.parameters()]
    before = [p.detach().clone() for p in c.parameters()]
    logp_before = c.log_prob(actions).item()
    agent.tell(g, 0.7)
    for b, p, gr in zip(before, c.parameters(), grads):  # ascent on (R - b_old) * log p, b_old = 0.5
        torch.testing.assert_close(p.detach(), b + 0.2 * gr)
    assert agent.baseline == pytest.approx(0.9 * 0.5 + 0.1 * 0.7)
    assert c.log_prob(actions).item() > logp_before  # a reward above the baseline makes the sample likelier
    with pytest.raises(ValueError):
        agent.tell(g, 0.1)  # one tell per ask


def test_decoded_samples_are_valid_genotypes():
    agent = Reinforce(OPS, 4, 4, lr=0.1, baseline_decay=0.9, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        g = agent.sample()
        assert Genotype.from_dict(g.to_dict()) == g and _distinct_inputs(g)
    assert decode(agent.controller.mode(), OPS, 4, 4) == agent.mode()


# ----------------------------------------------------------------- the collapse remedy

def _skip_heavy_alphas():
    """Normal cell alphas whose plain derivation has 6 skip connections (of 8 edges)."""
    skip, sep = PRIMITIVES.index("skip_connect"), PRIMITIVES.index("sep_conv_3x3")
    a = torch.zeros(14, len(PRIMITIVES))
    strengths = {0: 3.0, 1: 2.5, 3: 2.0, 4: 1.0, 6: 1.5, 7: 0.5, 10: 1.2, 11: 0.8}  # two inputs per node
    for row, s in strengths.items():
        a[row, skip] = s
        a[row, sep] = s - 0.4  # the runner-up op everywhere
    a[0, sep], a[3, sep] = 3.2, 2.4  # nodes 0 and 1 prefer a conv on one edge
    a[0, skip] = 0.0
    a[3, skip] = 0.0
    return a


def test_skip_limit_caps_skips_and_keeps_the_strongest():
    a = _skip_heavy_alphas()
    plain = limit_skips(a, a, PRIMITIVES, 4, 4, max_skips=99)
    assert plain == derive_genotype(a, a, PRIMITIVES, 4, 4)  # a limit above the count changes nothing
    skips = [(k, j) for k, (op, j) in enumerate(plain.normal) if op == "skip_connect"]
    assert len(skips) == 6
    capped = limit_skips(a, a, PRIMITIVES, 4, 4, max_skips=2)
    assert sum(op == "skip_connect" for op, _ in capped.normal) == 2
    assert capped != plain
    w = a.softmax(-1)[:, PRIMITIVES.index("skip_connect")]
    kept = sorted(((node_offset(k // 2) + j) for k, (op, j) in enumerate(capped.normal) if op == "skip_connect"))
    strongest = sorted(sorted(((node_offset(k // 2) + j) for k, j in skips), key=lambda r: -float(w[r]))[:2])
    assert kept == strongest  # the two strongest skips survive; the others took their runner-up op
    assert capped.reduce == plain.reduce  # P-DARTS limits the normal cell only
    assert all(op != "skip_connect" for op, _ in limit_skips(a, a, PRIMITIVES, 4, 4, max_skips=0).normal)


def test_derive_applies_the_limit_only_when_configured(digits):
    net = SharedSupernet(dataclasses.replace(TINY, steps=4, multiplier=4), digits).model
    with torch.no_grad():
        net.alphas_normal.copy_(_skip_heavy_alphas())
    assert derive(net, SearchConfig()) == net.genotype()
    assert sum(op == "skip_connect" for op, _ in derive(net, SearchConfig(skip_limit=1)).normal) == 1
