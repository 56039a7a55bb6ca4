"""Why a clustering result is what it is: image statistics of each scored IRI set.

Clustering (protocol 6) asks whether an IRI is nearer its own target than two
targets of other classes under a proxy. When a direction of the study does
not show in clustering, these numbers say which property of the IRIs the
proxy does or does not see. They are a diagnosis, reported beside the study's
tables: no study table, test or threshold reads them.

Per IRI set, on the same triplets the proxy scored (the score CSV's
``candidate_j`` columns), each row reports the clustering accuracy (%) when
the distance is

- ``proxy``: the study's structural proxy (``scoring.structural_proxy``), as in the tables;
- ``seed_query``: the same proxy, with each IRI's own *seed* as the query. An IRI
  that never left its seed scores this; with one shared seed it is the chance
  level these particular triplets realise (33.3% in expectation);
- ``mean_colour``: the l2 distance between per-channel means. Near chance means
  the IRIs do not carry their target's colour;
- ``edges``: ``1 - corr(|S(g(x'))|, |S(g(c))|)``, the Pearson correlation of
  Sobel gradient magnitudes of the smoothed grey-level images (``g`` the mean
  over channels blurred by a Gaussian of ``blur`` pixels, default 1; ``|S|``
  the magnitude of the 3x3 Sobel gradient). A gradient magnitude does not
  change when the contrast is inverted, so this sees an outline drawn in
  either polarity;

and ``negative_polarity``: % of IRIs whose smoothed grey level correlates
negatively with their own target's (an outline drawn with inverted contrast,
which the signed structure term of SSIM and MS-SSIM counts against the IRI).
The blur is there because reg-free IRIs carry saturated per-pixel noise: at
``blur=0`` the sign of a noise-dominated IRI's correlation is a coin flip
(about 50% negative for every set), and the Sobel magnitudes see the noise's
edges, not the outline's. It is fixed at 1 pixel, not fitted to any result.

The pooled table averages each target's outcome over replicates first and gives a
percentile bootstrap interval over targets: replicates of one model share their
targets, seed and triplets, so their IRIs are not independent draws.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from iri_alignment import scoring
from iri_alignment.io import atomic_write, read_json, write_json
from iri_alignment.irisets import read_iriset
from iri_alignment.plan import base_model_id, replicate_of
from iri_alignment.proxies import get_proxy, pairwise

log = logging.getLogger(__name__)

MEASURES = ("proxy", "seed_query", "mean_colour", "edges")
_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def grey(x: torch.Tensor, blur: float = 0.0) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] -> (N, 1, H, W) mean over channels.

    Args:
        x: images in [0, 1].
        blur: standard deviation in pixels of a Gaussian applied to the grey
            level (kernel ``2 * ceil(2 * blur) + 1`` wide, reflect padding);
            0 (default) leaves it unblurred.
    """
    g = x.mean(1, keepdim=True)
    if blur <= 0:
        return g
    size = 2 * int(np.ceil(2 * blur)) + 1
    return TF.gaussian_blur(g, [size, size], [blur, blur])


def edge_magnitude(x: torch.Tensor, blur: float = 0.0) -> torch.Tensor:
    """(N, C, H, W) images -> (N, H-2, W-2) Sobel gradient magnitude of the (blurred) grey level, no padding."""
    kernel = torch.stack([_SOBEL_X, _SOBEL_X.T])[:, None].to(x)
    g = F.conv2d(grey(x, blur), kernel)
    return g.pow(2).sum(1).sqrt()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of rows of (N, D) tensors; 0 where either row is constant."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp_min(1e-12), torch.zeros_like(denominator))


def _candidates(queries: torch.Tensor, candidates: torch.Tensor, triplets: np.ndarray, feature, distance) -> np.ndarray:
    """(N, K) ``distance(feature(query_i), feature(candidates[triplets[i, j]]))``."""
    fq, fc = feature(queries), feature(candidates)
    k = triplets.shape[1]
    index = torch.as_tensor(triplets.reshape(-1))
    d = distance(fq.repeat_interleave(k, 0), fc[index])
    return d.view(len(queries), k).numpy()


def mean_colour_distances(queries: torch.Tensor, candidates: torch.Tensor, triplets: np.ndarray) -> np.ndarray:
    """(N, K) l2 distance between the per-channel means of query i and candidate ``triplets[i, j]``."""
    return _candidates(queries, candidates, triplets, lambda x: x.mean((2, 3)), lambda a, b: (a - b).norm(dim=1))


def edge_distances(queries: torch.Tensor, candidates: torch.Tensor, triplets: np.ndarray, blur: float = 0.0) -> np.ndarray:
    """(N, K) ``1 - corr`` of the Sobel gradient magnitudes of query i and candidate ``triplets[i, j]``."""
    return _candidates(queries, candidates, triplets, lambda x: edge_magnitude(x, blur).flatten(1),
                       lambda a, b: 1.0 - _correlation(a, b))


def negative_polarity(iris: torch.Tensor, targets: torch.Tensor, blur: float = 0.0) -> np.ndarray:
    """(N,) bool: the IRI's (blurred) grey level correlates negatively with its own target's."""
    return (_correlation(grey(iris, blur).flatten(1), grey(targets, blur).flatten(1)) < 0).numpy()


def diagnose_set(iriset, triplets: np.ndarray, proxy_outcome: np.ndarray, proxy, *, blur: float = 1.0) -> pd.DataFrame:
    """Per-IRI outcomes (0..1) of every measure for one IRI set.

    Args:
        iriset: an :class:`iri_alignment.irisets.IRISet` (images as their 8-bit PNGs).
        triplets: (N, K) candidate target indices the proxy scored (the score CSV's).
        proxy_outcome: (N,) the score CSV's clustering outcomes under ``proxy``.
        proxy: the study's structural proxy (:func:`iri_alignment.proxies.get_proxy`).
        blur: Gaussian standard deviation (pixels) before ``edges`` and
            ``negative_polarity``; default 1 (module docstring says why).
    """
    iris, targets, seeds = iriset.iris, iriset.targets, iriset.seed
    seed_d = pairwise(proxy, seeds, targets, index=torch.as_tensor(triplets)).cpu().numpy()
    return pd.DataFrame({
        "target_index": iriset.table["target_index"].to_numpy(),
        "proxy": proxy_outcome,
        "seed_query": scoring.clustering(seed_d, triplets),
        "mean_colour": scoring.clustering(mean_colour_distances(iris, targets, triplets), triplets),
        "edges": scoring.clustering(edge_distances(iris, targets, triplets, blur), triplets),
        "negative_polarity": negative_polarity(iris, targets, blur).astype(float),
    })


def diagnose(results: str | Path, proxy_name: str, *, blur: float = 1.0, device="cpu") -> pd.DataFrame:
    """Per-IRI diagnostics of every scored IRI set under ``results/scores``.

    Returns one row per IRI: ``model`` (the id without its replicate), ``replicate``,
    ``regularizer``, ``target_index`` and the columns of :func:`diagnose_set`.

    Raises:
        FileNotFoundError: no score file, or a score file's IRI set is gone.
        ValueError: a score file lacks ``proxy_name`` (score it with that proxy first).
    """
    scores = sorted(Path(results, "scores").glob("*/*.csv"))
    if not scores:
        raise FileNotFoundError(f"no score files under {Path(results, 'scores')}: run `iri score` (or `make demo`) first")
    proxy = get_proxy(proxy_name, device=device)
    frames = []
    for csv in scores:
        summary = read_json(csv.with_suffix(".json"))
        table = pd.read_csv(csv)
        table = table[table["proxy"] == proxy_name]
        if table.empty:
            raise ValueError(f"{csv} has no rows for proxy {proxy_name!r}: score the set with it "
                             f"(scoring.proxies) or pass another --proxy")
        iriset = read_iriset(summary["iris"])
        if not np.array_equal(table["target_index"].to_numpy(), iriset.table["target_index"].to_numpy()):
            raise ValueError(f"{csv} was scored on other targets than {summary['iris']}: score the set again")
        triplets = table.filter(regex=r"^candidate_\d+$").to_numpy()
        frame = diagnose_set(iriset, triplets, table["clustering"].to_numpy(), proxy, blur=blur)
        mid = csv.parent.name
        frames.append(frame.assign(model=base_model_id(mid), replicate=replicate_of(mid), regularizer=csv.stem))
        log.info("%s %s: %s", mid, csv.stem, ", ".join(f"{c} {100 * frame[c].mean():.1f}%" for c in frame.columns[1:]))
    columns = ["model", "replicate", "regularizer", "target_index", *MEASURES, "negative_polarity"]
    return pd.concat(frames, ignore_index=True)[columns]


def pooled(per_iri: pd.DataFrame, *, bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (model, regularizer): each measure's mean over targets (%), averaging
    each target over replicates first, with a bootstrap 95% interval over targets."""
    rows = []
    for (model, regularizer), group in per_iri.groupby(["model", "regularizer"], sort=True):
        per_target = group.groupby("target_index")[[*MEASURES, "negative_polarity"]].mean()
        row = {"model": model, "regularizer": regularizer, "replicates": group["replicate"].nunique(),
               "targets": len(per_target)}
        for column in per_target.columns:
            low, high = scoring.bootstrap_ci(100 * per_target[column].to_numpy(), bootstrap, seed)
            row.update({column: 100 * per_target[column].mean(), f"{column}_low": low, f"{column}_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, proxy_name: str, blur: float = 1.0) -> str:
    """The pooled table as Markdown: ``mean [low, high]`` per measure."""
    header = ["model", "regularizer", "replicates x targets", f"clustering ({proxy_name})", "seed as query",
              "mean colour", "edges (either polarity)", "negative polarity"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [f"{r[c]:.1f} [{r[c + '_low']:.1f}, {r[c + '_high']:.1f}]" for c in (*MEASURES, "negative_polarity")]
        lines.append(f"| {r['model']} | {r['regularizer']} | {r['replicates']} x {r['targets']} | " + " | ".join(cells) + " |")
    return "\n".join([
        f"Clustering diagnostics: accuracy (%) on the scored triplets (chance 33.3) when the distance is the study's "
        f"proxy, the proxy with each IRI's seed as the query, mean colour, or Sobel edge magnitude; and % of IRIs whose "
        f"grey level correlates negatively with their target's (edges and polarity on grey levels blurred by a "
        f"Gaussian of {blur:g} px). Mean over targets (each averaged over replicates) "
        f"[bootstrap 95% interval over targets]. A diagnosis, not a study result (`iri_alignment.diagnostics`).",
        "", *lines, ""])


def write_diagnostics(results: str | Path, out: str | Path, proxy_name: str, *, bootstrap: int, seed: int,
                      blur: float = 1.0, device="cpu") -> pd.DataFrame:
    """Write ``out/clustering.csv`` (per IRI), ``out/clustering.json`` and ``out/clustering.md`` (pooled)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_iri = diagnose(results, proxy_name, blur=blur, device=device)
    table = pooled(per_iri, bootstrap=bootstrap, seed=seed)
    with atomic_write(out / "clustering.csv", "w") as fh:
        per_iri.to_csv(fh, index=False)
    write_json(out / "clustering.json", {"proxy": proxy_name, "blur": blur, "rows": table.to_dict(orient="records")})
    with atomic_write(out / "clustering.md", "w") as fh:
        fh.write(markdown(table, proxy_name, blur))
    return table
