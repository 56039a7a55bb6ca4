"""The robust-features experiments as the DAG runs them: read the models, run, write results.

Every function takes the study params and the models' checkpoints, writes its results into
``out`` (``results/features/...``), and returns a small summary; ``iri features ...`` wraps each
in an MLflow run. :func:`write_tables` turns the results into the report's tables.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from iri_alignment.features import counterfactual, repdistance, saliency
from iri_alignment.features.common import first_test_images
from iri_alignment.io import read_json
from iri_alignment.reporting.tables import Table, write_table

log = logging.getLogger(__name__)


def load_models(checkpoints, device) -> list[tuple[dict, torch.nn.Module]]:
    from iri_alignment.checkpoints import load_model

    out = []
    for path in checkpoints:
        model, ckpt = load_model(path, device=device)
        out.append(({**ckpt.meta, "model_id": Path(path).parent.name}, model))
    return out


def shape_masks(params: dict, x: torch.Tensor) -> torch.Tensor | None:
    """The shapes test masks of the first ``len(x)`` images (None for other datasets), checked
    against the images they belong to."""
    if params["data"]["dataset"] != "shapes":
        return None
    from iri_alignment.data.shapes import test_split_masks

    cfg = params["data"]["shapes"]
    images, masks = test_split_masks(cfg["n_test"], cfg["seed"], noise=cfg["noise"])
    stored = (x.detach().cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if not np.array_equal(images[: len(x)], stored):
        raise ValueError("the shapes test split on disk is not the one data.shapes generates; regenerate it")
    return torch.from_numpy(masks[: len(x)]).to(x.device)


def _per_model(models, measure, compare, out: str | Path, name: str) -> pd.DataFrame:
    """``measure(model)`` per model (tagged with its id, arch and regime), written to ``<name>.csv``;
    ``compare`` of them written to ``<name>_compare.csv`` and returned."""
    per_image = pd.concat([measure(model).assign(model_id=meta["model_id"], arch=meta["arch"], regime=meta["regime"])
                           for meta, model in models], ignore_index=True)
    table = compare(per_image)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_image.to_csv(out / f"{name}.csv", index=False)
    table.to_csv(out / f"{name}_compare.csv", index=False)
    return table


def run_saliency(params: dict, checkpoints, out: str | Path, device) -> dict:
    cfg = params["features"]["saliency"]
    x, y = first_test_images(params, cfg["n"], device)
    masks = shape_masks(params, x)
    models = load_models(checkpoints, device)
    table = _per_model(models, lambda model: saliency.measure(model, x, y, masks, dilate_px=cfg["dilate"]),
                       saliency.compare, out, "saliency")
    saliency_figure(models, x, y, Path(out) / "saliency.png")
    return {"n": len(x), "masks": masks is not None, "comparisons": table.to_dict("records")}


def saliency_figure(models, x, y, path: Path, n: int = 6) -> None:
    """Per model a row of |gradient| maps under the images they belong to."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1 + len(models), n, figsize=(1.3 * n, 1.35 * (1 + len(models))), squeeze=False)
    for k in range(n):
        axes[0, k].imshow(x[k].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    axes[0, 0].set_ylabel("image", fontsize=7)
    for r, (meta, model) in enumerate(models, start=1):
        s = saliency.input_gradients(model, x[:n], y[:n]).abs().sum(1)
        s = s / s.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)
        for k in range(n):
            axes[r, k].imshow(s[k].cpu().numpy(), cmap="gray", interpolation="nearest")
        axes[r, 0].set_ylabel(meta["model_id"], fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Input-gradient saliency |dCE/dx| (per image, scaled to its maximum)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_repdistance(params: dict, checkpoints, out: str | Path, device) -> dict:
    cfg = params["features"]["repdistance"]
    x, y = first_test_images(params, cfg["n"], device)
    table = _per_model(load_models(checkpoints, device),
                       lambda model: repdistance.agreement(model, x, y, eps=cfg["eps"], steps=cfg["steps"],
                                                           seed=params["study"]["seed"]),
                       repdistance.compare, out, "repdistance")
    return {"n": len(x), "eps": cfg["eps"], "comparisons": table.to_dict("records")}


def run_counterfactual(params: dict, checkpoints, out: str | Path, device) -> dict:
    cfg = params["features"]["counterfactual"]
    x, _ = first_test_images(params, cfg["n"], device)
    rows = [(meta["model_id"], x, counterfactual.enhance(model, x, top=cfg["top"], eps=cfg["eps"], steps=cfg["steps"]))
            for meta, model in load_models(checkpoints, device)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    counterfactual.figure(rows, out)
    return {"figure": str(out), "models": [r[0] for r in rows]}


def run_nonrobust(params: dict, checkpoint, *, kind: str, variant: str, out: str | Path, device) -> dict:
    from iri_alignment.features import nonrobust

    source = nonrobust.source_model(checkpoint, device)[0] if variant == "plain" else None
    result = nonrobust.experiment(params, kind=kind, variant=variant, source=source, device=device)
    nonrobust.write(result, out)
    return result


# -- tables -----------------------------------------------------------------------------------


def _p(p) -> str:
    return "–" if p is None or pd.isna(p) else (f"{p:.2g}" if p >= 1e-4 else "<1e-4")


def write_tables(features: str | Path, out: str | Path) -> list[Path]:
    """``features_nonrobust``, ``features_saliency`` and ``features_repdistance`` (CSV, Markdown, LaTeX)."""
    features, out = Path(features), Path(out)
    written = []
    results = [read_json(p) for p in sorted((features / "nonrobust").glob("*.json"))]
    if results:
        from iri_alignment.features.common import holm

        adjusted = holm([r["p_above_control"] for r in results])
        rows = [{"variant": r["variant"], "set": f"D_{r['kind']}", "attack success": f"{100 * r['targeted_success']:.1f}",
                 "test acc": f"{100 * r['set_acc']:.1f}", "control acc": f"{100 * r['control_acc']:.1f}",
                 "chance": f"{100 * r['chance']:.1f}", "p (> chance)": _p(r["p_above_chance"]),
                 "p (> control, Holm)": _p(adj), "acc vs y+1": f"{100 * r['set_acc_next']:.1f}",
                 "source acc": f"{100 * r['source_test_acc']:.1f}",
                 "source follows pattern": ("–" if r.get("source_follows_pattern") is None
                                            else f"{100 * r['source_follows_pattern']:.1f}")}
                for r, adj in zip(results, adjusted)]
        rows += [{"variant": f"{r['variant']} (own texture removed)", "set": f"D_{r['kind']}",
                  "attack success": "–", "test acc": f"{100 * r['without_own_pattern']['set_acc']:.1f}",
                  "control acc": "–", "chance": f"{100 * r['chance']:.1f}",
                  "p (> chance)": _p(r["without_own_pattern"]["p_above_chance"]), "p (> control, Holm)": "–",
                  "acc vs y+1": f"{100 * r['without_own_pattern']['set_acc_next']:.1f}",
                  "source acc": f"{100 * r['source_test_acc']:.1f}", "source follows pattern": "–"}
                 for r in results if r.get("without_own_pattern")]
        written += write_table(Table("features_nonrobust", "Non-robust features: a fresh standard model trained on "
                                     "D_det / D_rand, tested on the original test set (%)", pd.DataFrame(rows), 2,
                                     [f"{results[0]['arch']}; targeted l2 PGD eps {results[0]['eps']}, "
                                      f"{results[0]['steps']} steps; {results[0]['n_train']} training images; control: "
                                      "Gaussian noise of the same norm, same labels. Pattern variant (the positive "
                                      "control): the class is a faint tiled pattern only; 'source follows pattern' is "
                                      "the source model's accuracy against the pattern's class on images whose pattern "
                                      "was swapped (the control counts only if the source uses the pattern); 'own "
                                      "texture removed': D_det built from the same images without their own class's "
                                      "texture, which otherwise predicts y+1 (an ablation, not a criterion). CIFAR-10 "
                                      "(Ilyas et al. 2019, ResNet-50): D_rand 63.3%, D_det 43.7%."]), out)
    for name, title, fmt in (
        ("saliency", "Saliency alignment: AT vs standard per architecture (medians over test images; one-sided "
                     "paired Wilcoxon, Holm)", lambda r: {"median AT": f"{r['median_at']:.3f}",
                                                        "median standard": f"{r['median_standard']:.3f}",
                                                        "AT above (% images)": f"{100 * r['at_above']:.0f}"}),
        ("repdistance", "Representation distance as perceptual distance: % of test images where the model finds "
                        "x closer to x + d (imperceptible) than to another class's image (one-sided McNemar, Holm)",
         lambda r: {"AT": f"{r['agreement_at']:.1f}", "standard": f"{r['agreement_standard']:.1f}",
                    "difference": f"{r['difference']:+.1f}"})):
        path = features / f"{name}_compare.csv"
        if path.is_file():
            table = pd.read_csv(path)
            rows = [{"arch": r["arch"], **({"metric": r["metric"]} if "metric" in r else {}), **fmt(r), "n": int(r["n"]),
                     "p": _p(r["p"]), "p (Holm)": _p(r["p_holm"])} for _, r in table.iterrows()]
            written += write_table(Table(f"features_{name}", title, pd.DataFrame(rows), 1, []), out)
    return written


__all__ = ["run_counterfactual", "run_nonrobust", "run_repdistance", "run_saliency", "write_tables"]
