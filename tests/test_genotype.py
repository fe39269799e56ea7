"""Genotype derivation, JSON contract and validation."""

import json

import pytest
import torch

from nasdeploy.errors import GenotypeError
from nasdeploy.space.cell import derive_genotype
from nasdeploy.space.genotype import GENOTYPES, Genotype
from nasdeploy.space.primitives import PRIMITIVES

P = list(PRIMITIVES)


def _alphas(choices, n_edges=14, strength=5.0):
    """alphas with ``choices[edge] = (op, logit)``; everything else 0."""
    a = torch.zeros(n_edges, len(P))
    for e, (op, v) in choices.items():
        a[e, P.index(op)] = v
    return a


def test_derive_keeps_two_strongest_non_none_edges_per_node():
    # node 2: edges 0,1; node 3: edges 2,3,4; node 4: 5..8; node 5: 9..13
    a = _alphas({
        0: ("sep_conv_3x3", 3.0), 1: ("max_pool_3x3", 2.0),
        2: ("dil_conv_5x5", 1.0), 3: ("skip_connect", 4.0), 4: ("avg_pool_3x3", 2.5),
        5: ("none", 9.0), 6: ("sep_conv_5x5", 2.0), 7: ("dil_conv_3x3", 3.0), 8: ("none", 8.0),
        9: ("sep_conv_3x3", 1.0), 10: ("sep_conv_3x3", 1.5), 11: ("skip_connect", 0.5),
        12: ("max_pool_3x3", 2.0), 13: ("avg_pool_3x3", 3.0),
    })
    g = derive_genotype(a, a)
    assert g.normal == (
        ("sep_conv_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 1), ("avg_pool_3x3", 2),
        # edge 5 (input 0) has none strongest: its best non-none op is still ranked among the rest
        ("dil_conv_3x3", 2), ("sep_conv_5x5", 1),
        ("avg_pool_3x3", 4), ("max_pool_3x3", 3),
    )
    assert g.normal_concat == (2, 3, 4, 5)


def test_derive_never_picks_none_even_when_it_dominates():
    a = torch.zeros(14, len(P))
    a[:, 0] = 10.0  # none strongest everywhere
    a[:, P.index("dil_conv_3x3")] = 1.0
    g = derive_genotype(a, a)
    assert all(op == "dil_conv_3x3" for op, _ in g.normal + g.reduce)


def test_json_round_trip(tmp_path):
    g = GENOTYPES["DARTS_V2"]
    p = g.save(tmp_path / "g.json")
    assert Genotype.load(p) == g
    assert json.loads(p.read_text())["normal"][0] == ["sep_conv_3x3", 0]
    assert Genotype.load("DARTS_V1") is GENOTYPES["DARTS_V1"]


def _bad(mutate):
    d = GENOTYPES["DARTS_V2"].to_dict()
    mutate(d)
    return d


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d.pop("reduce"), "$: missing key 'reduce'"),
    (lambda d: d.update(extra=1), "$.extra: unknown key"),
    (lambda d: d["normal"].__setitem__(3, ["conv_9x9", 0]), "$.normal[3][0]: unknown op 'conv_9x9'"),
    (lambda d: d["normal"].__setitem__(0, ["none", 0]), "$.normal[0][0]: unknown op 'none'"),
    (lambda d: d["reduce"].__setitem__(2, ["skip_connect", 3]), "$.reduce[2][1]: input 3 out of range for node 3"),
    (lambda d: d["normal"].__setitem__(0, ["skip_connect", -1]), "$.normal[0][1]: input -1"),
    (lambda d: d["normal"].pop(), "$.normal: 7 edges"),
    (lambda d: d["normal"].__setitem__(1, "sep_conv_3x3"), "$.normal[1]: expected [op, input]"),
    (lambda d: d.__setitem__("normal_concat", [2, 9]), "$.normal_concat[1]: node 9 out of range"),
    (lambda d: d.__setitem__("reduce_concat", []), "$.reduce_concat: expected a non-empty list"),
    (lambda d: d["reduce"].extend([["skip_connect", 0], ["skip_connect", 1]]), "$.reduce: normal and reduce"),
])
def test_validation_names_the_first_problem_by_json_path(mutate, path):
    with pytest.raises(GenotypeError) as e:
        Genotype.from_dict(_bad(mutate), "g.json")
    assert f"g.json: {path}" in str(e.value)


def test_load_rejects_non_json_and_unknown_names(tmp_path):
    p = tmp_path / "g.json"
    p.write_text("{not json")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.load(p)
    with pytest.raises(GenotypeError, match="neither a file nor a published name"):
        Genotype.load("DARTS_V9")
    p.write_text("[1, 2]")
    with pytest.raises(GenotypeError, match="expected a JSON object"):
        Genotype.load(p)
