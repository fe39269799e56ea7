"""Second-order DARTS alpha gradient vs a direct finite-difference estimate."""

import pytest
import torch
import torch.nn.functional as F

from nasdeploy.space.search_network import SearchNetwork
from nasdeploy.strategies.architect import Architect


def _tiny_net():
    torch.manual_seed(0)
    net = SearchNetwork(4, 3, 3, in_channels=1, steps=2, multiplier=2,
                        primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"))
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    return net.double().train()


def test_second_order_alpha_gradient_matches_finite_differences():
    net = _tiny_net()
    g = torch.Generator().manual_seed(1)
    xt, yt = torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    xv, yv = torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    xi, wd = 0.3, 1e-2
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=xi, momentum=0.9, weight_decay=wd)
    # one real step so that a momentum buffer exists and enters the virtual step
    w_opt.zero_grad()
    F.cross_entropy(net(xt), yt).backward()
    w_opt.step()

    # ReLU/max-pool kinks make the paper's radius (1e-2) coarse on a net this small: in float64
    # a small radius makes the finite-difference HVP exact enough to test the formula itself.
    arch = Architect(net, lr=3e-4, betas=(0.5, 0.999), weight_decay=0.0, order=2, hvp_r=1e-5)
    arch.unrolled_backward(xt, yt, xv, yv, xi, w_opt)
    got = net.alphas_normal.grad.clone()

    # direct estimate: f(alpha) = L_val(w'(alpha), alpha), w' from the same virtual SGD step
    def f() -> float:
        w_prime = arch.unrolled_weights(xt, yt, xi, w_opt)
        with torch.no_grad():
            return arch._loss(xv, yv, w_prime).item()

    h = 1e-5
    coords = [(0, 1), (1, 3), (2, 4), (4, 2)]
    for r, c in coords:
        with torch.no_grad():
            net.alphas_normal[r, c] += h
        fp = f()
        with torch.no_grad():
            net.alphas_normal[r, c] -= 2 * h
        fm = f()
        with torch.no_grad():
            net.alphas_normal[r, c] += h
        fd = (fp - fm) / (2 * h)
        assert got[r, c].item() == pytest.approx(fd, rel=2e-3, abs=1e-6), (r, c)


def test_first_order_gradient_differs_from_second_order():
    """Guards the test above: the unrolled term must matter at this xi."""
    net = _tiny_net()
    g = torch.Generator().manual_seed(2)
    xt, yt = torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    xv, yv = torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.3)
    arch = Architect(net, 3e-4, (0.5, 0.999), 0.0, order=2)
    arch.unrolled_backward(xt, yt, xv, yv, 0.3, w_opt)
    second = net.alphas_normal.grad.clone()
    net.alphas_normal.grad = None
    F.cross_entropy(net(xv), yv).backward(inputs=net.arch_parameters())
    assert (second - net.alphas_normal.grad).abs().max() > 1e-3
