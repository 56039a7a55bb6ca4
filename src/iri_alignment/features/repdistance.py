r"""Representation distance as perceptual distance (Engstrom et al. 2019), as a 2AFC a person answers trivially.

For a test image :math:`x`, with :math:`g` the model's representation:

* :math:`A = x + \delta^*`, :math:`\delta^* = \arg\max_{\|\delta\|_2 \le \varepsilon} \|g(x + \delta) - g(x)\|_2`
  (l2 PGD from a random start in the ball, ``steps`` steps of :math:`2.5\varepsilon/\text{steps}`);
  with :math:`\varepsilon` below the data's own noise (shapes: :math:`\sigma\sqrt{3072} \approx 1.66`)
  a person sees :math:`x` and :math:`A` as the same image;
* :math:`B` = a test image of another class (seeded).

The model *agrees with a person* on :math:`x` when :math:`\|g(A) - g(x)\| < \|g(B) - g(x)\|`.
AT is compared with standard on the same images: one-sided exact McNemar, Holm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from iri_alignment.attacks import pgd_l2, step_size_for
from iri_alignment.features.common import holm, mcnemar_greater


def other_class_partners(labels: np.ndarray, seed: int) -> np.ndarray:
    """For each image, the index of a (seeded) image of another class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    return np.array([rng.choice(np.flatnonzero(labels != c)) for c in labels])


def agreement(model, x: torch.Tensor, labels: torch.Tensor, *, eps: float, steps: int, seed: int,
              batch_size: int = 250) -> pd.DataFrame:
    """Per image: the distances to A and B in the model's representation, and whether A is closer."""
    model.eval()
    partner = torch.as_tensor(other_class_partners(labels.cpu().numpy(), seed), device=x.device)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        with torch.no_grad():
            rep_x = model.represent(xb)
        away = lambda rep, target: (rep - target).norm(dim=1)  # noqa: E731
        a = pgd_l2(model.represent, xb, rep_x, eps=eps, steps=steps, step_size=step_size_for(eps, steps),
                   random_start=True, loss_fn=away, generator=gen)
        with torch.no_grad():
            d_a = away(model.represent(a), rep_x)
            d_b = away(model.represent(x[partner[i:i + batch_size]]), rep_x)
        rows.append(pd.DataFrame({"image": np.arange(i, i + len(xb)), "d_a": d_a.cpu().numpy(),
                                  "d_b": d_b.cpu().numpy(), "agrees": (d_a < d_b).cpu().numpy(),
                                  "delta_norm": (a - xb).flatten(1).norm(dim=1).cpu().numpy()}))
    return pd.concat(rows, ignore_index=True)


def compare(per_image: pd.DataFrame) -> pd.DataFrame:
    """AT vs standard per architecture: agreement (%), difference, one-sided McNemar, Holm."""
    rows = []
    for arch, part in per_image.groupby("arch"):
        at = part[part["regime"] == "adversarial"].set_index("image")["agrees"]
        std = part[part["regime"] == "standard"].set_index("image")["agrees"]
        if at.empty or std.empty:
            continue
        both = pd.concat([at, std], axis=1, keys=["at", "std"]).dropna()
        rows.append({"arch": arch, "n": len(both), "agreement_at": 100 * both["at"].mean(),
                     "agreement_standard": 100 * both["std"].mean(),
                     "difference": 100 * (both["at"].mean() - both["std"].mean()),
                     "p": mcnemar_greater(both["at"].to_numpy(bool), both["std"].to_numpy(bool))})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p"].tolist())
    return table
