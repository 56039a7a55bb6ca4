"""iri timings: the per-stage breakdown of a DAG run from Snakemake's benchmark files."""

from __future__ import annotations

import os

import pytest

from iri_alignment.timings import markdown, read_benchmarks, summarise, write_timings

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(folder, stage, job, wall, cpu, end):
    path = folder / stage / f"{job}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:00\t1\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    os.utime(path, (end, end))


def test_stages_span_and_idle_cores(tmp_path):
    b = tmp_path / "benchmarks"
    bench(b, "train", "resnet18-standard", 60, 58, 1060)   # 1000 -> 1060
    bench(b, "train", "vgg16-standard", 30, 29, 1030)      # 1000 -> 1030
    bench(b, "invert", "resnet18-standard-reg-free", 40, 39, 1100)  # 1060 -> 1100
    bench(b, "report", "report", 10, 5, 1110)              # 1100 -> 1110
    jobs = read_benchmarks(b)
    assert len(jobs) == 4
    summary = summarise(jobs, cores=2)
    assert [s["stage"] for s in summary["stages"]] == ["train", "invert", "report"]  # the order stages run in
    train = summary["stages"][0]
    assert train["jobs"] == 2 and train["wall_min"] == pytest.approx(1.5) and train["cpu_min"] == pytest.approx(87 / 60)
    assert summary["span_s"] == pytest.approx(110) and summary["job_s"] == pytest.approx(140)
    text = markdown(summary)
    # 110 s on 2 cores = 220 core-s, 140 in jobs, 80 idle
    assert "4 jobs in 1.8 min wall on 2 cores (3.7 core-minutes): 2.3 in jobs" in text
    assert "1.3 with a core idle" in text
    assert "| train | 2 | 1.5 | 1.4 |" in text
    forked = markdown({**summary, "forked": True})  # jobs forked from `iri workers run`: no CPU column
    assert "| train | 2 | 1.5 | – |" in forked and "CPU time is not measured" in forked


def test_no_benchmarks_and_foreign_files(tmp_path):
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "train" / "x.tsv").write_text("foo\tbar\n1\t2\n")
    summary = write_timings(tmp_path / "b", tmp_path / "tables", cores=2)
    assert summary["jobs"] == 0 and (tmp_path / "tables" / "timings.md").is_file()
