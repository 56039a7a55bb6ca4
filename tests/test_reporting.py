"""The report on synthetic results folders whose every outcome is known."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iri_alignment.reporting import build_report, latex_escape, load_results, parse_model_id
from iri_alignment.reporting.results import ResultsError

N = 8  # targets per IRI set
TARGETS = [7 * i + 3 for i in range(N)]
PROXIES = ["ms-ssim", "l2"]
REGULARIZERS = ["reg-free", "human-aligned", "adversarial"]
#: aligned targets (out of N) under ms-ssim 2AFC, by (regime, regularizer); l2 aligns one more (capped at N)
ALIGNED = {
    ("adversarial", "reg-free"): 6, ("adversarial", "human-aligned"): 7, ("adversarial", "adversarial"): 1,
    ("standard", "reg-free"): 0, ("standard", "human-aligned"): 2, ("standard", "adversarial"): 0,
    ("simclr", "reg-free"): 4, ("simclr", "human-aligned"): 5, ("simclr", "adversarial"): 0,
}
#: correct clustering trials (out of N) under ms-ssim, by regime (reg-free); l2 the same
CLUSTERED = {"adversarial": 5, "standard": 3, "simclr": 4}
FULL_TREE = ("resnet18-standard", "resnet18-adversarial", "resnet18-simclr@0001", "resnet18-simclr",
             "vgg16-standard", "vgg16-adversarial", "vgg16-simclr@0001", "vgg16-simclr")
UNCONVERGED_SET = ("resnet18-adversarial", "human-aligned")  # its first two IRIs have rep loss 0.5


def aligned(model_id: str, regularizer: str, proxy: str) -> np.ndarray:
    """The 2AFC outcomes written for one set: the first k targets aligned. The
    SimCLR checkpoint at epoch 1 aligns two fewer; vgg16 one fewer (floor 0)."""
    arch, rest = model_id.split("-", 1)
    regime, _, epoch = rest.partition("@")
    k = ALIGNED[(regime, regularizer)] + (proxy == "l2") - (arch == "vgg16") - 2 * bool(epoch)
    k = int(np.clip(k, 0, N))
    return np.r_[np.ones(k), np.zeros(N - k)]


def clustered(model_id: str, proxy: str) -> np.ndarray:
    regime = model_id.split("-", 1)[1].partition("@")[0]
    c = CLUSTERED[regime]
    return np.r_[np.ones(c), np.zeros(N - c)]


def write_set(root: Path, model_id: str, regularizer: str, proxies=PROXIES, self_proxy: str | None = "ms-ssim") -> None:
    """iris/<id>/<reg>/ (grid.png, results.csv, meta.json) and scores/<id>/<reg>.csv/.json."""
    arch, regime, epoch = parse_model_id(model_id)
    rep = np.full(N, 0.01)
    if (model_id, regularizer) == UNCONVERGED_SET:
        rep[:2] = 0.5
    folder = root / "iris" / model_id / regularizer
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 16, 3), 200, np.uint8)).save(folder / "grid.png")
    table = pd.DataFrame({"index": range(N), "target_index": TARGETS, "label": [i % 4 for i in range(N)], "rep_loss": rep,
                          "converged": rep <= 0.1, "best_iteration": 99})
    table.to_csv(folder / "results.csv", index=False)
    model = {"dataset": "shapes", "arch": arch, "regime": regime, "epoch": epoch or 2}
    (folder / "meta.json").write_text(json.dumps({"model": model, "regularizer": regularizer}))
    frames = []
    for p in proxies:
        against = regularizer == "adversarial" and p == self_proxy
        frames.append(table.drop(columns="best_iteration").assign(
            proxy=p, d_target=0.1, d_seed=0.2, **{"2afc": aligned(model_id, regularizer, p)},
            clustering=clustered(model_id, p), optimised_against=against))
    scores = root / "scores" / model_id
    scores.mkdir(parents=True, exist_ok=True)
    pd.concat(frames).to_csv(scores / f"{regularizer}.csv", index=False)
    (scores / f"{regularizer}.json").write_text(json.dumps({"model": model, "regularizer": regularizer}))


def write_model(root: Path, model_id: str, *, evaluation: bool) -> None:
    arch, regime, epoch = parse_model_id(model_id)
    if epoch is not None:
        return  # intermediate checkpoints have no metrics of their own
    metrics = {"dataset": "shapes", "arch": arch, "width": 0.25, "regime": regime, "eps": 1.0,
               "clean_acc": 0.9 if regime == "standard" else 0.8, "robust_acc": 0.0 if regime == "standard" else 0.4}
    if regime == "simclr":
        metrics.update(probe_test_acc=0.55, epochs=2)
    (root / "models" / model_id).mkdir(parents=True)
    (root / "models" / model_id / "metrics.json").write_text(json.dumps(metrics))
    if evaluation:
        (root / "evaluation").mkdir(exist_ok=True)
        (root / "evaluation" / f"{model_id}.json").write_text(json.dumps(
            {"clean_acc": metrics["clean_acc"] - 0.05, "robust_acc": metrics["robust_acc"] / 2, "eps": 1.0,
             "attack_steps": 20, "n": 100, "arch": arch, "regime": regime}))


def make_tree(root: Path, model_ids=FULL_TREE, regularizers=REGULARIZERS) -> Path:
    for m in model_ids:
        write_model(root, m, evaluation=not m.startswith("vgg16"))
        for g in regularizers:
            write_set(root, m, g)
    return root


def report(tmp_path: Path, root: Path, **kw) -> tuple[dict, Path, Path]:
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    args = {"structural_proxy": "ms-ssim", "proxies": PROXIES, "permutations": 200, "bootstrap": 200, "seed": 0, **kw}
    return build_report(root, tables, figures, **args), tables, figures


def cell(mean_of: np.ndarray) -> tuple[float, float]:
    """The (mean, std) in percent that a per-target cell should show."""
    return 100 * mean_of.mean(), 100 * mean_of.std(ddof=1)


def parse(text: str) -> tuple[float, float, int]:
    m = re.match(r"(-?[\d.]+) ± ([\d.]+) \(n=(\d+)\)", text)
    assert m, text
    return float(m[1]), float(m[2]), int(m[3])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    return report(tmp, make_tree(tmp / "results"))


TABLES = ("alignment_by_regularizer", "alignment_by_regularizer_over_proxies", "proxies", "architecture_loss",
          "augmentation", "simclr_epochs")


def test_parse_model_id():
    assert parse_model_id("resnet18-adversarial-noaug") == ("resnet18", "adversarial-noaug", None)
    assert parse_model_id("resnet18-simclr@0005") == ("resnet18", "simclr", 5)
    assert parse_model_id("densenet121-standard-simclraug") == ("densenet121", "standard-simclraug", None)
    assert parse_model_id("vgg16-newregime") == ("vgg16", "newregime", None)
    with pytest.raises(ValueError):
        parse_model_id("resnet18")
    with pytest.raises(ValueError):
        parse_model_id("resnet18-simclr@last")


def test_every_table_in_three_formats_and_every_figure(full):
    summary, tables, figures = full
    for name in TABLES:
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").is_file(), f"{name}.{ext}"
            assert str(tables / f"{name}.{ext}") in summary["tables"]
    for name in ("significance.csv", "significance.md", "cells.csv"):
        assert (tables / name).is_file()
    for name in ("alignment_by_regularizer", "proxy_agreement", "simclr_epochs"):
        with Image.open(figures / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 100
    grids = sorted(p.name for p in (figures / "grids").iterdir())
    assert len(grids) == len(FULL_TREE) * len(REGULARIZERS)
    assert "resnet18-simclr@0001_reg-free.png" in grids
    assert not any(s.startswith(("table", "figure")) for s in summary["skipped"])


def test_alignment_by_regularizer_cells_match_the_written_outcomes(full):
    _, tables, _ = full
    t = pd.read_csv(tables / "alignment_by_regularizer.csv")
    assert list(t.columns) == ["training", "model", "proxy", *REGULARIZERS]
    # final models only, AT before standard (the paper's order), then SimCLR
    assert list(zip(t["training"], t["model"])) == [
        ("AT (l2, eps=1)", "ResNet18"), ("AT (l2, eps=1)", "VGG16"), ("Standard", "ResNet18"), ("Standard", "VGG16"),
        ("SimCLR", "ResNet18"), ("SimCLR", "VGG16")]
    assert set(t["proxy"]) == {"ms-ssim"}
    for row, model_id in zip(t.itertuples(index=False), ["resnet18-adversarial", "vgg16-adversarial", "resnet18-standard",
                                                         "vgg16-standard", "resnet18-simclr", "vgg16-simclr"]):
        for g, text in zip(REGULARIZERS, row[3:]):
            mean, std, n = parse(text)
            want = cell(aligned(model_id, g, "ms-ssim"))
            assert n == N and mean == pytest.approx(want[0], abs=0.005) and std == pytest.approx(want[1], abs=0.005)
    # by hand: AT ResNet18 reg-free aligns 6 of 8 targets
    assert t.loc[0, "reg-free"].startswith("75.00 ± 46.29 (n=8)")
    # the unconverged set carries a dagger, the others do not; adversarial sets are scored by their own proxy
    assert t.loc[0, "human-aligned"].endswith("†") and not t.loc[1, "human-aligned"].endswith("†")
    assert all(v.endswith("‡") for v in t["adversarial"]) and not any("‡" in v for v in t["reg-free"])
    md = (tables / "alignment_by_regularizer.md").read_text()
    assert "ms-ssim" in md.splitlines()[0]
    assert "† IRIs that did not converge (rep loss > 0.1): ResNet18 AT (l2, eps=1) human-aligned: 2 of 8." in md
    assert "‡ Scored by the proxy these IRIs were optimised against" in md


def test_over_proxies_table_is_the_paper_cell(full):
    _, tables, _ = full
    t = pd.read_csv(tables / "alignment_by_regularizer_over_proxies.csv")
    assert t["proxy"].iloc[0] == "mean over ms-ssim, l2"
    # reg-free of AT ResNet18: ms-ssim 75%, l2 87.5% -> 81.25 +- 6.25 (population std over 2 proxies)
    assert parse(t.loc[0, "reg-free"]) == (81.25, 6.25, 2)
    # adversarial IRIs were optimised against ms-ssim: averaged over l2 alone, unmarked
    assert parse(t.loc[0, "adversarial"].rstrip("†‡"))[2] == 1 and "‡" not in t.loc[0, "adversarial"]
    assert "averaged over the others" in (tables / "alignment_by_regularizer_over_proxies.md").read_text()


def test_proxies_table_names_every_proxy_and_prefers_the_evaluation(full):
    _, tables, _ = full
    t = pd.read_csv(tables / "proxies.csv")
    assert list(t.columns) == ["training", "model", "2AFC ms-ssim", "2AFC l2", "clustering ms-ssim", "clustering l2",
                               "clean acc. (%)", "robust acc. (%)"]
    at_resnet = t.iloc[0]
    assert parse(at_resnet["2AFC l2"])[0] == pytest.approx(87.5)
    assert parse(at_resnet["clustering ms-ssim"])[0] == pytest.approx(62.5)
    # ResNet18 has an evaluation file (clean 0.8 - 0.05, robust 0.4 / 2); VGG16 only metrics.json
    assert (at_resnet["clean acc. (%)"], at_resnet["robust acc. (%)"]) == (75.0, 20.0)
    assert (t.iloc[1]["clean acc. (%)"], t.iloc[1]["robust acc. (%)"]) == (80.0, 40.0)


def test_architecture_augmentation_and_epoch_tables(full):
    _, tables, _ = full
    arch = pd.read_csv(tables / "architecture_loss.csv")
    assert list(arch.columns) == ["model", "proxy", "standard", "adversarial", "simclr"]
    assert list(arch["model"]) == ["ResNet18", "VGG16"]
    assert parse(arch.loc[1, "adversarial"])[0] == pytest.approx(62.5)  # 6 - 1 for vgg16
    aug = pd.read_csv(tables / "augmentation.csv")
    assert list(aug.columns) == ["model", "proxy", "standard 2AFC", "standard clustering", "adversarial 2AFC",
                                 "adversarial clustering", "simclr 2AFC", "simclr clustering"]
    assert parse(aug.loc[0, "standard clustering"])[0] == pytest.approx(37.5)
    ep = pd.read_csv(tables / "simclr_epochs.csv", dtype=str)
    assert list(ep.columns) == ["model", "epoch", "proxy", "simclr 2AFC", "simclr probe acc. (%)"]
    assert list(zip(ep["model"], ep["epoch"])) == [("ResNet18", "1"), ("ResNet18", "2"), ("VGG16", "1"), ("VGG16", "2")]
    assert parse(ep.loc[0, "simclr 2AFC"])[0] == pytest.approx(25.0)  # 4 - 2 at epoch 1
    assert parse(ep.loc[1, "simclr 2AFC"])[0] == pytest.approx(50.0)
    assert list(ep["simclr probe acc. (%)"]) == ["–", "55.00", "–", "55.00"]


def test_epoch_table_follows_the_epochs_regularizer(tmp_path):
    """Only the kept checkpoints' human-aligned sets exist (as the embedded
    profile runs it): the table and figure use them and say so."""
    root = make_tree(tmp_path / "results", model_ids=("resnet18-standard", "resnet18-simclr"))
    write_set(root, "resnet18-simclr@0001", "human-aligned")
    summary, tables, figures = report(tmp_path, root, epochs_regularizer="human-aligned")
    ep = pd.read_csv(tables / "simclr_epochs.csv", dtype=str)
    assert list(ep["epoch"]) == ["1", "2"]
    assert parse(ep.loc[0, "simclr 2AFC"])[0] == pytest.approx(37.5)  # human-aligned 5 - 2 at epoch 1
    assert parse(ep.loc[1, "simclr 2AFC"])[0] == pytest.approx(62.5)
    assert "of human-aligned IRIs over SimCLR training epochs" in (tables / "simclr_epochs.md").read_text()
    assert (figures / "simclr_epochs.png").is_file()
    _, reg_free_tables, _ = report(tmp_path / "reg-free", root)  # the epoch-1 checkpoint has no reg-free set
    assert list(pd.read_csv(reg_free_tables / "simclr_epochs.csv", dtype=str)["epoch"]) == ["2"]


def test_significance_outputs_and_headline(full):
    summary, tables, _ = full
    sig = pd.read_csv(tables / "significance.csv")
    assert set(sig["family"]) == {"augmentation", "architecture", "loss", "regularizer"}
    row = sig[sig["comparison"] == "resnet18: adversarial vs standard"].iloc[0]
    assert row["effect_pp"] == pytest.approx(75.0) and row["test"] == "exact McNemar"
    assert (row["discordant_a"], row["discordant_b"], row["n_targets"]) == (6, 0, N)
    assert summary["headline"]["alignment"]["resnet18-adversarial"]["reg-free"] == 75.0
    assert summary["proxy"] == "ms-ssim" and summary["headline"]["n_tests"] == len(sig)
    assert set(summary["headline"]["proxy_rank_correlation"]) == {"ms-ssim", "l2"}
    md = (tables / "significance.md").read_text()
    assert md.index("## augmentation") < md.index("## architecture") < md.index("## loss") < md.index("## regularizer")


def test_latex_is_well_formed(full):
    _, tables, _ = full
    for name in TABLES:
        tex = (tables / f"{name}.tex").read_text()
        n_cols = len(pd.read_csv(tables / f"{name}.csv").columns)
        assert tex.count(r"\begin{") == tex.count(r"\end{") == 2
        for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{tab:"):
            assert token in tex, (name, token)
        body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
        rows = [line for line in body.splitlines() if line.endswith(r"\\")]
        assert rows and all(len(re.findall(r"(?<!\\)&", line)) == n_cols - 1 for line in rows), name
        stripped = re.sub(r"\\[{}_%&#$]", "", tex)
        assert stripped.count("{") == stripped.count("}"), name
        assert not re.search(r"(?<!\\)[_%#]", "\n".join(tex.splitlines()[1:])), name  # line 0 is a comment
        assert "±" not in tex and "†" not in tex
    assert latex_escape("a_b 50% ± 1†") == r"a\_b 50\% $\pm$ 1$^\dagger$"


def test_missing_pieces_are_skipped_and_logged(tmp_path, caplog):
    root = make_tree(tmp_path / "results", model_ids=("resnet18-standard", "resnet18-adversarial"),
                     regularizers=["reg-free", "human-aligned"])
    (root / "iris" / "resnet18-standard" / "adversarial").mkdir(parents=True)  # an IRI set without scores or grid
    with caplog.at_level(logging.INFO, logger="iri_alignment"):
        summary, tables, figures = report(tmp_path, root, proxies=["lpips-alex", *PROXIES])
    assert not (tables / "simclr_epochs.csv").exists() and not (figures / "simclr_epochs.png").exists()
    assert any("table simclr_epochs" in s for s in summary["skipped"])
    assert "simclr_epochs" in caplog.text
    assert any("proxy lpips-alex" in s for s in summary["skipped"])
    assert any("architecture: adversarial" in s for s in summary["skipped"])  # ResNet18 alone: nothing to compare
    t = pd.read_csv(tables / "alignment_by_regularizer.csv")
    assert list(t.columns) == ["training", "model", "proxy", "reg-free", "human-aligned"]
    assert list(pd.read_csv(tables / "proxies.csv").columns)[2:4] == ["2AFC ms-ssim", "2AFC l2"]
    sig = pd.read_csv(tables / "significance.csv")
    assert set(sig["family"]) == {"augmentation", "regularizer"}


def test_a_model_without_the_structural_proxy_gets_dashes(tmp_path):
    root = tmp_path / "results"
    write_model(root, "resnet18-standard", evaluation=False)
    write_model(root, "resnet18-adversarial", evaluation=False)
    write_set(root, "resnet18-adversarial", "reg-free")
    write_set(root, "resnet18-standard", "reg-free", proxies=["l2"])
    _, tables, _ = report(tmp_path, root)
    t = pd.read_csv(tables / "proxies.csv")
    assert t.loc[1, "2AFC ms-ssim"] == "–" and parse(t.loc[1, "2AFC l2"])[0] == pytest.approx(12.5)
    assert "– no data." in (tables / "proxies.md").read_text()
    # Table 1 holds only models scored by the structural proxy
    assert list(pd.read_csv(tables / "alignment_by_regularizer.csv")["training"]) == ["AT (l2, eps=1)"]


def test_empty_and_absent_results_are_named_not_reported(tmp_path):
    """An empty folder (a wrong --results) would give empty tables and a validity that passes zero models."""
    (tmp_path / "results").mkdir()
    with pytest.raises(FileNotFoundError, match="results holds nothing to report: no scores"):
        report(tmp_path, tmp_path / "results")
    assert not (tmp_path / "tables").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "nowhere")
    bad = tmp_path / "results" / "scores" / "resnet18-standard" / "reg-free.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ResultsError, match=r"nothing the report can use: .*reg-free.csv: lacks columns"):
        load_results(tmp_path / "results")


def test_convergence_threshold_is_the_argument(tmp_path):
    root = make_tree(tmp_path / "results", model_ids=("resnet18-adversarial",), regularizers=["human-aligned"])
    res = load_results(root, converged_below=1.0)
    assert int(res.sets["n_unconverged"].sum()) == 0
    res = load_results(root, converged_below=0.1)
    assert res.sets.loc[("resnet18-adversarial", "human-aligned"), "n_unconverged"] == 2


def test_a_final_model_replaces_the_checkpoint_of_its_epoch(tmp_path):
    root = make_tree(tmp_path / "results", model_ids=("resnet18-simclr@0001", "resnet18-simclr@0002", "resnet18-simclr"),
                     regularizers=["reg-free"])
    _, tables, _ = report(tmp_path, root)
    ep = pd.read_csv(tables / "simclr_epochs.csv", dtype=str)
    assert list(ep["epoch"]) == ["1", "2"]  # the final model is at epoch 2 (metrics.json "epochs")
    assert ep.loc[1, "simclr probe acc. (%)"] == "55.00"
    assert parse(ep.loc[1, "simclr 2AFC"])[0] == pytest.approx(50.0)  # the final model's, not the checkpoint's 25


def test_null_margin_and_the_floor_gate(tmp_path):
    """Null and margin beside 2AFC; a model below its floor is marked in every table and left out of the tests."""
    root = make_tree(tmp_path / "results", model_ids=("resnet18-standard", "resnet18-adversarial", "vgg16-standard",
                                                      "vgg16-adversarial"), regularizers=["reg-free"])
    for path in (root / "scores").glob("*/*.csv"):  # every IRI: null 1/2 (as often nearer a wrong target as the seed)
        frame = pd.read_csv(path)
        frame.assign(**{"2afc_null": 0.5, "2afc_margin": frame["2afc"] - 0.5}).to_csv(path, index=False)
    floors = {"standard": {"clean": 50}, "robust": {"clean": 78, "robust": 10}, "contrastive": {"probe": 40}}
    # resnet18-adversarial is evaluated at 75% clean (evaluation/ wins over metrics.json): below 78
    summary, tables, _ = report(tmp_path, root, floors=floors)
    assert summary["failed"] == {"resnet18-adversarial": "clean 75.0% < 78%"}
    validity = json.loads((tables / "validity.json").read_text())
    assert validity["failed"] == summary["failed"]
    status = {m["model"]: m["status"] for m in validity["models"]}
    assert status == {"resnet18-adversarial": "FAILED", "vgg16-adversarial": "passed", "resnet18-standard": "passed",
                      "vgg16-standard": "passed"}
    by_reg = pd.read_csv(tables / "alignment_by_regularizer.csv")
    at_vgg = by_reg[(by_reg["model"] == "VGG16") & by_reg["training"].str.startswith("AT")].iloc[0]
    assert parse(at_vgg["reg-free"])[0] == pytest.approx(100 * aligned("vgg16-adversarial", "reg-free", "ms-ssim").mean())
    assert parse(at_vgg["reg-free null"])[0] == pytest.approx(50.0)
    assert parse(at_vgg["reg-free margin"])[0] == pytest.approx(100 * aligned("vgg16-adversarial", "reg-free",
                                                                              "ms-ssim").mean() - 50)
    at_r18 = by_reg[(by_reg["model"] == "ResNet18") & by_reg["training"].str.startswith("AT")].iloc[0]
    assert at_r18["reg-free"].endswith("✗") and not at_vgg["reg-free"].endswith("✗")
    assert "FAILED" in (tables / "alignment_by_regularizer.md").read_text()
    tests = pd.read_csv(tables / "significance.csv")
    assert set(tests["measure"]) == {"2afc_margin", "clustering"}
    assert not tests["comparison"].str.contains("resnet18: adversarial").any()
    assert tests["comparison"].str.contains("vgg16: adversarial vs standard").sum() == 2
    assert "resnet18-adversarial: below its accuracy floor" in (tables / "significance.md").read_text()
    text = (tables / "summary.md").read_text()
    assert "margin ms-ssim" in text and "✗" in text


def test_scores_of_another_iri_set_are_named(tmp_path):
    root = make_tree(tmp_path / "results", model_ids=("resnet18-standard", "vgg16-standard"), regularizers=["reg-free"])
    wrong = root / "scores" / "vgg16-standard" / "reg-free.json"
    wrong.write_text((root / "scores" / "resnet18-standard" / "reg-free.json").read_text())
    with pytest.raises(ResultsError, match="another IRI set.*arch 'resnet18' \\(expected 'vgg16'\\)"):
        load_results(root)


def test_sets_another_profile_left_in_the_results_are_named(tmp_path, repo, monkeypatch):
    """Smoke and embedded share results/ by default: the report says which scored sets the
    profile does not plan (they are still reported) and records them in summary.json."""
    from click.testing import CliRunner

    from iri_alignment.cli import cli
    from iri_alignment.params import load_params
    from iri_alignment.plan import inversion_jobs
    from iri_alignment.reporting.results import unplanned_sets

    root = make_tree(tmp_path / "results", model_ids=("resnet18-standard", "vgg16-standard"), regularizers=["reg-free"])
    planned = inversion_jobs(load_params(repo / "params.yaml", "smoke"))  # ResNet18 only
    assert ("resnet18-standard", "reg-free") in planned
    assert unplanned_sets(root, planned) == ["vgg16-standard/reg-free"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    res = CliRunner().invoke(cli, ["report", "--results", str(root), "--params", str(repo / "params.yaml"),
                                   "--profile", "smoke"], catch_exceptions=False)
    assert res.exit_code == 0
    assert json.loads((root / "tables" / "summary.json").read_text())["unplanned_sets"] == ["vgg16-standard/reg-free"]
