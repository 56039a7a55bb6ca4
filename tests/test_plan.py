"""The job list and the results layout the workflow is built from."""

import pytest

from iri_alignment import plan
from iri_alignment.params import inversion_iterations, load_params


@pytest.fixture
def paper(repo):
    return load_params(repo / "params.yaml", "paper")


def test_model_ids_round_trip():
    for arch, regime, epoch in [("resnet18", "adversarial-noaug", None), ("vgg16", "standard", None),
                                ("resnet18", "simclr-nocolor", 50)]:
        assert plan.parse_model_id(plan.model_id(arch, regime, epoch)) == (arch, regime, epoch)
    with pytest.raises(ValueError, match="not a model id"):
        plan.parse_model_id("resnet18")


def test_paper_study_jobs(paper):
    models = plan.trained_models(paper)
    assert len(models) == 4 * 2 + 1 and ("resnet18", "simclr") in models
    assert plan.kept_epochs(paper, "simclr") == list(range(50, 1000, 50))
    jobs = plan.inversion_jobs(paper)
    assert len(jobs) == 9 * 3 + 19  # every model x 3 regularizers, kept SimCLR checkpoints x reg-free
    assert ("resnet18-simclr@0050", "reg-free") in jobs
    paper["inversion"]["epochs_regularizer"] = "human-aligned"  # the SimCLR checkpoints follow it; the final models do not change
    assert set(plan.inversion_jobs(paper)) - set(jobs) == {("resnet18-simclr@0050", "human-aligned")} | {
        (plan.model_id("resnet18", "simclr", e), "human-aligned") for e in range(100, 1000, 50)}
    assert str(plan.checkpoint_path("results", "resnet18-simclr@0050")) == "results/models/resnet18-simclr/epoch-0050.pt"
    assert plan.data_marker(paper) == "data/cifar10/cifar-10-batches-py/.verified"


def test_hashes_change_only_with_their_own_settings(paper):
    adv, std = plan.train_hash(paper, "resnet18", "adversarial"), plan.train_hash(paper, "resnet18", "standard")
    scoring = plan.scoring_hash(paper)
    paper["training"]["regime"]["adversarial"]["attack"]["eps"] = 0.5
    assert plan.train_hash(paper, "resnet18", "adversarial") != adv
    assert plan.train_hash(paper, "resnet18", "standard") == std
    assert plan.scoring_hash(paper) == scoring
    reg_free = plan.inversion_hash(paper, "reg-free")
    paper["inversion"]["human_aligned"]["tv_weight"] = 0.1
    assert plan.inversion_hash(paper, "reg-free") == reg_free
    paper["inversion"]["epochs_regularizer"] = "human-aligned"  # which checkpoints are inverted, not how
    assert plan.inversion_hash(paper, "reg-free") == reg_free
    paper["inversion"]["iterations"] = 10
    assert plan.inversion_hash(paper, "reg-free") != reg_free
    report = plan.report_hash(paper)
    paper["evaluation"]["floor"]["robust"]["clean"] = 99  # the gate is part of the report
    assert plan.report_hash(paper) != report


def test_per_regularizer_iterations_rerun_only_that_regularizer(paper):
    before = {r: plan.inversion_hash(paper, r) for r in ("reg-free", "human-aligned", "adversarial")}
    assert inversion_iterations(paper, "reg-free") == paper["inversion"]["iterations"] == 5000
    paper["inversion"]["iterations_by_regularizer"] = {"reg-free": 3000}
    assert inversion_iterations(paper, "reg-free") == 3000
    assert inversion_iterations(paper, "human-aligned") == 5000
    assert plan.inversion_hash(paper, "reg-free") != before["reg-free"]
    assert plan.inversion_hash(paper, "human-aligned") == before["human-aligned"]
    assert plan.inversion_hash(paper, "adversarial") == before["adversarial"]
    paper["inversion"]["restarts"] = {"reg-free": 2}
    assert plan.inversion_hash(paper, "reg-free") != plan.inversion_hash({**paper, "inversion": {
        **paper["inversion"], "restarts": {}}}, "reg-free")
    assert plan.inversion_hash(paper, "human-aligned") == before["human-aligned"]
    # longer inversions are scheduled first
    assert plan.inversion_priority(paper, "reg-free") < plan.inversion_priority(paper, "human-aligned")
    paper["inversion"]["iterations_by_regularizer"] = {"reg-free": 8000}
    assert plan.inversion_priority(paper, "reg-free") > plan.inversion_priority(paper, "human-aligned")


def test_training_priority_starts_the_costliest_runs_first(paper):
    # paper: AT has 7 attack steps, SimCLR 1000 epochs of two views
    standard = plan.training_priority(paper, "standard")
    assert plan.training_priority(paper, "adversarial") > standard > plan.inversion_priority(paper, "reg-free")
    assert plan.training_priority(paper, "simclr") > plan.training_priority(paper, "adversarial")
    assert plan.training_priority(paper, "simclr-adv") > plan.training_priority(paper, "simclr")
    paper["training"]["regime"]["adversarial"]["attack"]["steps"] = 0
    assert plan.training_priority(paper, "adversarial") == standard
