"""l2 PGD, TRADES, MART and robust accuracy (iri_alignment.attacks).

The attacks run on a tiny CNN trained for a few seconds on a synthetic
10-class task built here: a disc whose colour gives the class, at a random
position on a grey noisy background (32 x 32 RGB in [0, 1]). It reaches ~100%
clean accuracy and an l2 attack of radius 1 roughly halves that, so attack
strength and the agreement with ``torchattacks.PGDL2`` are measurable.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iri_alignment import attacks

EPS, STEPS = 1.0, 10

PALETTE = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1],
                        [0, 1, 1], [1, 0.5, 0], [0.5, 0, 1], [0, 0.5, 0.5], [1, 1, 1.0]])


def coloured_discs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (N, 3, 32, 32) in [0, 1] and labels: a radius-6 disc of the
    label's palette colour on a grey background, plus Gaussian noise 0.05."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
    background = 0.2 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    centre = torch.randint(9, 24, (n, 2), generator=g).float()
    rows, cols = torch.arange(32.0).view(1, 32, 1), torch.arange(32.0).view(1, 1, 32)
    disc = ((rows - centre[:, 0, None, None]) ** 2 + (cols - centre[:, 1, None, None]) ** 2 <= 36).float()
    disc = disc.unsqueeze(1)
    x = background * (1 - disc) + 0.8 * PALETTE[y].view(n, 3, 1, 1) * disc
    x = x + 0.05 * torch.randn(n, 3, 32, 32, generator=g)
    return x.clamp(0, 1), y


def tiny_cnn() -> nn.Module:
    """Logits of images in [0, 1]; has BatchNorm, so train/eval mode matters."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: extra intra-op threads only add overhead (and
    thrash when the cores are shared), so run this module single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained():
    """(model in eval mode, test images, test labels); ~100% clean test accuracy."""
    x, y = coloured_discs(500, seed=0)
    torch.manual_seed(0)
    model = tiny_cnn()
    # plain SGD with momentum written out: torch.optim would import torch._dynamo (seconds)
    params = list(model.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    order = torch.Generator().manual_seed(1)
    for _ in range(6):
        perm = torch.randperm(400, generator=order)
        for i in range(0, 400, 50):
            idx = perm[i:i + 50]
            grads = torch.autograd.grad(F.cross_entropy(model(x[idx]), y[idx]), params)
            with torch.no_grad():
                for p, v, g in zip(params, velocity, grads):
                    p.sub_(0.05 * v.mul_(0.9).add_(g))
    model.eval()
    model.zero_grad(set_to_none=True)
    x_test, y_test = x[400:], y[400:]
    with torch.no_grad():
        assert (model(x_test).argmax(1) == y_test).float().mean() > 0.9, "fixture model failed to learn"
    return model, x_test, y_test


def norms(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1)


def test_step_size_for():
    assert attacks.step_size_for(1.0, 7) == pytest.approx(2.5 / 7)
    assert attacks.step_size_for(3.0, 20, factor=2.0) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        attacks.step_size_for(1.0, 0)


@pytest.mark.parametrize("random_start", [False, True])
@pytest.mark.parametrize("eps", [0.5, 3.0])
def test_pgd_stays_in_ball_and_image_range(trained, random_start, eps):
    model, x, y = trained
    x = x[:40]
    adv = attacks.pgd_l2(model, x, y[:40], eps=eps, steps=5, step_size=attacks.step_size_for(eps, 5),
                         random_start=random_start, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert norms(adv - x).max() <= eps + 1e-4
    assert adv.min() >= 0 and adv.max() <= 1
    assert norms(adv - x).median() > 0.5 * eps  # it did move


def test_random_start_is_uniform_in_ball_and_seeded():
    # d = 2: the radius r of a uniform point of the disc has P(r <= t) = (t / eps)^2
    like = torch.full((20000, 1, 1, 2), 0.5)
    r = norms(attacks.sample_l2_ball(like, 0.2, torch.Generator().manual_seed(0))) / 0.2
    assert r.max() <= 1 + 1e-6
    assert r.mean().item() == pytest.approx(2 / 3, abs=0.01)
    assert (r <= 0.5).float().mean().item() == pytest.approx(0.25, abs=0.01)
    # steps=0 returns the random start itself, reproducibly from the generator
    x = torch.full((4, 3, 8, 8), 0.5)
    start = [attacks.pgd_l2(lambda v: v.flatten(1), x, eps=0.3, steps=0, step_size=0.1, random_start=True,
                            loss_fn=lambda out, _: out.sum(1), generator=torch.Generator().manual_seed(s))
             for s in (1, 1, 2)]
    assert torch.equal(start[0], start[1]) and not torch.equal(start[0], start[2])
    assert (norms(start[0] - x) > 0.25).all()  # in 192 dimensions nearly all the volume is near the surface


def test_attack_increases_loss_beyond_clean_and_random_noise(trained):
    model, x, y = trained
    adv = attacks.pgd_l2(model, x, y, eps=EPS, steps=STEPS, step_size=attacks.step_size_for(EPS, STEPS))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = (x + EPS * z / norms(z).view(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        clean_loss, adv_loss, noise_loss = (F.cross_entropy(model(v), y, reduction="none") for v in (x, adv, noisy))
    assert (adv_loss > clean_loss).all()
    assert (adv_loss > noise_loss).float().mean() > 0.95
    assert adv_loss.mean() > 4 * noise_loss.mean()


def test_custom_loss_hook_is_maximised(trained):
    model, x, _ = trained
    calls = []

    def logit_3(output, target):
        calls.append(target)
        return output[:, 3]

    adv = attacks.pgd_l2(model, x[:30], None, eps=EPS, steps=4, step_size=0.5, loss_fn=logit_3)
    assert calls == [None] * 4
    with torch.no_grad():
        assert (model(adv)[:, 3] > model(x[:30])[:, 3] + 0.1).all()
    with pytest.raises(ValueError, match="per-example"):
        attacks.pgd_l2(model, x[:30], None, eps=EPS, steps=1, step_size=0.5, loss_fn=lambda out, _: out.sum())
    with pytest.raises(ValueError, match="labels"):
        attacks.pgd_l2(model, x[:30], eps=EPS, steps=1, step_size=0.5)


def test_rejects_images_outside_unit_range(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attacks.pgd_l2(model, x[:4] * 255, y[:4], eps=EPS, steps=1, step_size=0.5)


@pytest.mark.parametrize("training", [True, False])
def test_no_parameter_grads_and_mode_unchanged(trained, training):
    model = copy.deepcopy(trained[0]).train(training)
    model[1].eval()  # a frozen BatchNorm inside a model in train mode must stay frozen
    modes = [m.training for m in model.modules()]
    x, y = trained[1][:20], trained[2][:20]
    attacks.pgd_l2(model, x, y, eps=EPS, steps=3, step_size=0.5)
    attacks.robust_accuracy(model, x, y, eps=EPS, steps=2, step_size=0.5)
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes


def test_robust_accuracy_agrees_with_torchattacks(trained):
    import torchattacks  # here, not at the top: it imports scipy.stats (seconds)

    model, x, y = trained
    step = attacks.step_size_for(EPS, STEPS)
    ours = attacks.robust_accuracy(model, x, y, eps=EPS, steps=STEPS, step_size=step, batch_size=64)
    # torchattacks' Attack.__call__ puts the model in eval mode (ours too) and
    # uses mean CE: the per-example normalised gradient is the same direction
    reference = torchattacks.PGDL2(model, eps=EPS, alpha=step, steps=STEPS, random_start=False)
    adv_ref = reference(x, y)
    with torch.no_grad():
        ref_acc = (model(adv_ref).argmax(1) == y).float().mean().item()
    assert ours["n"] == len(y) and ours["clean_acc"] > 0.9
    assert ours["robust_acc"] < ours["clean_acc"] - 0.2  # the attack bites, so agreement is not trivial
    assert abs(ours["robust_acc"] - ref_acc) <= 0.01
    # the iterations are the same algorithm: with torchattacks' loss scale
    # (batch-mean CE, so 1/N smaller gradients) the adversaries are identical.
    # With our summed loss rounding differs, and max-pooling amplifies it for
    # some examples (hence the accuracy comparison above, not an image one).
    mean_ce = lambda out, target: F.cross_entropy(out, target, reduction="none") / len(target)  # noqa: E731
    adv_ours = attacks.pgd_l2(model, x, y, eps=EPS, steps=STEPS, step_size=step, loss_fn=mean_ce)
    assert (adv_ours - adv_ref).abs().max() < 1e-5


def test_robust_accuracy_batching_mode_and_progress(trained, capsys):
    model = copy.deepcopy(trained[0]).train()
    x, y = trained[1][:60], trained[2][:60]
    kw = {"eps": EPS, "steps": 3, "step_size": 0.5}
    whole = attacks.robust_accuracy(model, x, y, batch_size=256, **kw)
    assert model.training
    assert capsys.readouterr().err == ""
    pieces = attacks.robust_accuracy(model, x, y, batch_size=7, progress=True, **kw)
    assert "l2 PGD" in capsys.readouterr().err
    assert 0 <= whole["robust_acc"] <= whole["clean_acc"] <= 1
    assert pieces["clean_acc"] == whole["clean_acc"]
    assert abs(pieces["robust_acc"] - whole["robust_acc"]) <= 1 / 60
    # a wrong answer that does not depend on batching would pass the above: pin the clean count
    with torch.no_grad():
        assert whole["clean_acc"] == (model.eval()(x).argmax(1) == y).float().mean().item()


class Recorder(nn.Module):
    """Wraps a model and records (training flag, input) of every forward call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[bool, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, x.detach().clone()))
        return self.model(x)


@pytest.mark.parametrize("loss", [attacks.trades_loss, attacks.mart_loss])
def test_robust_losses_are_differentiable_and_attack_in_eval_mode(trained, loss):
    rec = Recorder(copy.deepcopy(trained[0])).train()
    x, y = trained[1][:32], trained[2][:32]
    value = loss(rec, x, y, eps=EPS, steps=5, step_size=0.5, beta=6.0, generator=torch.Generator().manual_seed(0))
    assert value.dim() == 0 and torch.isfinite(value) and value > 0
    assert rec.training and all(m.training for m in rec.modules())
    # inner maximisation in eval mode, then the two outer forwards in train mode
    flags = [training for training, _ in rec.calls]
    assert flags[-2:] == [True, True] and not any(flags[:-2]) and len(flags) >= 5 + 2
    inputs = torch.stack([inp for _, inp in rec.calls])
    dist = (inputs - x).flatten(2).norm(dim=2)
    assert dist.max() <= EPS + 1e-4 and inputs.min() >= 0 and inputs.max() <= 1
    assert dist[-1].median() > 0.5 * EPS  # the adversary used in the loss did move
    assert all(p.grad is None for p in rec.parameters())
    value.backward()
    grads = [p.grad for p in rec.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def reference_trades(model, x, x_adv, y, beta):
    """The outer loss as written in the TRADES code (yaodongyu/TRADES, trades.py)."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    logits = model(x)
    loss_robust = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1)) / len(x)
    return F.cross_entropy(logits, y) + beta * loss_robust


def reference_mart(model, x, x_adv, y, beta):
    """The outer loss as written in the MART code (YisenWang/MART, mart.py)."""
    kl = nn.KLDivLoss(reduction="none")
    logits, logits_adv = model(x), model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1)).squeeze()
    loss_robust = torch.sum(torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1)
                            * (1.0000001 - true_probs)) / len(x)
    return loss_adv + beta * loss_robust


@pytest.mark.parametrize(("loss", "reference"), [(attacks.trades_loss, reference_trades),
                                                 (attacks.mart_loss, reference_mart)])
def test_robust_losses_match_reference_formulas(trained, loss, reference):
    # the last two forwards of the loss are f(x) and f(x*): recompute the outer
    # loss from that x* with the authors' code
    rec = Recorder(trained[0])
    x, y = trained[1][:32], trained[2][:32]
    value = loss(rec, x, y, eps=EPS, steps=5, step_size=0.5, beta=6.0, generator=torch.Generator().manual_seed(0))
    (_, x_clean), (_, x_adv) = rec.calls[-2:]
    assert torch.equal(x_clean, x) and not torch.equal(x_adv, x)
    with torch.no_grad():
        assert value.item() == pytest.approx(reference(trained[0], x, x_adv, y, 6.0).item(), rel=1e-4)


@pytest.mark.parametrize("loss", [attacks.trades_loss, attacks.mart_loss])
def test_robust_losses_are_affine_in_beta(trained, loss):
    # the adversary does not depend on beta, so with the same random start
    # L(beta) = L(0) + beta * (weighted KL >= 0)
    model, x, y = trained
    x, y = x[:32], y[:32]
    values = [loss(model, x, y, eps=EPS, steps=5, step_size=0.5, beta=b,
                   generator=torch.Generator().manual_seed(0)).item() for b in (0.0, 1.0, 6.0)]
    slope = values[1] - values[0]
    assert slope > 0
    assert values[2] - values[0] == pytest.approx(6 * slope, rel=1e-3)


def test_trades_adversary_maximises_kl(trained):
    # KL(p(x) || p(x*)) at the TRADES adversary: far above noise of the same
    # norm, and of the order of what a cross-entropy adversary reaches
    model, x, y = trained
    rec = Recorder(model)
    attacks.trades_loss(rec, x, y, eps=EPS, steps=5, step_size=0.5, beta=1.0,
                        generator=torch.Generator().manual_seed(0))
    x_trades = rec.calls[-1][1]
    x_ce = attacks.pgd_l2(model, x, y, eps=EPS, steps=5, step_size=0.5)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = (x + EPS * z / norms(z).view(-1, 1, 1, 1)).clamp(0, 1)
    with torch.no_grad():
        log_p = F.log_softmax(model(x), dim=1)
        kl_trades, kl_ce, kl_noise = (
            F.kl_div(F.log_softmax(model(v), dim=1), log_p, log_target=True, reduction="batchmean")
            for v in (x_trades, x_ce, noisy))
    assert kl_trades > 100 * kl_noise
    assert kl_trades > 0.3 * kl_ce


def test_trades_with_beta_zero_is_clean_cross_entropy(trained):
    model, x, y = trained
    value = attacks.trades_loss(model, x[:32], y[:32], eps=EPS, steps=3, step_size=0.5, beta=0.0)
    with torch.no_grad():
        assert value.item() == pytest.approx(F.cross_entropy(model(x[:32]), y[:32]).item(), rel=1e-6)


def test_mart_adversary_raises_cross_entropy(trained):
    # with beta = 0 MART is the boosted CE on its adversary, which exceeds the
    # CE of the clean images when the adversary maximises CE
    model, x, y = trained
    value = attacks.mart_loss(model, x[:32], y[:32], eps=EPS, steps=5, step_size=0.5, beta=0.0)
    with torch.no_grad():
        assert value.item() > 5 * F.cross_entropy(model(x[:32]), y[:32]).item()
