"""The robust-features experiments: each measure on hand-built cases with known answers, the shapes
masks, the non-robust-features pipeline end to end on the smoke profile, and the tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from iri_alignment.features import nonrobust, repdistance, saliency
from iri_alignment.features.common import holm, mcnemar_greater


# -- saliency measures ----------------------------------------------------------------------------------


def test_energy_fraction_and_auroc_on_maps_with_known_answers():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    inside = mask.float() * 3.0 + 0.0
    outside = (~mask).float()
    assert saliency.energy_fraction(inside, mask).item() == pytest.approx(1.0)
    assert saliency.energy_fraction(outside, mask).item() == pytest.approx(0.0)
    assert saliency.energy_fraction(torch.ones(1, 4, 4), mask).item() == pytest.approx(4 / 16)
    assert saliency.auroc(inside + 0.1, mask).item() == pytest.approx(1.0)
    assert saliency.auroc(outside, mask).item() == pytest.approx(0.0)
    assert saliency.auroc(torch.ones(1, 4, 4), mask).item() == pytest.approx(0.5)  # ties count half
    assert saliency.dilate(mask, 1).sum().item() == 16


def test_cosine_alignment_is_one_for_the_centred_image_and_zero_for_an_orthogonal_gradient():
    x = torch.rand(2, 3, 4, 4)
    centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(saliency.cosine_alignment(centred, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(saliency.cosine_alignment(-2 * centred, x), torch.ones(2), atol=1e-6)
    flat = centred.flatten(1)
    orth = torch.randn_like(flat)
    orth -= (orth * flat).sum(1, keepdim=True) / (flat * flat).sum(1, keepdim=True) * flat
    assert saliency.cosine_alignment(orth.view_as(x), x).max().item() < 1e-5


def test_the_comparisons_pair_images_and_correct_for_several_tests():
    rng = np.random.default_rng(0)
    rows = []
    values = rng.random(50)
    noise = 0.01 * rng.standard_normal(50)
    for regime, shift in (("adversarial", 0.2), ("standard", 0.0)):
        values = values + noise
        rows.append(pd.DataFrame({"image": range(50), "arch": "resnet18", "regime": regime,
                                  "energy_fraction": values + shift, "auroc": values, "cosine": values + shift}))
    table = saliency.compare(pd.concat(rows))
    by_metric = table.set_index("metric")
    assert by_metric.loc["energy_fraction", "p"] < 0.01 and by_metric.loc["auroc", "p"] > 0.05
    assert (table["p_holm"] >= table["p"]).all()
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert mcnemar_greater(np.array([1] * 10 + [0] * 10, bool), np.zeros(20, bool)) == pytest.approx(0.5 ** 10)


# -- shapes masks ------------------------------------------------------------------------------------


def test_the_shapes_masks_belong_to_the_test_images(smoke):
    from iri_alignment.data.loading import open_split
    from iri_alignment.features.runs import shape_masks

    x, y = open_split(smoke, "test").get(range(20))
    masks = shape_masks(smoke, x)
    assert masks.shape == (20, 32, 32) and 0.05 < masks.float().mean() < 0.6
    # inside the mask the image has the shape's colour: far from the background at the corners
    corner = x[:, :, 0, 0][:, :, None, None]
    distance = (x - corner).abs().sum(1)
    assert (distance[masks].mean() > 3 * distance[~masks].mean()).item()


# -- representation distance -----------------------------------------------------------------------


def test_the_representation_attack_stays_in_its_ball_and_other_class_partners_differ(smoke):
    from iri_alignment.data.loading import open_split
    from iri_alignment.models import build_model

    torch.manual_seed(0)
    model = build_model("shapes", "resnet18", width=0.0625).eval()
    x, y = open_split(smoke, "test").get(range(20))
    table = repdistance.agreement(model, x, y, eps=0.5, steps=3, seed=0)
    assert (table["delta_norm"] <= 0.5 + 1e-4).all() and (table["d_a"] > 0).all()
    partner = repdistance.other_class_partners(y.numpy(), 0)
    assert (y.numpy()[partner] != y.numpy()).all()


# -- non-robust features ------------------------------------------------------------------------------


def test_the_sets_building_blocks():
    patterns = nonrobust.class_patterns(10, (3, 8, 8), 0.5, seed=0)
    assert torch.allclose(patterns.flatten(1).norm(dim=1), torch.full((10,), 0.5))
    tiled = nonrobust.class_patterns(10, (3, 10, 10), 0.5, seed=0, tile=4)
    assert torch.allclose(tiled.flatten(1).norm(dim=1), torch.full((10,), 0.5))
    assert torch.equal(tiled[..., :4, :4], tiled[..., 4:8, 4:8]) and not torch.equal(tiled[0], tiled[1])
    labels = nonrobust.pattern_labels(1000, 10, seed=0)
    assert set(labels.tolist()) == set(range(10)) and labels.tolist() == nonrobust.pattern_labels(1000, 10, 0).tolist()
    y = torch.arange(10)
    assert nonrobust.relabel(y, "det", 10, 0).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    x = torch.full((4, 3, 8, 8), 0.5)
    x_adv = x + 0.01 * torch.arange(4).view(4, 1, 1, 1)
    control = nonrobust.noise_like(x, x_adv, seed=0)
    assert torch.allclose((control - x).flatten(1).norm(dim=1), (x_adv - x).flatten(1).norm(dim=1), atol=1e-5)
    assert nonrobust.two_proportion_above(60, 40, 100) < 0.05 < nonrobust.two_proportion_above(50, 48, 100)


def test_follows_pattern_tells_a_pattern_reader_from_a_shape_reader():
    patterns = nonrobust.class_patterns(10, (3, 8, 8), 0.5, seed=0, tile=4)
    x, y = torch.full((50, 3, 8, 8), 0.5), torch.arange(50) % 10

    def pattern_reader(images):  # correlates the centred image with every class's pattern
        return (images - images.mean(dim=(1, 2, 3), keepdim=True)).flatten(1) @ patterns.flatten(1).T

    shape_reader = lambda images: torch.nn.functional.one_hot(y[:len(images)], 10).float()  # noqa: E731
    assert nonrobust.follows_pattern(pattern_reader, x, y, patterns) == 1.0
    assert nonrobust.follows_pattern(shape_reader, x, y, patterns) == 0.0


def test_targeted_pgd_moves_towards_the_target_within_its_radius(smoke):
    from iri_alignment.data.loading import open_split
    from iri_alignment.models import build_model

    torch.manual_seed(0)
    model = build_model("shapes", "resnet18", width=0.0625).eval()
    x, y = open_split(smoke, "test").get(range(16))
    t = (y + 1) % 10
    x_adv = nonrobust.targeted_pgd(model, x, t, eps=1.0, steps=5, step_size=0.4)
    ce = lambda z: torch.nn.functional.cross_entropy(model(z), t, reduction="none")  # noqa: E731
    with torch.no_grad():
        assert (ce(x_adv) <= ce(x) + 1e-6).all() and ce(x_adv).mean() < ce(x).mean()
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all()


def test_the_positive_control_runs_end_to_end_and_reports_its_tests(smoke, tmp_path):
    from iri_alignment.features.runs import write_tables

    result = nonrobust.experiment(smoke, kind="det", variant="pattern", device="cpu")
    for key in ("targeted_success", "set_acc", "control_acc", "set_acc_next", "p_above_chance", "p_above_control"):
        assert key in result
    assert 0 <= result["source_follows_pattern"] <= 1
    assert 0 <= result["without_own_pattern"]["set_acc"] <= 1  # the D_det ablation
    assert 0 <= result["set_acc"] <= 1 and result["chance"] == pytest.approx(0.1) and result["n_train"] == 100
    nonrobust.write(result, tmp_path / "features" / "nonrobust")
    written = write_tables(tmp_path / "features", tmp_path / "tables")
    assert any(p.name == "features_nonrobust.md" for p in written)
    assert "D_det" in (tmp_path / "tables" / "features_nonrobust.md").read_text()
    assert "pattern (own texture removed)" in (tmp_path / "tables" / "features_nonrobust.md").read_text()
