"""SimCLR pieces: NT-Xent against a loop reference, LARS against its formula and
plain SGD, the schedule, the head, adversarial views and the linear probe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iri_alignment import simclr


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyClassifier(nn.Module):
    """Stand-in for an ``iri_alignment.models`` classifier: conv - BN - ReLU - pool."""

    def __init__(self, rep_dim: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, rep_dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(rep_dim)
        self.fc = nn.Linear(rep_dim, num_classes)
        self.rep_dim, self.num_classes = rep_dim, num_classes

    def represent(self, x, fake_relu=False):
        return F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x - 0.5))), 1).flatten(1)

    def forward(self, x, with_rep=False, fake_relu=False):
        rep = self.represent(x, fake_relu)
        return (self.fc(rep), rep) if with_rep else self.fc(rep)


# -- NT-Xent ----------------------------------------------------------------------------


def nt_xent_reference(z1, z2, tau):
    """Loop over the 2N anchors, straight from the SimCLR paper's algorithm 1."""
    z = torch.cat((z1, z2))
    n2 = len(z)
    sim = lambda a, b: (a @ b / (a.norm() * b.norm())).item()  # noqa: E731
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        denom = sum(math.exp(sim(z[i], z[j]) / tau) for j in range(n2) if j != i)
        total += -math.log(math.exp(sim(z[i], z[pos]) / tau) / denom)
    return total / n2


@pytest.mark.parametrize("tau", [0.5, 0.1, 1.0])
def test_nt_xent_matches_loop_reference(tau):
    g = gen(1)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert simclr.nt_xent(z1, z2, tau).item() == pytest.approx(nt_xent_reference(z1, z2, tau), rel=1e-5)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_nt_xent_identical_pairs_orthogonal_negatives(n):
    z = torch.eye(n) * 3.0  # norms do not matter
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / 0.5))
    assert simclr.nt_xent(z, z.clone(), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_symmetric_and_prefers_aligned_pairs():
    g = gen(2)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    assert simclr.nt_xent(z1, z2).item() == pytest.approx(simclr.nt_xent(z2, z1).item(), rel=1e-6)
    assert simclr.nt_xent(z1, z1 + 0.01 * z2) < simclr.nt_xent(z1, z2)
    z1.requires_grad_(True)
    simclr.nt_xent(z1, z2).backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


# -- LARS -----------------------------------------------------------------------------


def grads(seed, shape, steps=3):
    g = gen(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


def run_optimizer(opt_factory, w0, grad_list):
    w = nn.Parameter(w0.clone())
    opt = opt_factory([w])
    for g in grad_list:
        w.grad = g.clone()
        opt.step()
    return w.detach()


def test_lars_on_bias_and_bn_params_is_plain_sgd_momentum():
    w0, gs = torch.randn(7, generator=gen(0)), grads(1, (7,))
    lars = run_optimizer(lambda p: simclr.LARS(p, lr=0.3, weight_decay=0.1, momentum=0.9), w0, gs)
    sgd = run_optimizer(lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9, weight_decay=0.0), w0, gs)
    torch.testing.assert_close(lars, sgd)


def test_lars_trust_ratio_on_weight_matrix():
    lr, wd, eta, m = 0.5, 0.01, 0.001, 0.9
    w0, (g1, g2) = torch.randn(4, 3, generator=gen(0)), grads(1, (4, 3), steps=2)
    w = nn.Parameter(w0.clone())
    opt = simclr.LARS([w], lr=lr, weight_decay=wd, momentum=m, trust_coefficient=eta)
    w.grad = g1.clone()
    opt.step()
    d1 = g1 + wd * w0
    v1 = lr * eta * w0.norm() / d1.norm() * d1
    torch.testing.assert_close(w.detach(), w0 - v1)
    w1 = w.detach().clone()
    w.grad = g2.clone()
    opt.step()
    d2 = g2 + wd * w1
    v2 = m * v1 + lr * eta * w1.norm() / d2.norm() * d2
    torch.testing.assert_close(w.detach(), w1 - v2)


def test_lars_adapts_1d_params_when_not_excluded():
    w0, (g,) = torch.randn(5, generator=gen(0)), grads(1, (5,), steps=1)
    w = run_optimizer(lambda p: simclr.LARS(p, lr=1.0, weight_decay=0.0, exclude_bias_and_bn=False), w0, [g])
    torch.testing.assert_close(w, w0 - 0.001 * w0.norm() / g.norm() * g)


def test_lars_zero_weights_use_ratio_one():
    w = run_optimizer(lambda p: simclr.LARS(p, lr=0.1), torch.zeros(2, 2), [torch.ones(2, 2)])
    torch.testing.assert_close(w, torch.full((2, 2), -0.1))


def test_lars_skips_params_without_grad_and_saves_state():
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(3))
    opt = simclr.LARS([a, b], lr=0.1)
    a.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3))
    assert "momentum_buffer" in opt.state_dict()["state"][0]


# -- schedule ------------------------------------------------------------------------


def test_warmup_cosine_values():
    f = lambda s: simclr.warmup_cosine(s, total_steps=110, warmup_steps=10)  # noqa: E731
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(85) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert 0 < f(109) < 1e-3
    assert f(110) == 0.0 and f(500) == 0.0
    assert simclr.warmup_cosine(0, 100, 0) == 1.0
    values = [f(s) for s in range(111)]
    assert values[:10] == sorted(values[:10]) and values[10:] == sorted(values[10:], reverse=True)


def test_warmup_cosine_drives_lambdalr():
    w = nn.Parameter(torch.ones(2, 2))
    opt = simclr.LARS([w], lr=4.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: simclr.warmup_cosine(s, 20, 5))
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        w.grad = torch.ones(2, 2)
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.8) and lrs[4] == pytest.approx(4.0) and lrs[5] == pytest.approx(4.0)
    assert lrs[-1] < 0.1


# -- head and model --------------------------------------------------------------------


def test_projection_head_layers_and_shapes():
    head = simclr.ProjectionHead(64, (512, 512, 128))
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head.net[0].in_features, head.net[0].out_features, head.net[3].out_features) == (64, 512, 128)
    assert head(torch.randn(5, 64)).shape == (5, 128)
    assert len(simclr.ProjectionHead(10, (512, 32)).net) == 1  # a single linear layer
    with pytest.raises(ValueError):
        simclr.ProjectionHead(10, (128,))


def test_simclr_model_wraps_the_classifier():
    clf = TinyClassifier()
    model = simclr.SimCLRModel(clf, (8, 16, 6))
    assert model.backbone is clf
    assert model(torch.rand(4, 3, 8, 8)).shape == (4, 6)


def test_simclr_model_on_a_real_architecture():
    models = pytest.importorskip("iri_alignment.models")
    clf = models.build_model("shapes", "resnet18", width=0.125)
    model = simclr.SimCLRModel(clf, (512, 512, 128))
    z = model(torch.rand(4, 3, 32, 32))
    assert z.shape == (4, 128)
    assert model.head.net[0].in_features == clf.rep_dim


# -- adversarial views -------------------------------------------------------------------


def test_contrastive_adversarial_views_stay_in_the_ball_and_move_projections():
    model = simclr.SimCLRModel(TinyClassifier(), (8, 16, 6))
    model.train()
    g = gen(3)
    v1, v2 = torch.rand(6, 3, 8, 8, generator=g), torch.rand(6, 3, 8, 8, generator=g)
    kw = {"eps": 1.0, "step_size": 0.5}
    a1, a2 = simclr.contrastive_adversarial_views(model, v1, v2, steps=5, generator=gen(4), **kw)
    s1, s2 = simclr.contrastive_adversarial_views(model, v1, v2, steps=0, generator=gen(4), **kw)  # the start
    for adv, clean in ((a1, v1), (a2, v2), (s1, v1)):
        assert adv.shape == clean.shape and not adv.requires_grad
        assert ((adv - clean).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()
        assert adv.min() >= 0 and adv.max() <= 1
    assert model.training and model.backbone.bn.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # gradients only w.r.t. inputs
    with torch.no_grad():
        model.eval()
        dist = lambda a, c: simclr.projection_distance(model(a), model(c))  # noqa: E731
        attacked, start = torch.cat((dist(a1, v1), dist(a2, v2))), torch.cat((dist(s1, v1), dist(s2, v2)))
    assert (attacked > start).all()
    assert attacked.mean() > 2 * start.mean()


# -- linear probe ----------------------------------------------------------------------


class PoolingBackbone(nn.Module):
    """Fixed features: 4x4 average pooling of each channel (48-d); a BN layer
    that is not used for features, to check the mode bookkeeping."""

    rep_dim, num_classes = 48, 4

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)

    def represent(self, x, fake_relu=False):
        return F.adaptive_avg_pool2d(x, 4).flatten(1)


def separable_data(n, seed):
    """Four classes, each a fixed +-0.25 pattern on 4x4 blocks around grey, plus pixel noise."""
    patterns = torch.randint(0, 2, (4, 3, 4, 4), generator=gen(99)).float() * 0.5 - 0.25
    g = gen(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 + F.interpolate(patterns[y], scale_factor=4) + 0.1 * torch.randn(n, 3, 16, 16, generator=g)
    return x.clamp(0, 1), y


def test_linear_probe_separates_linearly_separable_features():
    x_tr, y_tr = separable_data(400, 0)
    x_te, y_te = separable_data(200, 1)
    backbone = PoolingBackbone().train()
    kw = {"epochs": 5, "batch_size": 100, "lr": 0.5, "weight_decay": 0.0, "device": "cpu"}
    res = simclr.linear_probe(backbone, x_tr, y_tr, x_te, y_te, generator=gen(0), **kw)
    assert res["test_acc"] > 0.95 and res["train_acc"] > 0.95
    assert res["weight"].shape == (4, 48) and res["bias"].shape == (4,)
    assert backbone.training and backbone.bn.training
    # deterministic given the generator, and uint8 images are accepted
    again = simclr.linear_probe(backbone, x_tr, y_tr, x_te, y_te, generator=gen(0), **kw)
    assert torch.equal(res["weight"], again["weight"])
    as_uint8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    res8 = simclr.linear_probe(backbone, as_uint8(x_tr), y_tr, as_uint8(x_te), y_te, generator=gen(0), **kw)
    assert res8["test_acc"] > 0.95


class ScaledBackbone(PoolingBackbone):
    """PoolingBackbone's features times ``scale`` plus ``shift``: what a thin, untuned backbone may give."""

    def __init__(self, scale, shift):
        super().__init__()
        self.scale, self.shift = scale, shift

    def represent(self, x, fake_relu=False):
        return super().represent(x) * self.scale + self.shift


def test_linear_probe_is_scale_free_and_returns_a_layer_on_raw_features():
    x_tr, y_tr = separable_data(400, 0)
    x_te, y_te = separable_data(200, 1)
    kw = {"epochs": 5, "batch_size": 100, "lr": 0.5, "weight_decay": 0.0, "device": "cpu"}
    tiny = ScaledBackbone(1e-3, 5.0)  # small, offset features: plain SGD at this lr barely moves
    raw = simclr.linear_probe(tiny, x_tr, y_tr, x_te, y_te, generator=gen(0), standardize=False, **kw)
    res = simclr.linear_probe(tiny, x_tr, y_tr, x_te, y_te, generator=gen(0), **kw)
    assert raw["test_acc"] < 0.6 < 0.95 < res["test_acc"]
    ref = simclr.linear_probe(PoolingBackbone(), x_tr, y_tr, x_te, y_te, generator=gen(0), **kw)
    assert res["test_acc"] == pytest.approx(ref["test_acc"], abs=0.01)
    # the returned layer acts on the raw features: it reproduces the reported accuracy
    logits = tiny.represent(x_te) @ res["weight"].T + res["bias"]
    assert (logits.argmax(1) == y_te).float().mean().item() == pytest.approx(res["test_acc"])


def test_linear_probe_reports_chance_on_random_labels():
    x_tr, _ = separable_data(300, 0)
    x_te, _ = separable_data(300, 1)
    y_tr = torch.randint(0, 4, (300,), generator=gen(5))
    y_te = torch.randint(0, 4, (300,), generator=gen(6))
    res = simclr.linear_probe(PoolingBackbone(), x_tr, y_tr, x_te, y_te, epochs=5, batch_size=100, lr=0.5,
                              weight_decay=0.0, generator=gen(0), device="cpu")
    assert res["test_acc"] < 0.4
