"""Search space: primitive shapes, cell wiring, weight counts (reference DARTS numbers)."""

import pytest
import torch

from nasdeploy.space.cell import edge_inputs, num_edges, reduction_layers
from nasdeploy.space.primitives import OPS, PRIMITIVES
from nasdeploy.space.search_network import SearchNetwork


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7])
def test_primitive_output_shape(name, stride, hw):
    op = OPS[name](6, stride, False)
    y = op(torch.randn(2, 6, hw, hw))
    out = -(-hw // stride)  # ceil: "same" padding, then stride
    assert y.shape == (2, 6, out, out)


def test_none_is_zero_and_skip_is_identity():
    x = torch.randn(2, 4, 6, 6)
    assert torch.count_nonzero(OPS["none"](4, 1, False)(x)) == 0
    assert torch.equal(OPS["skip_connect"](4, 1, False)(x), x)


def test_cell_wiring_has_14_edges_and_stride2_from_inputs_in_reduction():
    assert num_edges(4) == 14
    assert edge_inputs(4)[:5] == [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    net = SearchNetwork(4, 10, 5, in_channels=1)
    assert reduction_layers(5) == (1, 3)
    for i, cell in enumerate(net.cells):
        assert len(cell.edges) == 14
        strides = [e.stride for e in cell.edges]
        expected = [2 if (i in (1, 3) and j < 2) else 1 for _, j in edge_inputs(4)]
        assert strides == expected
        assert cell.reduction == (i in (1, 3))
        # pools carry an affine-free BN inside the search network
        pool = cell.edges[0].ops[PRIMITIVES.index("max_pool_3x3")]
        assert isinstance(pool[1], torch.nn.BatchNorm2d) and not pool[1].affine


def test_search_network_weight_count_matches_reference_darts():
    net = SearchNetwork(16, 10, 8, in_channels=3)
    assert sum(p.numel() for p in net.weight_parameters()) == 1_930_618
    assert [a.shape for a in net.arch_parameters()] == [(14, 8), (14, 8)]


def test_search_network_forward_and_configurable_space():
    net = SearchNetwork(4, 3, 3, in_channels=2, steps=2, multiplier=2, primitives=("none", "skip_connect",
                                                                                     "sep_conv_3x3"))
    assert net.alphas_normal.shape == (5, 3)
    assert net(torch.randn(2, 2, 9, 9)).shape == (2, 3)
    g = net.genotype()
    assert g.steps == 2 and g.normal_concat == (2, 3)
