"""Darknet's learning-rate policies, optimizer update and weight EMA, mapped onto PyTorch.

* `LearningRatePolicy.rate(batch_num)` is src/network.c `get_current_rate`: burn_in with `power`, then one of the
  policies constant, step, steps, exp, poly, sigmoid, random, sgdr. Darknet evaluates it with batch_num = the
  iteration number *after* the current iteration's increment (the update of iteration 1 uses rate(1)).
* `build_optimizer` reproduces `update_convolutional_layer` (and the connected/shortcut/implicit updates):
  gradients summed over the whole `batch` (all subdivisions), then
      dW += -decay*batch*W ;  W += (lr/batch)*dW ;  dW *= momentum         (weights)
      b  += (lr/batch)*db  ;  db *= momentum                              (biases, batch-norm scales: no decay)
  which is torch SGD on the batch-summed loss with lr' = lr/batch, weight_decay' = decay*batch on weights only,
  momentum, no dampening. The per-layer `learning_rate=` multiplier scales lr' of that layer. `adam=1` follows
  Darknet's GPU `adam_update_gpu` (Darknet's CPU build has no Adam): decay*batch on every parameter, the rate
  not divided by batch, bias correction with t = the iteration number.
* `WeightsEma` is `ema_update` / `ema_apply` ([net] ema_alpha).
"""
import math
import random
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from darkpy.cfg import Section

POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid", "random", "sgdr")

# Layer types whose `weight` Darknet decays (update_convolutional/connected/shortcut/implicit/local_layer).
DECAYED_LAYER_TYPES = ("convolutional", "connected", "shortcut", "implicit", "local")


class ScheduleError(ValueError):
    """A [net] learning-rate setting Darknet would reject (or crash on)."""


class ScheduleWarning(UserWarning):
    """A [net] learning-rate setting Darknet accepts with a fallback."""


def _where(net: Section, key: str) -> str:
    """'file:line: [net]' of an option (of the section when the option is absent), for ScheduleError/Warning."""
    line = net.options[key].line if net.has(key) else net.line
    return f"{net.file}:{line}: [net]"


@dataclass
class LearningRatePolicy:
    """The [net] learning-rate keys, read as parse_net_options reads them."""

    learning_rate: float = 0.001
    policy: str = "constant"
    burn_in: int = 0
    power: float = 4.0
    step: int = 1
    scale: float = 1.0
    steps: Tuple[int, ...] = ()
    scales: Tuple[float, ...] = ()
    gamma: float = 1.0
    max_batches: int = 0
    learning_rate_min: float = 0.00001
    sgdr_cycle: int = 0
    sgdr_mult: int = 2
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    @classmethod
    def from_net(cls, net: Section, learning_rate: Optional[float] = None,
                 max_batches: Optional[int] = None) -> "LearningRatePolicy":
        """From the [net] section (parse_net_options); `learning_rate`/`max_batches` override the cfg (command
        line). A value that is not a number raises CfgError naming file, line and option."""
        lr = net.get_float("learning_rate", 0.001) if learning_rate is None else float(learning_rate)
        mb = net.get_int("max_batches", 0) if max_batches is None else int(max_batches)
        policy = net.get_str("policy", "constant")
        if policy not in POLICIES:
            warnings.warn(f"{_where(net, 'policy')} policy={policy}: Darknet says \"Couldn't find policy {policy}, "
                          "going with constant\"", ScheduleWarning, stacklevel=2)
            policy = "constant"
        p = cls(learning_rate=lr, policy=policy, burn_in=net.get_int("burn_in", 0),
                power=net.get_float("power", 4.0), max_batches=mb,
                learning_rate_min=net.get_float("learning_rate_min", 0.00001),
                sgdr_cycle=net.get_int("sgdr_cycle", mb), sgdr_mult=net.get_int("sgdr_mult", 2))
        if policy == "step":
            p.step, p.scale = net.get_int("step", 1), net.get_float("scale", 1.0)
        elif policy in ("steps", "sgdr"):
            steps, scales = net.get_int_list("steps"), net.get_float_list("scales")
            if policy == "steps" and (steps is None or scales is None):
                raise ScheduleError(f"{_where(net, 'policy')} policy=steps needs both steps= and scales= (Darknet: "
                                    "\"STEPS policy must have steps and scales in cfg file\")")
            p.steps = tuple(steps or ())
            p.scales = tuple(scales) if scales is not None else (1.0,) * len(p.steps)
            if len(p.scales) < len(p.steps):
                raise ScheduleError(f"{_where(net, 'scales')} steps= has {len(p.steps)} values but scales= has "
                                    f"{len(p.scales)} (Darknet reads past the end of the list)")
            p.scales = p.scales[:len(p.steps)]
        elif policy == "exp":
            p.gamma = net.get_float("gamma", 1.0)
        elif policy == "sigmoid":
            p.gamma, p.step = net.get_float("gamma", 1.0), net.get_int("step", 1)
        return p

    def rate(self, batch_num: int) -> float:
        """get_current_rate for the given batch number (iterations done, counting the current one)."""
        lr = self.learning_rate
        if batch_num < self.burn_in:
            return lr * math.pow(batch_num / self.burn_in, self.power)
        if self.policy == "constant":
            return lr
        if self.policy == "step":
            return lr * math.pow(self.scale, batch_num // self.step)
        if self.policy == "steps":
            for step, scale in zip(self.steps, self.scales):
                if step > batch_num:
                    break
                lr *= scale
            return lr
        if self.policy == "exp":
            return lr * math.pow(self.gamma, batch_num)
        if self.policy == "poly":
            return lr * math.pow(1 - batch_num / self.max_batches, self.power) if self.max_batches else lr
        if self.policy == "random":
            return lr * math.pow(self.rng.random(), self.power)
        if self.policy == "sigmoid":
            return lr * (1.0 / (1.0 + math.exp(self.gamma * (batch_num - self.step))))
        if self.policy == "sgdr":
            return self._sgdr(batch_num)
        return lr

    def _sgdr(self, batch_num: int) -> float:
        start, cycle = 0, self.sgdr_cycle
        while cycle > 0 and start + cycle < batch_num:
            start += cycle
            cycle *= self.sgdr_mult
        if cycle <= 0:
            return self.learning_rate
        return self.learning_rate_min + 0.5 * (self.learning_rate - self.learning_rate_min) * (
            1.0 + math.cos((batch_num - start) * 3.14159265 / cycle))



@dataclass
class OptimizerSettings:
    """[net] momentum, decay, adam/B1/B2/eps and the images per iteration (`batch`)."""

    batch: int
    momentum: float = 0.9
    decay: float = 0.0001
    adam: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 0.000001

    @classmethod
    def from_net(cls, net: Section, batch: int) -> "OptimizerSettings":
        """From the [net] section (parse_net_options: B1, B2, eps are read only with adam=1)."""
        adam = bool(net.get_int("adam", 0))
        return cls(batch=int(batch), momentum=net.get_float("momentum", 0.9), decay=net.get_float("decay", 0.0001),
                   adam=adam, b1=net.get_float("B1", 0.9) if adam else 0.9,
                   b2=net.get_float("B2", 0.999) if adam else 0.999,
                   eps=net.get_float("eps", 0.000001) if adam else 0.000001)


def _is_decayed(layer: nn.Module, name: str) -> bool:
    """Darknet decays the weights of conv/connected/shortcut/implicit/local layers; never biases or BN scales."""
    return getattr(layer, "type", None) in DECAYED_LAYER_TYPES and name.split(".")[-1] in ("weight", "weights")


def parameter_groups(layers: Iterable[nn.Module]) -> List[Dict]:
    """One group per (layer learning_rate multiplier, decayed or not), skipping frozen (requires_grad=False) params.

    Each group carries `lr_scale` (the layer's `learning_rate=`) and `decayed`.
    """
    groups: Dict[Tuple[float, bool], List[torch.Tensor]] = {}
    seen = set()
    for layer in layers:
        scale = float(getattr(layer, "learning_rate_scale", 1.0))
        for name, param in layer.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            groups.setdefault((scale, _is_decayed(layer, name)), []).append(param)
    return [{"params": params, "lr_scale": scale, "decayed": decayed}
            for (scale, decayed), params in groups.items()]


class DarknetAdam(torch.optim.Optimizer):
    """adam_update_gpu: m, v of the (decayed) negative gradient, bias-corrected with t = the iteration number.

    x += rate * mhat / (sqrt(vhat) + eps), with d = -(grad + decay*batch*x) for every parameter.
    Set `optimizer.t` to the iteration number before step().
    """

    def __init__(self, params, lr: float, b1: float, b2: float, eps: float, weight_decay: float):
        super().__init__(params, dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay))
        self.t = 1

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            correction1 = 1 - math.pow(b1, self.t)
            correction2 = 1 - math.pow(b2, self.t)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                d = -(p.grad + group["weight_decay"] * p)
                state["m"].mul_(b1).add_(d, alpha=1 - b1)
                state["v"].mul_(b2).addcmul_(d, d, value=1 - b2)
                mhat = state["m"] / correction1
                vhat = state["v"] / correction2
                p.add_(group["lr"] * mhat / (vhat.sqrt() + group["eps"]))


def build_optimizer(layers: Iterable[nn.Module], settings: OptimizerSettings) -> torch.optim.Optimizer:
    """Darknet's update as a torch optimizer; call `set_learning_rate(opt, rate, settings)` before each step."""
    groups = parameter_groups(layers)
    if settings.adam:
        for g in groups:  # adam_update_gpu decays biases and scales too
            g["weight_decay"] = settings.decay * settings.batch
        return DarknetAdam(groups, lr=0.0, b1=settings.b1, b2=settings.b2, eps=settings.eps, weight_decay=0.0)
    for g in groups:
        g["weight_decay"] = settings.decay * settings.batch if g["decayed"] else 0.0
    return torch.optim.SGD(groups, lr=0.0, momentum=settings.momentum, dampening=0.0, nesterov=False)


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float, settings: OptimizerSettings,
                      iteration: int) -> None:
    """Per-group lr for this update: rate*scale/batch for SGD, rate*scale for Adam (which also needs t)."""
    for g in optimizer.param_groups:
        g["lr"] = rate * g["lr_scale"] / (1 if settings.adam else settings.batch)
    if isinstance(optimizer, DarknetAdam):
        optimizer.t = max(int(iteration), 1)



class WeightsEma:
    """ema_update/ema_apply of Darknet's train_network_waitkey for convolutional layers.

    From iteration max_batches/2 the EMA is initialised with a copy of the weights, then updated each iteration
    with `ema = alpha*ema + (1-alpha)*w` while iteration < max_batches-1000; at exactly max_batches-1000 the EMA is
    copied into the model. Weights, biases and batch-norm scales take part (not the rolling statistics).
    """

    def __init__(self, layers: Sequence[nn.Module], alpha: float, max_batches: int):
        self.alpha = float(alpha)
        self.start = max_batches // 2
        self.apply_at = max_batches - 1000
        self.params: List[torch.Tensor] = [p for layer in layers
                                           if getattr(layer, "type", None) == "convolutional"
                                           for p in layer.parameters(recurse=False)]
        self.shadow: Optional[List[torch.Tensor]] = None

    @property
    def initialized(self) -> bool:
        return self.shadow is not None

    @torch.no_grad()
    def after_update(self, iteration: int) -> Optional[str]:
        """Call after each optimizer step with the iteration number; returns Darknet's message, if any."""
        if not self.alpha or iteration < self.start:
            return None
        message = None
        if self.shadow is None:
            self.shadow = [p.detach().clone() for p in self.params]
            message = "EMA initialization"
        if iteration == self.apply_at:
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
            return "ema_apply()"
        if iteration < self.apply_at:
            for p, s in zip(self.params, self.shadow):
                s.mul_(self.alpha).add_(p.detach(), alpha=1 - self.alpha)
            message = message or f"ema_update(), ema_alpha = {self.alpha:f}"
        return message

    @torch.no_grad()
    def swapped_in(self):
        """Context manager: the EMA values temporarily in the model (to save `_ema.weights`)."""
        ema = self

        class _Swap:
            def __enter__(self_inner):
                self_inner.saved = [p.detach().clone() for p in ema.params]
                for p, s in zip(ema.params, ema.shadow):
                    p.copy_(s)

            def __exit__(self_inner, *exc):
                with torch.no_grad():
                    for p, s in zip(ema.params, self_inner.saved):
                        p.copy_(s)
                return False

        return _Swap()
