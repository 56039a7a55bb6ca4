r"""The talk's counterfactual figure: enhance the features an image's prediction rests on most.

For an image :math:`x` predicted as class :math:`c`, with representation :math:`r = g(x)` and final
layer weights :math:`W`, the contribution of feature :math:`i` is :math:`r_i W_{c i}`; the ``top``
largest are enhanced by maximising their mean activation from :math:`x` itself (l2 PGD,
radius ``eps``, ``steps`` steps, fake ReLU on), as in Engstrom et al.'s decision inspection.
A figure, no pass criterion: on a robust model the change should look like the shape.
"""

from __future__ import annotations

import torch

from iri_alignment.attacks import pgd_l2, step_size_for


def top_features(model, x: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, idx)``: each image's predicted class and its ``top`` contributing feature indices."""
    with torch.no_grad():
        logits, rep = model(x, with_rep=True)
        pred = logits.argmax(1)
        weight = model.backbone.fc.weight if hasattr(model, "backbone") else model.net.fc.weight
        contribution = rep * weight[pred]
    return pred, contribution.topk(top, dim=1).indices


def enhance(model, x: torch.Tensor, *, top: int, eps: float, steps: int) -> torch.Tensor:
    """``x`` moved (l2 <= eps) to raise the mean of its top contributing features."""
    model.eval()
    _, idx = top_features(model, x, top)
    raise_mean = lambda rep, i: rep.gather(1, i).mean(1)  # noqa: E731
    represent = lambda z: model.represent(z, fake_relu=True)  # noqa: E731
    return pgd_l2(represent, x, idx, eps=eps, steps=steps, step_size=step_size_for(eps, steps), loss_fn=raise_mean)


def figure(rows: list[tuple[str, torch.Tensor, torch.Tensor]], path) -> None:
    """One block per model: the images, their enhanced versions, and the change (rescaled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(3 * len(rows), n, figsize=(1.3 * n, 1.3 * 3 * len(rows)), squeeze=False)
    for b, (label, x, enhanced) in enumerate(rows):
        change = enhanced - x
        scale = change.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
        for r, (images, name) in enumerate(((x, "image"), (enhanced, "enhanced"), (0.5 + 0.5 * change / scale, "change"))):
            for k in range(n):
                ax = axes[3 * b + r, k]
                ax.imshow(images[k].permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_ylabel(f"{label}\n{name}" if r == 0 else name, fontsize=7)
    fig.suptitle("Top-2 contributing features enhanced from the image (l2 PGD)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
