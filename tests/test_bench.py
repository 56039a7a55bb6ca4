"""`make bench` runs and reports what it promises (no timing assertions)."""

import json

from iri_alignment import bench


def test_bench_reports_every_measurement(repo, tmp_path, capsys):
    report = bench.main(["--params", str(repo / "params.yaml"), "--profile", "smoke", "--device", "cpu",
                         "--archs", "resnet18", "--regimes", "standard,adversarial", "--proxies", "l2,ssim",
                         "--batches", "1", "--iterations", "2", "--repeats", "1", "--out", str(tmp_path / "b.json")])
    assert {(r["arch"], r["regime"]) for r in report["training"]} == {("resnet18", "standard"), ("resnet18", "adversarial")}
    assert all(r["images_per_s"] > 0 for r in report["training"])
    assert report["adversarial_cost_ratio"]["resnet18"] > 0
    assert report["inversion"][0]["image_iterations_per_s"] > 0
    assert {r["proxy"] for r in report["scoring"]} == {"l2", "ssim"}
    assert report["paper_cost_hours"]["total"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["machine"]["cpu_count"] >= 1
    out = capsys.readouterr().out
    assert "| resnet18 | adversarial |" in out and "| ssim |" in out  # every measurement printed
