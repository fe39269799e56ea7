"""The architecture (alpha) step of DARTS: first order and unrolled second order.

Second order (Liu et al., 2019, eqs. 6–8):
    w' = w - xi * (dL_train/dw + momentum buffer + wd * w)          (one virtual SGD step)
    g  = dL_val(w', a)/da - xi * [dL_train(w+, a)/da - dL_train(w-, a)/da] / (2 eps)
    w± = w ± eps * dL_val(w', a)/dw',  eps = 0.01 / ||dL_val(w', a)/dw'||
The virtual weights are passed with ``torch.func.functional_call``: the network
is never copied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..space.search_network import SearchNetwork

Penalty = Callable[[SearchNetwork], torch.Tensor]


class Architect:
    """Owns the alpha optimizer (Adam) and computes alpha gradients.

    Args:
        model: the supernet.
        lr, betas, weight_decay: Adam on alpha (paper: 3e-4, (0.5, 0.999), 1e-3).
        order: 1 (first order: alpha gradient at the current w) or 2 (unrolled).
        penalty: optional extra architecture loss (e.g. the latency term), added to L_val.
        hvp_r: finite-difference radius of the Hessian-vector product (paper: 0.01).
    """

    def __init__(self, model: SearchNetwork, lr: float, betas: tuple[float, float], weight_decay: float,
                 order: int = 1, penalty: Penalty | None = None, hvp_r: float = 1e-2):
        self.model = model
        self.order = order
        self.penalty = penalty
        self.hvp_r = hvp_r
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
        weights = {id(p) for p in model.weight_parameters()}  # not alphas, nor PC-DARTS betas
        self._names = [n for n, p in model.named_parameters() if id(p) in weights]

    def _loss(self, x, y, weights: dict | None = None) -> torch.Tensor:
        logits = self.model(x) if weights is None else functional_call(self.model, weights, (x,), strict=False)
        return F.cross_entropy(logits, y)

    def step(self, x_train, y_train, x_val, y_val, xi: float, w_optimizer: torch.optim.Optimizer) -> dict:
        """One Adam step on alpha; returns the arch loss parts as floats."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.order == 1:
            loss = self._loss(x_val, y_val)
            extra = self.penalty(self.model) if self.penalty is not None else None
            total = loss + extra if extra is not None else loss
            total.backward(inputs=self.model.arch_parameters())
        else:
            loss = self.unrolled_backward(x_train, y_train, x_val, y_val, xi, w_optimizer)
            extra = None
            if self.penalty is not None:  # the penalty depends on alpha only
                extra = self.penalty(self.model)
                extra.backward(inputs=self.model.arch_parameters())
        self.optimizer.step()
        return {"arch_loss": loss.item(), "penalty": extra.item() if extra is not None else None}

    def unrolled_weights(self, x_train, y_train, xi: float, w_optimizer: torch.optim.Optimizer) -> dict:
        """w' = w - xi * (grad + momentum * buffer + wd * w), as the next SGD step would do."""
        params = self.model.weight_parameters()
        grads = torch.autograd.grad(self._loss(x_train, y_train), params)
        group = w_optimizer.param_groups[0]
        momentum, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        out = {}
        for name, p, g in zip(self._names, params, grads):
            buf = w_optimizer.state.get(p, {}).get("momentum_buffer")
            step = g + wd * p.detach()
            if buf is not None and momentum:
                step = step + momentum * buf
            out[name] = (p.detach() - xi * step).requires_grad_(True)
        return out

    def unrolled_backward(self, x_train, y_train, x_val, y_val, xi: float, w_optimizer) -> torch.Tensor:
        """Set alpha.grad to the second-order DARTS gradient; returns L_val(w', alpha)."""
        alphas = self.model.arch_parameters()
        w_prime = self.unrolled_weights(x_train, y_train, xi, w_optimizer)
        loss = self._loss(x_val, y_val, w_prime)
        grads = torch.autograd.grad(loss, alphas + list(w_prime.values()))
        d_alpha, d_w = grads[: len(alphas)], grads[len(alphas) :]
        hvp = self.hessian_vector_product(d_w, x_train, y_train, self.hvp_r)
        for a, da, h in zip(alphas, d_alpha, hvp):
            a.grad = da - xi * h
        return loss.detach()

    def hessian_vector_product(self, vector, x, y, r: float) -> list[torch.Tensor]:
        """(d/da L_train(w + eps v) - d/da L_train(w - eps v)) / (2 eps), eps = r / ||v||."""
        eps = r / torch.cat([v.reshape(-1) for v in vector]).norm()
        base = {n: p.detach() for n, p in zip(self._names, self.model.weight_parameters())}
        alphas = self.model.arch_parameters()
        grads = []
        for sign in (1.0, -1.0):
            shifted = {n: base[n] + sign * eps * v for n, v in zip(self._names, vector)}
            grads.append(torch.autograd.grad(self._loss(x, y, shifted), alphas))
        return [(gp - gn) / (2 * eps) for gp, gn in zip(*grads)]
