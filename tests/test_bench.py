"""`make bench` runs and reports what it promises (no timing assertions: the
ratios are noise at this size; only their bookkeeping is checked)."""

import json

import pytest
import torch

from iri_alignment import bench


@pytest.fixture(scope="module")
def run(repo, tmp_path_factory):
    """One tiny bench run (smoke width, one batch, two inversion steps, one round) with a
    torch.compile that fails, to check that a failing lever is recorded, not fatal. One torch
    thread: two threads on a busy 2-core machine run several times slower."""
    out = tmp_path_factory.mktemp("bench") / "b.json"
    threads = torch.get_num_threads()

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "compile", broken_compile)
        mp.chdir(out.parent)  # no params.yaml here: the fork server's start-up is left to tests/test_forkserver.py
        report = bench.main(["--params", str(repo / "params.yaml"), "--profile", "smoke", "--device", "cpu",
                             "--archs", "resnet18", "--regimes", "standard,adversarial", "--proxies", "l2,ssim",
                             "--batches", "1", "--iterations", "2", "--repeats", "1", "--replicates", "2",
                             "--levers", "batch,vmap,compile,channels_last", "--peak-size", "256", "--threads", "1",
                             "--no-dag", "--startup-repeats", "1", "--out", str(out)])
    assert torch.get_num_threads() == threads  # --threads 1 does not leak into later tests
    return report, out


def _groups(rows, keys):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def test_every_stage_is_measured_against_fp32_eager(run):
    report, _ = run
    v = report["variants"]
    assert set(_groups(v["training"], ("arch", "regime"))) == {("resnet18", "standard"), ("resnet18", "adversarial")}
    assert set(_groups(v["inversion"], ("arch",))) == {("resnet18",)}
    assert {r["proxy"] for r in v["scoring"]} == {"l2", "ssim"}
    for stage, keys in (("training", ("arch", "regime")), ("inversion", ("arch",)), ("scoring", ("proxy",))):
        for group, rows in _groups(v[stage], keys).items():
            ref = [r for r in rows if r["variant"] == bench.REFERENCE]
            assert len(ref) == 1 and ref[0]["ratio"] == pytest.approx(1.0), (stage, group)
            kept = [r for r in rows if r["kept"]]
            assert len(kept) == 1, (stage, group)  # one kept path, among the measured ones
            assert kept[0]["rate"] > 0 and not kept[0]["error"] and not kept[0]["probe"]
            assert kept[0]["variant"] == bench.REFERENCE or kept[0]["ratio"] >= bench.GAIN
    assert {r["variant"] for r in v["training"]} >= {bench.REFERENCE, "bf16"}
    assert {r["variant"] for r in v["inversion"]} >= {bench.REFERENCE, "bf16", "batch 2 sets", "compile"}


def test_utilisation_against_both_peaks(run):
    report, _ = run
    peaks = report["peaks"]
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0
    for stage in ("training", "inversion"):
        for r in report["variants"][stage]:
            if r["rate"]:
                assert r["gflops"] > 0
                assert r["pct_fp32_peak"] == pytest.approx(100 * r["gflops"] / peaks["fp32"])
                if peaks["bf16_native"]:
                    assert r["pct_bf16_peak"] == pytest.approx(100 * r["gflops"] / peaks["bf16"])
                else:  # an emulated bf16 matmul is no ceiling (AMD EPYC, AVX2: 0.3 GFLOP/s vs 88 in fp32)
                    assert r["pct_bf16_peak"] is None
    adv = {r["regime"]: r for r in report["training"]}
    assert adv["adversarial"]["images_per_s_fp32"] > 0


def test_failing_levers_are_recorded_not_kept(run):
    report, _ = run
    rows = {r["variant"]: r for r in report["variants"]["inversion"]}
    assert "no compiler here" in rows["compile"]["error"] and not rows["compile"]["kept"]
    vmap = rows["vmap 2 replicates"]  # a rate; an error row where a model cannot be vmapped
    assert vmap["error"] or vmap["rate"] > 0
    probe = rows["vmap 2 replicates, fake_relu off (probe)"]
    assert probe["probe"] and not probe["kept"] and probe["rate"] > 0



def test_channels_last_is_an_error_row_where_onednn_would_crash_training(run):
    """The smoke ResNet18's strided 1x1 shortcuts have 4 and 8 input channels: channels_last
    training there aborted the whole bench on an AMD EPYC with AVX2 (oneDNN issue 6035); now it
    is a row with the reason. Inversion (input gradients only) is measured in channels_last."""
    report, _ = run
    rows = [r for r in report["variants"]["training"] if r["variant"] == "channels_last"]
    assert len(rows) == 2  # standard and adversarial
    for row in rows:
        assert "oneDNN issue 6035" in row["error"] and not row["kept"]
    inversion = {r["variant"]: r for r in report["variants"]["inversion"]}
    assert inversion["channels_last"]["rate"] > 0 and not inversion["channels_last"]["error"]


def test_report_json_markdown_and_cost(run, capsys):
    report, out = run
    saved = json.loads(out.read_text())
    assert saved["machine"]["cpu_count"] >= 1 and saved["peaks"]["fp32"] > 0
    assert {r["regime"] for r in saved["training"]} == {"standard", "adversarial"}
    assert all(r["images_per_s"] >= r["images_per_s_fp32"] * 0.999 or r["kept"] == bench.REFERENCE
               for r in saved["training"])
    assert report["adversarial_cost_ratio"]["resnet18"] > 0
    assert report["paper_cost_hours"]["total"] > 0 and report["paper_cost_hours_fp32"]["total"] > 0
    assert report["startup"]["seconds"]["import iri_alignment.cli"] > 0 and report["startup"]["dag_jobs"] is None
    assert report["startup"]["job"] is None
    text = bench.markdown(report)
    for heading in ("### Training", "### Inversion", "### Scoring", "### Process start-up", "Matmul peaks"):
        assert heading in text
    assert "| resnet18 | adversarial | **" in text and "| ssim | **fp32 eager** |" in text
    assert text.count("- kept, ") == 2 + 1 + 2
    assert "failed: RuntimeError: no compiler here" in text


def test_the_paper_cost_prices_the_inversions_the_dag_plans(repo):
    """At one image-iteration per second, the priced inversion hours are the image-iterations of
    every IRI set plan.inversion_jobs lists for the paper (the last kept SimCLR epoch is the final
    model's set, not one more)."""
    from iri_alignment.params import inversion_iterations, load_params
    from iri_alignment.plan import inversion_jobs

    paper = load_params(repo / "params.yaml", "paper")
    archs = paper["models"]["archs"]
    unit = {"training": [{"arch": a, "regime": r, "images_per_s": 1.0} for a in archs for r in ("standard", "adversarial")],
            "inversion": [{"arch": a, "image_iterations_per_s": 1.0} for a in archs]}
    targets = paper["inversion"]["targets"]["per_class"] * 10
    planned = sum(targets * inversion_iterations(paper, reg) for _, reg in inversion_jobs(paper))
    assert bench.paper_cost(unit, paper)["invert"] == round(planned / 3600, 1)
