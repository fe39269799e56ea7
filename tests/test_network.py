"""The final DARTS network: published sizes, train-only parts, batch independence in eval."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nasdeploy.space.genotype import GENOTYPES
from nasdeploy.space.network import Network, count_mult_adds, count_weights


def _warm_bn(net: Network, shape: tuple[int, ...], steps: int = 3) -> Network:
    """Give BatchNorm non-trivial running statistics with a few train-mode forwards."""
    net.train()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(steps):
            net(torch.randn(8, *shape, generator=g) * 2 + 0.5)
    return net.eval()


def test_darts_v2_cifar_has_the_published_weight_count():
    # Liu et al. 2019, Table 1: DARTS (second order) 3.3M; reference code: 3,349,342.
    net = Network(GENOTYPES["DARTS_V2"], C=36, num_classes=10, layers=20, auxiliary=True)
    assert count_weights(net, exclude_prefix="auxiliary_head") == 3_349_342
    assert count_weights(Network(GENOTYPES["DARTS_V2"], C=36, num_classes=10, layers=20)) == 3_349_342


def test_darts_v2_imagenet_mobile_has_the_published_weights_and_macs():
    # Liu et al. 2019, Table 2: 4.7M weights; 529.9M MACs as FlopCounterMode counts convs + linear.
    net = Network(GENOTYPES["DARTS_V2"], C=48, num_classes=1000, layers=14, stem="imagenet").eval()
    assert count_weights(net) == 4_718_752
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.zeros(1, 3, 224, 224))
    assert counter.get_total_flops() // 2 == 529_911_552
    assert count_mult_adds(net, (3, 224, 224)) == 529_911_552  # the run summary's figure


def test_auxiliary_head_runs_only_in_training():
    net = Network(GENOTYPES["DARTS_V2"], C=4, num_classes=5, layers=3, auxiliary=True, in_channels=1)
    x = torch.randn(4, 1, 8, 8)
    logits, aux = net.train().forward_train(x)
    assert logits.shape == (4, 5) and aux is not None and aux.shape == (4, 5)
    logits, aux = net.eval().forward_train(x)
    assert aux is None
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, 5)


def test_drop_path_applies_only_in_training():
    x = torch.randn(6, 1, 8, 8)
    net = Network(GENOTYPES["DARTS_V2"], C=4, num_classes=5, layers=3, in_channels=1, drop_path_prob=0.5)
    _warm_bn(net, (1, 8, 8))
    with torch.no_grad():
        torch.manual_seed(0)
        a = net.eval()(x)
        torch.manual_seed(1)
        b = net(x)
        assert torch.equal(a, b)  # eval: no random masks
        torch.manual_seed(0)
        c = net.train()(x)
        torch.manual_seed(1)
        d = net(x)
        assert not torch.allclose(c, d)  # train: masks differ with the seed
        net.drop_path_prob = 0.0
        torch.manual_seed(0)
        e = net(x)
        torch.manual_seed(1)
        f = net(x)
        assert torch.equal(e, f)  # ... and only because of drop-path


@pytest.mark.parametrize("stem,shape", [("cifar", (1, 8, 8)), ("imagenet", (3, 32, 32))])
def test_eval_output_does_not_depend_on_the_batch(stem, shape):
    torch.manual_seed(0)
    net = _warm_bn(Network(GENOTYPES["DARTS_V1"], C=4, num_classes=3, layers=3, in_channels=shape[0], stem=stem), shape)
    x = torch.randn(8, *shape) * 3
    with torch.no_grad():
        together = net(x)
        alone = torch.cat([net(x[i : i + 1]) for i in range(len(x))])
        perm = torch.randperm(len(x))
        shuffled = net(torch.cat([x[perm], torch.randn(5, *shape) * 10]))[: len(x)]
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)
    torch.testing.assert_close(shuffled, together[perm], rtol=0, atol=1e-5)
