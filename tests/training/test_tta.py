"""Entropy-minimising test-time adaptation: the filter, the parameters it moves, its updates."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tokenwise.errors import TokenwiseError
from tokenwise.training.tta import EntropyMinimization, is_norm_layer, norm_parameters, tent


class CustomRMSNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def make_net(seed: int = 0, norm: type = nn.LayerNorm) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), norm(16), nn.ReLU(), nn.Linear(16, 3))


def entropy(logits):
    p = torch.softmax(logits, -1)
    return -(p * torch.log_softmax(logits, -1)).sum(-1)


def test_norm_layers_found_by_type_and_by_name():
    net = nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.BatchNorm1d(4), nn.RMSNorm(4),
                        CustomRMSNorm(4), nn.Linear(4, 2))
    names = [n for n, _ in norm_parameters(net)]
    assert names == ["1.weight", "1.bias", "2.weight", "2.bias", "3.weight", "4.weight"]
    assert not is_norm_layer(nn.Linear(2, 2))


def test_first_batch_keeps_everything_and_only_norm_parameters_move():
    net = make_net()
    before = copy.deepcopy(net.state_dict())
    adapt = EntropyMinimization(net, lr=1e-2)
    x = torch.randn(32, 4)
    before_logits = make_net()(x)
    logits = adapt(x)
    torch.testing.assert_close(logits, before_logits)  # the logits are from before the update
    assert adapt.kept_fraction == 1.0
    after = net.state_dict()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == name.startswith("1."), name


def test_update_is_the_gradient_of_mean_entropy_over_kept_samples():
    lr = 0.5
    net = make_net(1)
    adapt = EntropyMinimization(net, optimizer=lambda ps: torch.optim.SGD(ps, lr=lr))
    gen = torch.Generator().manual_seed(2)
    adapt(torch.randn(64, 4, generator=gen) * 3 + 1)  # move away from the original
    x = torch.randn(64, 4, generator=gen) * 3 + 1

    # independent computation of the next step
    mirror = copy.deepcopy(net)
    original = make_net(1)
    with torch.no_grad():
        p0 = torch.softmax(original(x), -1)
        c = p0.argmax(-1)
        p = torch.softmax(mirror(x), -1)
        keep = p[torch.arange(64), c] >= p0[torch.arange(64), c]
    assert 0 < int(keep.sum()) < 64  # the filter really drops some samples here
    norm = mirror[1]
    norm.weight.grad = norm.bias.grad = None
    entropy(mirror(x))[keep].mean().backward()
    expected_w = norm.weight.detach() - lr * norm.weight.grad
    expected_b = norm.bias.detach() - lr * norm.bias.grad

    adapt(x)
    assert adapt.kept_fraction == pytest.approx(float(keep.float().mean()))
    torch.testing.assert_close(net[1].weight.detach(), expected_w)
    torch.testing.assert_close(net[1].bias.detach(), expected_b)


def test_tent_uses_every_sample():
    net = make_net(1)
    adapt = tent(net, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.5))
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        adapt(torch.randn(64, 4, generator=gen) * 3 + 1)
        assert adapt.kept_fraction == 1.0
    assert adapt.seen_total == adapt.kept_total == 192


def test_no_kept_sample_means_no_update():
    net = make_net(3)
    adapt = EntropyMinimization(net, lr=1.0)
    adapt.keep_mask = lambda logits, ref: torch.zeros(logits.shape[0], dtype=torch.bool)
    state = copy.deepcopy(net.state_dict())
    adapt(torch.randn(8, 4))
    assert adapt.kept_fraction == 0.0
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_batchnorm_uses_batch_statistics_and_reset_restores():
    net = make_net(4, norm=nn.BatchNorm1d)
    net[1].running_mean.fill_(100.0)  # running stats that would wreck eval-mode output
    adapt = EntropyMinimization(net, lr=1e-2)
    x = torch.randn(16, 4)
    h = net[0](x)
    expected = net[3](torch.relu((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
                                 * net[1].weight + net[1].bias))
    torch.testing.assert_close(adapt(x), expected.detach())
    assert not torch.equal(net[1].weight.detach(), torch.ones(16))
    adapt.reset()
    torch.testing.assert_close(net[1].weight.detach(), torch.ones(16))
    assert adapt.kept_fraction is None


def test_hf_style_outputs_with_logits_attribute():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_net(5)

        def forward(self, x):
            return type("Out", (), {"logits": self.net(x)})()

    adapt = EntropyMinimization(Wrapped(), params="all")
    assert adapt(torch.randn(4, 4)).shape == (4, 3)


def test_adaptation_lowers_entropy_on_a_shifted_stream():
    net = make_net(6)
    adapt = EntropyMinimization(net, lr=5e-2)
    gen = torch.Generator().manual_seed(6)
    stream = [torch.randn(64, 4, generator=gen) * 2 + 3 for _ in range(30)]
    held_out = torch.randn(256, 4, generator=gen) * 2 + 3
    start = entropy(make_net(6)(held_out)).mean()
    for x in stream:
        adapt(x)
    with torch.no_grad():
        assert entropy(net(held_out)).mean() < start


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"steps": 0}, "steps=0"), ({"lr": -1.0}, "lr=-1.0"), ({"params": "some"}, "params='some'")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(TokenwiseError, match=match):
        EntropyMinimization(make_net(), **kwargs)


def test_bad_models():
    with pytest.raises(TokenwiseError, match="no normalisation layer"):
        EntropyMinimization(nn.Linear(3, 2))
    with pytest.raises(TokenwiseError, match=r"\(batch, classes\)"):
        EntropyMinimization(nn.Sequential(nn.LayerNorm(3)))(torch.randn(2, 5, 3))
    with pytest.raises(TokenwiseError, match="model's parameters"):
        EntropyMinimization(make_net(), params=[nn.Parameter(torch.ones(2))])
    with pytest.raises(TokenwiseError, match="unfiltered"):
        tent(make_net(), crowd_filter=True)
