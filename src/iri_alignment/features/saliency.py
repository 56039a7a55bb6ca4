r"""Input-gradient saliency, measured (Tsipras et al. 2019; Etmann et al. 2019).

For a test image :math:`x` with label :math:`y`, the saliency map is
:math:`g = \nabla_x \mathrm{CE}(f(x), y)` and its per-pixel magnitude
:math:`s_{ij} = \sum_c |g_{cij}|`. Against the shape's mask :math:`M` (the pixels
the shape covers, dilated by ``dilate`` px to take in its anti-aliased edge):

* **energy fraction** :math:`\mathrm{EF} = \sum_{ij \in M} s_{ij} / \sum_{ij} s_{ij}` (compare
  with the mask's area fraction: a map blind to the shape has EF near it);
* **AUROC** of :math:`s` as a score for "pixel in :math:`M`" (0.5: no better than chance);
* **cosine alignment** with the centred image,
  :math:`|\langle x - \bar x, g\rangle| / (\|x - \bar x\| \|g\|)` (Etmann et al.'s alignment in
  cosine form; needs no mask, so it applies to every dataset).

AT is compared with standard per architecture on the same images: one-sided paired
Wilcoxon, Holm over the comparisons.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from iri_alignment.features.common import holm, wilcoxon_greater

METRICS = ("energy_fraction", "auroc", "cosine")


def input_gradients(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """:math:`\\nabla_x` CE(f(x), y) per image, the model in eval mode."""
    model.eval()
    grads = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].clone().requires_grad_(True)
        loss = F.cross_entropy(model(xb), y[i:i + batch_size], reduction="sum")
        (g,) = torch.autograd.grad(loss, xb)
        grads.append(g.detach())
    return torch.cat(grads)


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Binary dilation of (N, H, W) masks by a (2p+1)^2 square."""
    if pixels <= 0:
        return mask.bool()
    return F.max_pool2d(mask.float()[:, None], 2 * pixels + 1, stride=1, padding=pixels)[:, 0] > 0


def energy_fraction(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) share of each map's total inside its mask; saliency and mask (N, H, W)."""
    total = saliency.flatten(1).sum(1)
    return (saliency * mask).flatten(1).sum(1) / total.clamp_min(1e-30)


def auroc(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) AUROC of each map's pixel values for the mask (Mann-Whitney, ties counted half)."""
    out = []
    for s, m in zip(saliency.flatten(1).cpu().numpy(), mask.flatten(1).cpu().numpy().astype(bool)):
        pos, neg = m.sum(), (~m).sum()
        if pos == 0 or neg == 0:
            out.append(np.nan)
            continue
        ranks = pd.Series(s).rank(method="average").to_numpy()
        out.append((ranks[m].sum() - pos * (pos + 1) / 2) / (pos * neg))
    return torch.tensor(out, dtype=torch.float64)


def cosine_alignment(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) |cos| between each gradient and its centred image."""
    centred = (x - x.mean(dim=(1, 2, 3), keepdim=True)).flatten(1)
    g = grad.flatten(1)
    return (centred * g).sum(1).abs() / (centred.norm(dim=1) * g.norm(dim=1)).clamp_min(1e-30)


def measure(model, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor | None, *, dilate_px: int = 1) -> pd.DataFrame:
    """Per image: the three metrics (EF and AUROC only with masks) and the mask's area fraction."""
    grad = input_gradients(model, x, y)
    table = {"image": np.arange(len(x)), "cosine": cosine_alignment(grad, x).cpu().numpy()}
    if masks is not None:
        m = dilate(masks.to(grad.device), dilate_px)
        s = grad.abs().sum(1)
        table.update(energy_fraction=energy_fraction(s, m).cpu().numpy(), auroc=auroc(s, m).numpy(),
                     mask_area=m.flatten(1).float().mean(1).cpu().numpy())
    return pd.DataFrame(table)


def compare(per_image: pd.DataFrame) -> pd.DataFrame:
    """AT vs standard per architecture and metric: medians, one-sided paired Wilcoxon, Holm.

    ``per_image`` has columns ``arch``, ``regime``, ``image`` and the metrics.
    """
    rows = []
    for arch, part in per_image.groupby("arch"):
        at = part[part["regime"] == "adversarial"].set_index("image")
        std = part[part["regime"] == "standard"].set_index("image")
        if at.empty or std.empty:
            continue
        for metric in [m for m in METRICS if m in part.columns and part[m].notna().any()]:
            both = pd.concat([at[metric], std[metric]], axis=1, keys=["at", "std"]).dropna()
            rows.append({"arch": arch, "metric": metric, "n": len(both), "median_at": both["at"].median(),
                         "median_standard": both["std"].median(), "at_above": float((both["at"] > both["std"]).mean()),
                         "p": wilcoxon_greater(both["at"], both["std"])})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = holm(table["p"].tolist())
    return table
