"""PC-DARTS partial channels (Xu et al., 2020) on the fused kernel: parity, edge normalization, derivation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasdeploy.config import SearchConfig, validate
from nasdeploy.errors import ConfigError
from nasdeploy.ops import kernel_status
from nasdeploy.space.cell import derivation_weights
from nasdeploy.space.genotype import Genotype
from nasdeploy.space.mixed_op import channel_shuffle
from nasdeploy.space.network import Network
from nasdeploy.space.search_network import SearchNetwork
from nasdeploy.strategies.architect import Architect

if not kernel_status()["cpu"]["available"]:
    pytest.skip("the fused CPU kernel is not built", allow_module_level=True)

PRIMS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")


def _net(kernel: str, K: int = 2) -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(8, 3, 3, in_channels=1, steps=2, multiplier=2, kernel=kernel, primitives=PRIMS,
                         partial_channels=K).double()


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_edge_normalization_multiplies_into_the_derivation_weights():
    alphas = torch.randn(5, 4)
    betas = torch.tensor([0.0, 1.0, 2.0, 0.0, -1.0])  # node 0: edges 0-1, node 1: edges 2-4
    e = torch.cat([torch.softmax(betas[:2], 0), torch.softmax(betas[2:], 0)])
    torch.testing.assert_close(derivation_weights(alphas, betas), torch.softmax(alphas, -1) * e[:, None])
    torch.testing.assert_close(derivation_weights(alphas), torch.softmax(alphas, -1))


def test_partial_channel_search_step_fused_matches_reference_and_runs_fused():
    ref, fused = _net("reference"), _net("fused")
    fused.load_state_dict(ref.state_dict())
    assert len(fused.arch_parameters()) == 4 and all(id(b) not in map(id, fused.weight_parameters())
                                                     for b in fused.betas())
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    grads = []
    for net in (ref, fused):
        with torch.profiler.profile() as prof:
            F.cross_entropy(net(x), y).backward()
        names = [e.name for e in prof.events()]
        assert names.count("nasdeploy::mixed_op") == (15 if net is fused else 0)  # 5 edges x 3 cells
        grads.append({n: p.grad for n, p in net.named_parameters()})
    for name, g in grads[0].items():  # alphas, betas and every weight
        torch.testing.assert_close(grads[1][name], g, rtol=1e-8, atol=1e-10, msg=name)
    assert grads[1]["betas_normal"].abs().sum() > 0


def test_partial_channel_genotype_keeps_the_contract_and_second_order_trains_betas():
    net = _net("auto", K=4)
    with torch.no_grad():
        net.betas_normal.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0, -5.0]))  # node inputs 0 and 2 dominate
    g = net.genotype()
    Genotype.from_dict(g.to_dict())  # the same JSON contract as DARTS
    Network(g, 8, 3, 3, in_channels=1)  # and every later stage builds from it
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9)
    arch = Architect(net, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3, order=2)
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))
    arch.step(x, y, x, y, 0.1, w_opt)
    assert net.betas_normal.grad is not None and net.betas_normal.grad.abs().sum() > 0


def test_partial_channels_must_divide_the_channels():
    with pytest.raises(ConfigError, match="partial_channels"):
        validate(SearchConfig(C=6, partial_channels=4))
    with pytest.raises(ConfigError, match="partial_channels"):
        _net("auto", K=3)
