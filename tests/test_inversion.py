"""Inversion and regularizers (protocol 5): the optimiser, the losses, seeds, resuming."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from iri_alignment.inversion import FOURIER_EPS, FourierBasis, invert, make_seed, representation_distances, representation_fn
from iri_alignment.regularizers import (
    REGULARIZERS,
    TransformDraw,
    apply_transform,
    blur_penalty,
    box_blur,
    draw_transform,
    make_objective,
    mean_penalty,
    pnorm,
    random_transform,
    rep_loss,
    total_variation,
)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These tiny models are overhead-bound: one thread is several times faster
    than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inversion_cfg():
    """The ``inversion`` section of the repository's params.yaml (the paper's constants)."""
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["inversion"]


def section(cfg: dict, name: str) -> dict | None:
    return cfg.get(name.replace("-", "_"))


class LinearRep(nn.Module):
    """Stand-in model: rep(x) = P ((x - 0.5) / 0.25) with orthonormal rows P
    (rep_dim 32 over 3*4*4 = 48 pixels). The inverse problem is known: every x'
    with P x' = P x is an exact IRI, x itself among them."""

    def __init__(self, channels=3, size=4, rep_dim=32):
        super().__init__()
        weight = torch.randn(rep_dim, channels * size * size, generator=torch.Generator().manual_seed(1))
        self.register_buffer("P", torch.linalg.qr(weight.T).Q.T.contiguous())
        self.normalize_calls: list[bool] = []

    def represent(self, x, fake_relu=False, normalize=True):
        self.normalize_calls.append(normalize)
        if normalize:
            x = (x - 0.5) / 0.25
        return x.flatten(1) @ self.P.T

    def forward(self, x):
        return self.represent(x)


@pytest.fixture(scope="module")
def tiny_model():
    """The smallest real model of the study, or a stand-in CNN with the same interface."""
    torch.manual_seed(0)
    try:
        from iri_alignment.models import build_model
    except ImportError:
        return StandInCNN()
    return build_model("shapes", "resnet18", width=0.0625)


class StandInCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 32, 3, stride=2)
        )
        self.fc = nn.Linear(32, 10)

    def represent(self, x, fake_relu=False, normalize=True):
        x = (x - 0.5) / 0.25 if normalize else x
        return torch.relu(self.conv(x)).mean((2, 3))

    def forward(self, x):
        return self.fc(self.represent(x))


def targets_for(shape, n=2, seed=2):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def assert_close(actual, expected, *, rtol=1.3e-6, atol=1e-5):
    """``torch.testing.assert_close`` without its first-call import of sympy (seconds)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual, expected)


def pixel_l2(a, b):
    return torch.linalg.vector_norm((a - b).flatten(1), dim=1)


# -- the inversion's own null: distances to every target ---------------------------------------


def test_representation_distances_by_hand_on_a_linear_model():
    """rep(x) = P (x - 0.5) / 0.25 with orthonormal rows P: D[i, j] = ||P (x'_i - x_j)|| / ||P (x_j - 0.5)||."""
    model = LinearRep()
    targets, images = targets_for((3, 4, 4), n=4, seed=2), targets_for((3, 4, 4), n=3, seed=5)
    P = model.P.double()
    diff = images.double().flatten(1)[:, None, :] - targets.double().flatten(1)[None, :, :]  # (3, 4, 48)
    expected = (torch.linalg.vector_norm(diff @ P.T, dim=2)
                / torch.linalg.vector_norm((targets.double().flatten(1) - 0.5) @ P.T, dim=1))
    d = representation_distances(model, images, targets, batch_size=2)
    assert d.shape == (3, 4)
    assert_close(d.double(), expected)
    # unnormalised inputs, as the faithful adversarial objective feeds them
    model.normalize_calls.clear()
    raw = representation_distances(model, images, targets, normalize=False)
    assert set(model.normalize_calls) == {False}
    expected_raw = (torch.linalg.vector_norm(diff @ P.T, dim=2)
                    / torch.linalg.vector_norm(targets.double().flatten(1) @ P.T, dim=1))
    assert_close(raw.double(), expected_raw)


def test_representation_distances_are_the_rep_loss_against_each_target(tiny_model):
    targets, images = targets_for((3, 32, 32), n=4, seed=2), targets_for((3, 32, 32), n=3, seed=5)
    was_training = tiny_model.training
    tiny_model.train()
    d = representation_distances(tiny_model, images, targets, batch_size=2)
    assert tiny_model.training  # its mode is restored
    tiny_model.eval()
    model_rep = representation_fn(tiny_model)
    with torch.no_grad():
        for j in range(4):
            own = rep_loss(model_rep, images, model_rep(targets[j:j + 1]).expand(3, -1))
            assert_close(d[:, j], own)
    tiny_model.train(was_training)
    # images that are the targets: 0 on the diagonal, above 0 elsewhere
    d = representation_distances(tiny_model, targets, targets)
    assert (d.diagonal() == 0).all()
    assert (d[~torch.eye(4, dtype=torch.bool)] > 0).all()


# -- the optimiser --------------------------------------------------------------------------


def test_reg_free_converges_on_a_linear_model_and_keeps_the_best_iterate():
    model = LinearRep()
    targets = targets_for((3, 4, 4), n=4)
    objective = make_objective("reg-free", None)
    seen = []

    def recording_rep_loss(model_rep, x, target_rep):
        value = type(objective).rep_loss(objective, model_rep, x, target_rep)
        seen.append(value.detach().clone())
        return value

    objective.rep_loss = recording_rep_loss
    result = invert(model, targets, make_seed("light-noise", (3, 4, 4), 0), objective,
                    iterations=1000, step_size=0.003, progress=False)

    assert result.rep_loss.max() < 1e-3
    seen = torch.stack(seen)  # (iterations + 1, N): every iterate, the last included
    assert seen.shape == (1001, 4)
    assert torch.equal(result.rep_loss, seen.min(0).values)
    assert torch.equal(result.best_iteration, seen.argmin(0))
    assert torch.equal(result.final_rep_loss, seen[-1])
    # a fixed step length overshoots: the best iterate is not simply the last one
    assert (result.final_rep_loss > result.rep_loss).any()
    # the returned images are those iterates
    model_rep = lambda x, normalize=True: model.represent(x)  # noqa: E731
    recomputed = rep_loss(model_rep, result.images, model.represent(targets))
    assert_close(recomputed, result.rep_loss, rtol=1e-5, atol=1e-7)
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.history[0][0] == 0 and result.history[-1][0] == 1000


def test_every_image_moves_by_exactly_the_step_size():
    model = LinearRep()
    # very different targets give very different gradient norms: a gradient
    # normalised over the whole batch would move them by different amounts
    targets = torch.stack([0.5 + 0.01 * targets_for((3, 4, 4), n=1, seed=3)[0], targets_for((3, 4, 4), n=1)[0]])
    seed = make_seed("light-noise", (3, 4, 4), 0)
    states = []
    invert(model, targets, seed, make_objective("reg-free", None), iterations=1, step_size=0.05,
           checkpoint_every=1, on_checkpoint=states.append, progress=False)
    x1 = states[0]["variable"]
    assert (x1 > 0).all() and (x1 < 1).all()  # clamping played no part
    assert_close(pixel_l2(x1, seed.expand_as(x1)), torch.full((2,), 0.05), rtol=1e-5, atol=0)


def test_model_is_inverted_in_eval_mode_and_left_untouched(tiny_model):
    model = tiny_model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    invert(model, targets_for((3, 32, 32)), make_seed("noise", (3, 32, 32), 0), make_objective("reg-free", None),
           iterations=2, progress=False)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    model.eval()


@pytest.mark.parametrize("name", REGULARIZERS)
def test_every_objective_runs_and_gives_finite_per_image_losses(tiny_model, inversion_cfg, name):
    model = tiny_model.eval()
    targets = targets_for((3, 32, 32))
    objective = make_objective(name, section(inversion_cfg, name), proxy=pixel_l2,
                               generator=torch.Generator().manual_seed(0))
    model_rep = lambda x, normalize=True: model.represent(x, fake_relu=True)  # noqa: E731
    x = make_seed("noise", (3, 32, 32), 0).expand_as(targets).clone().requires_grad_(True)
    total, rep = objective(model_rep, x, model.represent(targets).detach(), targets)
    assert total.shape == rep.shape == (2,)
    assert torch.isfinite(total).all() and torch.isfinite(rep).all()
    assert not rep.requires_grad
    (grad,) = torch.autograd.grad(total.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    result = invert(model, targets, make_seed("noise", (3, 32, 32), 0), objective, iterations=3, progress=False)
    assert result.images.shape == targets.shape
    assert result.rep_loss.shape == result.final_rep_loss.shape == result.best_iteration.shape == (2,)
    assert torch.isfinite(result.rep_loss).all()
    assert (result.rep_loss <= result.final_rep_loss).all()
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_human_aligned_reports_rep_of_the_untransformed_image(inversion_cfg):
    model = LinearRep(size=16)
    targets = targets_for((3, 16, 16))
    gen = torch.Generator().manual_seed(0)
    objective = make_objective("human-aligned", inversion_cfg["human_aligned"], generator=gen)
    x = make_seed("noise", (3, 16, 16), 0).expand_as(targets)
    target_rep = model.represent(targets)
    _, rep = objective(lambda v, normalize=True: model.represent(v), x, target_rep, targets)
    assert_close(rep, rep_loss(lambda v: model.represent(v), x, target_rep))


def test_adversarial_objective_moves_away_from_the_target(tiny_model, inversion_cfg):
    model = tiny_model.eval()
    targets = targets_for((3, 32, 32))
    seed = make_seed("noise", (3, 32, 32), 0)
    kwargs = {"iterations": 20, "progress": False}
    free = invert(model, targets, seed, make_objective("reg-free", None), **kwargs)
    adversarial = invert(model, targets, seed,
                         make_objective("adversarial", inversion_cfg["adversarial"], proxy=pixel_l2), **kwargs)
    assert (pixel_l2(adversarial.images, targets) > pixel_l2(free.images, targets)).all()


@pytest.mark.parametrize("faithful", [False, True])
def test_faithful_adversarial_feeds_the_model_unnormalised_inputs(inversion_cfg, faithful):
    model = LinearRep()
    cfg = {**inversion_cfg["adversarial"], "faithful": faithful}
    invert(model, targets_for((3, 4, 4)), make_seed("noise", (3, 4, 4), 0),
           make_objective("adversarial", cfg, proxy=pixel_l2), iterations=2, progress=False)
    assert set(model.normalize_calls) == {not faithful}  # targets and iterates alike


def test_fourier_basis_round_trips_the_seed_and_optimises():
    seed = make_seed("noise", (3, 8, 8), 0)
    basis = FourierBasis(8, 8, decay=1.0)
    assert_close(basis.decode(basis.encode(seed)), seed.clamp(FOURIER_EPS, 1 - FOURIER_EPS),
                               rtol=0, atol=1e-5)
    assert basis.scale[0, 0] == 1 and basis.scale.min() < 0.2  # DC kept, fine detail damped

    model = LinearRep(size=8)
    result = invert(model, targets_for((3, 8, 8)), seed, make_objective("fourier", {"rep_weight": 1.0, "decay": 1.0}),
                    iterations=50, step_size=0.5, progress=False)
    assert (result.rep_loss < 0.75 * result.history[0][1]).all()


@pytest.mark.parametrize("name", ["human-aligned", "fourier"])
def test_resume_is_bitwise_identical(tiny_model, inversion_cfg, name):
    model = tiny_model.eval()
    targets = targets_for((3, 32, 32))
    seed = make_seed("noise", (3, 32, 32), 0)

    def run(**kwargs):
        objective = make_objective(name, section(inversion_cfg, name), generator=torch.Generator().manual_seed(5))
        return invert(model, targets, seed, objective, progress=False, history_every=1, **kwargs)

    straight = run(iterations=6)
    states = []
    run(iterations=6, checkpoint_every=3, on_checkpoint=states.append)
    assert [s["iteration"] for s in states] == [3, 6]
    buffer = io.BytesIO()
    torch.save(states[0], buffer)  # plain data: survives a weights-only load
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = run(iterations=6, state=state)

    for field in ("images", "rep_loss", "best_iteration", "final_rep_loss"):
        assert torch.equal(getattr(straight, field), getattr(resumed, field)), field
    assert straight.history == resumed.history


def test_one_transform_draw_per_step_whatever_the_batch(tiny_model, inversion_cfg):
    model = tiny_model.eval()
    gen_states = []
    for n in (1, 3):
        states = []
        invert(model, targets_for((3, 32, 32), n=n), make_seed("noise", (3, 32, 32), 0),
               make_objective("human-aligned", inversion_cfg["human_aligned"]), iterations=2,
               generator=torch.Generator().manual_seed(0), checkpoint_every=2, on_checkpoint=states.append,
               progress=False)
        gen_states.append(states[-1]["generator_state"])
    assert torch.equal(*gen_states)
    assert not torch.equal(gen_states[0], torch.Generator().manual_seed(0).get_state())


# -- transformation robustness ------------------------------------------------------------------


def ha_kwargs(cfg):
    keys = ("jitter", "scales", "rotate", "zero_rotation_weight", "jitter_after")
    return {k: cfg["human_aligned"][k] for k in keys}


def test_transform_is_one_draw_shared_by_the_batch(inversion_cfg):
    x = targets_for((3, 32, 32), n=3)
    for seed in range(5):
        batch = random_transform(x, **ha_kwargs(inversion_cfg), generator=torch.Generator().manual_seed(seed))
        assert batch.shape == x.shape
        for i in range(3):
            alone = random_transform(x[i : i + 1], **ha_kwargs(inversion_cfg),
                                     generator=torch.Generator().manual_seed(seed))
            assert_close(batch[i : i + 1], alone)


def test_transform_draw_distribution(inversion_cfg):
    gen = torch.Generator().manual_seed(0)
    draws = [draw_transform(**ha_kwargs(inversion_cfg), generator=gen) for _ in range(5200)]
    angles = torch.tensor([d.angle for d in draws])
    assert abs((angles == 0).float().mean().item() - 6 / 26) < 0.02  # 3.5 standard errors
    assert set(angles.tolist()) == set(range(-10, 11))
    assert {d.scale for d in draws} == set(inversion_cfg["human_aligned"]["scales"])
    shifts = torch.tensor([d.shift for d in draws])
    after = torch.tensor([d.shift_after for d in draws])
    assert shifts.min() == -3 and shifts.max() == 4  # 8 offsets: 0..7, centred
    assert after.min() == -1 and after.max() == 2  # 4 offsets: 0..3, centred


def test_transform_pieces():
    x = targets_for((3, 16, 16))
    identity = TransformDraw((0, 0), 1.0, 0.0, (0, 0))
    assert torch.equal(apply_transform(x, identity), x)
    moved = apply_transform(x, TransformDraw((2, -1), 1.0, 0.0, (0, 0)))
    assert torch.equal(moved[..., 2:, :-1], x[..., :-2, 1:])  # content moves down 2, left 1
    quarter = apply_transform(x, TransformDraw((0, 0), 1.0, 90.0, (0, 0)))
    assert_close(quarter, torch.rot90(x, k=-1, dims=(2, 3)), atol=1e-5, rtol=0)

    leaf = x.clone().requires_grad_(True)
    out = apply_transform(leaf, TransformDraw((3, -2), 1.1, 7.0, (1, 0)))
    assert out.shape == x.shape
    (grad,) = torch.autograd.grad(out.square().sum(), leaf)
    assert torch.isfinite(grad).all() and (grad.abs().flatten(1).sum(1) > 0).all()


# -- penalties ------------------------------------------------------------------------------------


def test_total_variation_by_hand():
    x = torch.zeros(2, 3, 2, 2)
    x[0, 0] = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # one vertical and one horizontal jump of 1
    x[0, 1] = torch.tensor([[0.0, 0.5], [0.0, 0.5]])  # two horizontal jumps of 0.5
    x[1] = 0.7  # constant
    assert_close(total_variation(x), torch.tensor([1.0 + 1.0 + 2 * 0.25, 0.0]))


def test_pnorm_by_hand():
    x = torch.zeros(3, 3, 2, 2)
    x[0, 1, 1, 0] = 0.8
    x[1] = 0.5
    assert_close(pnorm(x, 6), torch.tensor([0.8, 0.5 * 12 ** (1 / 6), 0.0]))
    assert_close(pnorm(x, 2), torch.tensor([0.8, math.sqrt(12 * 0.25), 0.0]))
    black = torch.zeros(1, 3, 2, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(pnorm(black, 6).sum(), black)
    assert torch.isfinite(grad).all()


def test_mean_and_blur_penalties_by_hand():
    x = torch.stack([torch.full((3, 4, 4), 0.5), torch.ones(3, 4, 4)])
    assert_close(mean_penalty(x), torch.tensor([0.0, 24.0]))
    assert_close(box_blur(x), x)  # constant images, borders included
    assert_close(blur_penalty(x), torch.zeros(2))

    spike = torch.zeros(1, 1, 3, 3)
    spike[0, 0, 1, 1] = 1.0
    blurred = box_blur(spike)
    assert_close(blurred[0, 0, 1, 1], torch.tensor(1.0 / 5.0))  # 1 / (1 + 8 * 0.5)
    assert_close(blurred[0, 0, 0, 0], torch.tensor(0.5 / 2.5))  # corner: 1 + 3 * 0.5
    leaf = spike.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(blur_penalty(leaf).sum(), leaf)
    assert_close(grad, spike - blurred)  # a step on it blurs the image


def test_rep_loss_by_hand():
    identity = lambda x, normalize=True: x.flatten(1)  # noqa: E731
    target_rep = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    x = torch.tensor([[3.0, 4.0], [1.0, 2.0]]).view(2, 2, 1, 1)
    assert_close(rep_loss(identity, x, target_rep), torch.tensor([0.0, 2.0]))


def test_make_objective_checks_its_inputs(inversion_cfg):
    with pytest.raises(ValueError, match="unknown regularizer"):
        make_objective("lucid", {})
    with pytest.raises(ValueError, match="proxy"):
        make_objective("adversarial", inversion_cfg["adversarial"])
    with pytest.raises(ValueError, match="tv_weight"):
        make_objective("freq", {"rep_weight": 1.0, "blur_weight": 1.0, "mean_weight": 1.0})
    assert make_objective("human_aligned", inversion_cfg["human_aligned"]).name == "human-aligned"


# -- seeds ------------------------------------------------------------------------------------------


def test_make_seed_kinds_and_determinism():
    noise = make_seed("noise", (3, 32, 32), 7)
    assert noise.shape == (1, 3, 32, 32) and noise.dtype == torch.float32
    assert torch.equal(noise, make_seed("noise", (1, 3, 32, 32), 7))
    assert not torch.equal(noise, make_seed("noise", (3, 32, 32), 8))
    assert noise.min() == 0 and noise.max() == 1
    assert abs((noise == 0).float().mean().item() - 0.5) < 0.03  # clamped N(0, 1): half the pixels at 0
    assert abs((noise == 1).float().mean().item() - 0.1587) < 0.03  # P(z > 1)
    light = make_seed("light-noise", (3, 32, 32), 7)
    assert abs(light.mean().item() - 0.5) < 0.01 and abs(light.std().item() - 0.1) < 0.01
    assert torch.equal(make_seed("white", (3, 4, 4), 0), torch.ones(1, 3, 4, 4))
    assert torch.equal(make_seed("black", (3, 4, 4), 0), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="seed kind"):
        make_seed("pink", (3, 4, 4), 0)
