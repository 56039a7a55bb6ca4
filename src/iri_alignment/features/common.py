"""What the robust-features experiments share: loading the study's models and data, a float split,
training a fresh standard model, and the statistics of their comparisons."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from iri_alignment.data.loading import InMemorySplit


@dataclass
class FloatSplit(InMemorySplit):
    """A split of float images in [0, 1] (a perturbed dataset is not rounded to 8 bits)."""

    def get(self, indices, device="cpu"):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self.images[idx].to(device), self.labels[idx].to(device)


def first_test_images(params: dict, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (all when ``n`` is larger) and labels of the study's dataset."""
    from iri_alignment.data.loading import open_split

    split = open_split(params, "test")
    return split.get(range(min(n, len(split))), device)


def fit_standard(params: dict, arch: str, split, *, seed: int, device, augment: str = "none",
                 progress: bool = False) -> torch.nn.Module:
    """A fresh model of ``arch`` trained on ``split`` with the study's standard recipe
    (``training.supervised`` and ``training.regime.standard``), augmentation ``augment``,
    under ``study.precision`` and ``study.memory_format``."""
    from iri_alignment.devices import place
    from iri_alignment.models import build_model
    from iri_alignment.training import (augmentation_config, build_optimisation, regime_config,
                                        train_supervised_epoch)

    cfg = {**regime_config(params, "standard"), "augment": augment}
    torch.manual_seed(seed)
    model = place(build_model(params["data"]["dataset"], arch, width=params["models"]["width"]), device,
                  params["study"].get("memory_format", "contiguous"), trains=True)
    _, optimizer, scheduler = build_optimisation(model, cfg, "standard", max(math.ceil(len(split) / cfg["batch_size"]), 1))
    for epoch in range(1, cfg["epochs"] + 1):
        train_supervised_epoch(model, split, cfg, augmentation_config(params, augment), "standard", optimizer=optimizer,
                               seed=seed, epoch=epoch, device=device, progress=progress,
                               precision=params["study"].get("precision", "fp32"))
        scheduler.step()
    return model.eval()


def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return float((pred == y).float().mean())


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(~np.isnan(p))
    adjusted = np.full_like(p, np.nan)
    order = ok[np.argsort(p[ok])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def wilcoxon_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided paired Wilcoxon signed-rank p-value that ``a`` > ``b`` (NaN when all pairs tie)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if not np.any(d != 0):
        return float("nan")
    return float(stats.wilcoxon(a, b, alternative="greater").pvalue)


def mcnemar_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided exact McNemar p-value that ``a`` (bool per item) is right more often than ``b``."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return float("nan")
    return float(stats.binomtest(only_a, only_a + only_b, 0.5, alternative="greater").pvalue)
