"""darkpy.training.schedule: Darknet's get_current_rate and update_convolutional_layer, values computed by hand."""
import math
import random

import pytest
import torch

from darkpy.cfg import Section, parse_cfg_text
from darkpy.model import Darknet
from darkpy.training.schedule import (LearningRatePolicy, OptimizerSettings, ScheduleError, WeightsEma,
                                      build_optimizer, parameter_groups, set_learning_rate)


def net_section(**net) -> Section:
    """A [net] section holding these options, as parse_cfg reads them."""
    return parse_cfg_text("[net]\n" + "".join(f"{k}={v}\n" for k, v in net.items()), "net.cfg")[0]


def policy(**net) -> LearningRatePolicy:
    return LearningRatePolicy.from_net(net_section(**net))


def test_burn_in_overrides_the_policy():
    p = policy(learning_rate=0.001, burn_in=100, policy="steps", steps="50", scales=".1")
    assert p.rate(0) == 0.0
    assert p.rate(50) == pytest.approx(0.001 * 0.5 ** 4)  # power defaults to 4, steps ignored during burn-in
    assert p.rate(100) == pytest.approx(0.0001)  # after burn-in: steps policy, 50 <= 100
    assert policy(learning_rate=0.01, burn_in=10, power=2).rate(5) == pytest.approx(0.01 * 0.25)


def test_steps_multiplies_every_scale_reached():
    p = policy(learning_rate=0.001, policy="steps", steps="400,800,1200", scales=".1,.1,10")
    assert p.rate(399) == pytest.approx(0.001)
    assert p.rate(400) == pytest.approx(0.0001)
    assert p.rate(799) == pytest.approx(0.0001)
    assert p.rate(800) == pytest.approx(0.00001)
    assert p.rate(1500) == pytest.approx(0.0001)
    with pytest.raises(ScheduleError, match="steps= and scales="):
        policy(policy="steps", steps="400")


def test_step_exp_poly_sigmoid():
    assert policy(learning_rate=0.001, policy="step", step=100, scale=0.5).rate(250) == pytest.approx(0.001 * 0.25)
    assert policy(learning_rate=0.001, policy="exp", gamma=0.99).rate(10) == pytest.approx(0.001 * 0.99 ** 10)
    assert policy(learning_rate=0.001, policy="poly", power=2, max_batches=1000).rate(500) == pytest.approx(2.5e-4)
    sig = policy(learning_rate=0.001, policy="sigmoid", gamma=0.1, step=100)
    assert sig.rate(100) == pytest.approx(0.0005)
    assert sig.rate(110) == pytest.approx(0.001 / (1 + math.e))


def test_random_policy_draws_uniform_to_the_power():
    p = policy(learning_rate=0.001, policy="random", power=2)
    p.rng = random.Random(7)
    expected = [0.001 * random.Random(7).random() ** 2]
    assert p.rate(3) == pytest.approx(expected[0])


def test_sgdr_cosine_with_growing_cycles():
    p = policy(learning_rate=0.001, learning_rate_min=0.00001, policy="sgdr", sgdr_cycle=100, sgdr_mult=2,
               max_batches=1000)
    assert p.rate(0) == pytest.approx(0.001)
    assert p.rate(50) == pytest.approx(0.00001 + 0.5 * 0.00099 * (1 + math.cos(50 * 3.14159265 / 100)))
    # 150: the first cycle (0..100) is over, the second starts at 100 and lasts 200
    assert p.rate(150) == pytest.approx(0.00001 + 0.5 * 0.00099 * (1 + math.cos(50 * 3.14159265 / 200)))
    assert policy(max_batches=500, policy="sgdr").sgdr_cycle == 500  # default cycle = max_batches


def test_unknown_policy_falls_back_to_constant():
    with pytest.warns(UserWarning, match="going with constant"):
        p = policy(learning_rate=0.002, policy="cosine")
    assert p.rate(1000) == 0.002


# ---- optimizer: update_convolutional_layer ---------------------------------------------------------------------

CFG = """
[net]
width=8
height=8
channels=1
[convolutional]
filters=2
size=3
pad=1
batch_normalize=1
activation=leaky
[convolutional]
filters=1
size=1
activation=linear
learning_rate=0.5
"""


def _model() -> Darknet:
    torch.manual_seed(1)
    return Darknet(parse_cfg_text(CFG, "opt.cfg"))


def _darknet_update(w, dw, grad_sum, lr, batch, momentum, decay, decayed):
    """update_convolutional_layer: dW += -grad; dW += -decay*batch*W; W += lr/batch*dW; dW *= momentum."""
    dw = dw - grad_sum
    if decayed:
        dw = dw - decay * batch * w
    w = w + lr / batch * dw
    return w, dw * momentum


def test_sgd_matches_darknet_update_with_decay_on_weights_only():
    model = _model()
    settings = OptimizerSettings(batch=4, momentum=0.9, decay=0.0005)
    opt = build_optimizer(model.layers, settings)
    conv0, conv1 = model.layers[0], model.layers[1]
    tracked = {"w0": (conv0.weight, 1.0, True), "b0": (conv0.bias, 1.0, False),
               "s0": (conv0.bn_weight, 1.0, False), "w1": (conv1.weight, 0.5, True), "b1": (conv1.bias, 0.5, False)}
    ref = {k: (p.detach().clone(), torch.zeros_like(p)) for k, (p, _, _) in tracked.items()}
    x = torch.randn(4, 1, 8, 8)
    rates = [0.01, 0.02, 0.005]
    for it, rate in enumerate(rates, start=1):
        opt.zero_grad()
        model.train()
        out = model(x)
        (out ** 2).sum().backward()  # any batch-summed loss
        grads = {k: p.grad.detach().clone() for k, (p, _, _) in tracked.items()}
        set_learning_rate(opt, rate, settings, it)
        opt.step()
        for k, (p, scale, decayed) in tracked.items():
            w, dw = ref[k]
            ref[k] = _darknet_update(w, dw, grads[k], rate * scale, 4, 0.9, 0.0005, decayed)
            torch.testing.assert_close(p.detach(), ref[k][0], rtol=1e-5, atol=1e-7)


def test_parameter_groups_split_by_multiplier_and_decay():
    model = _model()
    groups = {(g["lr_scale"], g["decayed"]): g for g in parameter_groups(model.layers)}
    assert set(groups) == {(1.0, True), (1.0, False), (0.5, True), (0.5, False)}
    assert groups[(1.0, True)]["params"] == [model.layers[0].weight]
    assert len(groups[(1.0, False)]["params"]) == 2  # bias and batch-norm scale
    opt = build_optimizer(model.layers, OptimizerSettings(batch=64, decay=0.0005))
    decays = {(g["lr_scale"], g["decayed"]): g["weight_decay"] for g in opt.param_groups}
    assert decays[(1.0, True)] == pytest.approx(0.0005 * 64)
    assert decays[(1.0, False)] == 0.0
    set_learning_rate(opt, 0.001, OptimizerSettings(batch=64), 1)
    lrs = {(g["lr_scale"], g["decayed"]): g["lr"] for g in opt.param_groups}
    assert lrs[(0.5, True)] == pytest.approx(0.001 * 0.5 / 64)


def test_adam_follows_darknet_adam_update():
    model = _model()
    settings = OptimizerSettings.from_net(net_section(adam=1, B1=0.8, B2=0.99, eps=0.001, decay=0.001), batch=2)
    assert settings.adam and settings.b1 == 0.8 and settings.eps == 0.001
    opt = build_optimizer(model.layers, settings)
    p = model.layers[0].bias
    x = torch.randn(2, 1, 8, 8)
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    ref = p.detach().clone()
    for t in (1, 2):
        opt.zero_grad()
        model.train()
        model(x).sum().backward()
        g = p.grad.detach().clone()
        set_learning_rate(opt, 0.01, settings, t)
        opt.step()
        d = -g - 0.001 * 2 * ref  # adam_update_gpu decays biases too
        m = 0.8 * m + 0.2 * d
        v = 0.99 * v + 0.01 * d * d
        ref = ref + 0.01 * (m / (1 - 0.8 ** t)) / ((v / (1 - 0.99 ** t)).sqrt() + 0.001)
        torch.testing.assert_close(p.detach(), ref, rtol=1e-5, atol=1e-7)


def test_weights_ema_starts_at_half_and_applies_1000_before_the_end():
    model = _model()
    ema = WeightsEma(model.layers, alpha=0.5, max_batches=2400)  # start 1200, apply at 1400
    w = model.layers[0].weight
    assert ema.after_update(1199) is None and not ema.initialized
    assert ema.after_update(1200) == "EMA initialization"
    with torch.no_grad():
        start = w.detach().clone()
        w.add_(1.0)
    ema.after_update(1201)  # ema = .5*start + .5*(start+1)
    torch.testing.assert_close(ema.shadow[0], start + 0.5)
    with torch.no_grad():
        w.add_(1.0)
    assert ema.after_update(1400) == "ema_apply()"
    torch.testing.assert_close(w.detach(), start + 0.5)
