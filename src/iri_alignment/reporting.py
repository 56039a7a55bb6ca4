"""Tables and figures of the study from a results folder (protocol, sections 6-8).

:func:`build_report` reads what the pipeline wrote under ``results``::

    models/<model_id>/metrics.json         training metrics and model meta (accuracies as fractions)
    evaluation/<model_id>.json             separate evaluation (preferred over metrics.json)
    iris/<model_id>/<regularizer>/         IRI sets (grid.png, results.csv, meta.json)
    scores/<model_id>/<regularizer>.csv    per (proxy, IRI): 2afc and clustering outcomes, rep_loss, ...
    scores/<model_id>/<regularizer>.json   summary, with the model meta

``model_id`` is ``<arch>-<regime>`` or, for an intermediate SimCLR checkpoint,
``<arch>-<regime>@<epoch:04d>``. Any subset may be present: every table and
figure the data allows is built, and everything skipped is logged and listed
in the returned summary.

Cells (all in percent):

* *per-target cell* (one proxy): ``mean ± std (n=targets)`` of the per-IRI
  outcomes :math:`o_i \\in [0, 1]` times 100, with the sample standard
  deviation (ddof 1) over the n targets, and a percentile bootstrap 95%
  interval of the mean (figures and ``cells.csv``);
* *over-proxies cell* (the paper's): ``mean ± std (n=proxies)`` of the
  per-proxy means, population std (ddof 0) over the proxies; LPIPS variants
  when any were scored, else every scored proxy; an adversarial IRI set is
  averaged over the proxies it was not optimised against;
* marks: ``†`` the IRI set has IRIs whose rep loss exceeds ``converged_below``
  (the footnote counts them), ``‡`` the cell is scored by the proxy the IRIs
  were optimised against (adversarial regularizer: a biased judge),
  ``–`` no data.

Tables (each as ``.csv``, ``.md`` and booktabs ``.tex`` in ``out_tables``;
every one names its proxy in its title and in a ``proxy`` column or its
headers): ``alignment_by_regularizer``, ``alignment_by_regularizer_over_proxies``,
``proxies``, ``architecture_loss``, ``augmentation``, ``simclr_epochs``; plus
``cells.csv`` (every cell as numbers) and ``significance.csv``/``.md``
(:mod:`iri_alignment.significance`). Figures (PNG in ``out_figures``):
``grids/<model_id>_<regularizer>.png``, ``alignment_by_regularizer.png``,
``proxy_agreement.png``, ``simclr_epochs.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from iri_alignment import scoring, significance
from iri_alignment.plan import parse_model_id
from iri_alignment.io import atomic_write, read_json
from iri_alignment.significance import arch_name

log = logging.getLogger(__name__)

TASKS = ("2afc", "clustering")
REGULARIZERS = ("reg-free", "human-aligned", "adversarial", "freq", "fourier")
REGIMES = ("adversarial", "standard", "adversarial-noaug", "standard-simclraug", "trades", "mart", "simclr",
           "simclr-nocolor", "simclr-adv")  # row order: the paper lists AT before standard
ARCHS = ("resnet18", "resnet50", "vgg16", "inceptionv3", "densenet121")  # the paper's row order
CONTRASTIVE = ("simclr", "simclr-nocolor", "simclr-adv")
AUGMENTATION_REGIMES = ("standard", "adversarial", "adversarial-noaug", "standard-simclraug", "simclr", "simclr-nocolor",
                        "simclr-adv")
ROBUST = ("adversarial", "adversarial-noaug", "trades", "mart", "simclr-adv")  # trained against an l2 adversary
TRAINING_LABELS = {"standard": "Standard", "adversarial": "AT", "adversarial-noaug": "AT, no aug.",
                   "standard-simclraug": "Standard, SimCLR aug.", "trades": "TRADES", "mart": "MART", "simclr": "SimCLR",
                   "simclr-nocolor": "SimCLR, no colour", "simclr-adv": "SimCLR, adversarial"}
UNCONVERGED, SELF_SCORED, MISSING = "†", "‡", "–"
TASK_NAMES = {"2afc": "2AFC", "clustering": "clustering"}


# -- reading the results folder ---------------------------------------------------------


def _read_json_or_none(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _percent(value) -> float:
    """A fraction in [0, 1] (or None) as a percentage (NaN when absent)."""
    return 100.0 * float(value) if value is not None else float("nan")


@dataclass
class Results:
    """Everything :func:`build_report` reads, as tables.

    Attributes:
        root: the results folder.
        models: one row per model id (index ``model_id``): ``arch``, ``regime``,
            ``epoch`` (checkpoint epoch for ``@`` ids, else NA), ``final_epoch``,
            ``dataset``, ``clean_acc``, ``robust_acc``, ``probe_acc`` (percent, NaN when
            unknown), ``eps``, ``attack_steps``, ``accuracy_source``.
        outcomes: one row per (model, regularizer, proxy, IRI): ``model_id``,
            ``regularizer``, ``proxy``, ``index``, ``target_index``, ``rep_loss``,
            ``unconverged`` (rep loss > ``converged_below``), ``2afc``, ``clustering``
            (outcomes in [0, 1]), ``optimised_against``.
        sets: one row per scored (model, regularizer): ``n_iris``, ``n_unconverged``,
            ``self_proxy`` (the proxy an adversarial set was optimised against, or "").
        grids: ``(model_id, regularizer, path)`` of every IRI set's ``grid.png``.
        skipped: what could not be read, and why.
    """

    root: Path
    models: pd.DataFrame
    outcomes: pd.DataFrame
    sets: pd.DataFrame
    grids: list[tuple[str, str, Path]]
    skipped: list[str] = field(default_factory=list)


def _model_row(root: Path, model_id: str, meta_hint: dict | None) -> dict:
    """Meta and accuracies of one model, from metrics.json, evaluation/<id>.json and a scores summary."""
    arch, regime, epoch = parse_model_id(model_id)
    metrics = _read_json_or_none(root / "models" / model_id / "metrics.json") or {}
    evaluation = _read_json_or_none(root / "evaluation" / f"{model_id}.json")
    meta = {**(meta_hint or {}), **metrics}
    for key, parsed in (("arch", arch), ("regime", regime)):
        if meta.get(key) and meta[key] != parsed:
            log.warning("%s: meta says %s=%s, the id says %s; using the meta", model_id, key, meta[key], parsed)
    source = evaluation if evaluation is not None else metrics
    probe = metrics.get("probe_test_acc", (meta_hint or {}).get("metrics", {}).get("probe_test_acc"))
    return {
        "model_id": model_id, "arch": meta.get("arch") or arch, "regime": meta.get("regime") or regime, "epoch": epoch,
        "final_epoch": metrics.get("epochs", meta.get("epoch") if epoch is None else None),
        "dataset": meta.get("dataset"), "clean_acc": _percent(source.get("clean_acc")),
        "robust_acc": _percent(source.get("robust_acc")), "probe_acc": _percent(probe),
        "eps": source.get("eps", meta.get("eps")), "attack_steps": source.get("attack_steps"),
        "accuracy_source": "evaluation" if evaluation is not None else ("metrics" if metrics else ""),
    }


def _read_scores(path: Path, summary: dict, model_id: str, regularizer: str, converged_below: float,
                 skipped: list[str]) -> pd.DataFrame | None:
    """One per-IRI scores CSV (with its summary JSON, or {}) in the columns of :attr:`Results.outcomes`;
    None (logged) when unusable."""
    table = pd.read_csv(path)
    missing = {"proxy", "target_index", "2afc", "clustering"} - set(table.columns)
    if missing:
        skipped.append(f"{path}: lacks columns {sorted(missing)}; not used")
        log.warning(skipped[-1])
        return None
    if "index" not in table.columns:
        table["index"] = table["target_index"]
    if "rep_loss" in table.columns:
        table["unconverged"] = table["rep_loss"] > converged_below
    else:
        table["rep_loss"] = np.nan
        table["unconverged"] = ~table["converged"].astype(bool) if "converged" in table.columns else False
    if "optimised_against" not in table.columns:
        flagged = {p for p, s in summary.get("proxies", {}).items() if s.get("optimised_against")}
        table["optimised_against"] = table["proxy"].isin(flagged)
    table["optimised_against"] = table["optimised_against"].astype(bool)
    table["model_id"], table["regularizer"] = model_id, regularizer
    return table.loc[:, ["model_id", "regularizer", "proxy", "index", "target_index", "rep_loss", "unconverged", "2afc",
                         "clustering", "optimised_against"]]


def load_results(results: str | Path, *, converged_below: float = 0.1) -> Results:
    """Read a results folder (layout in the module docstring) into :class:`Results`.

    Args:
        results: the results root.
        converged_below: an IRI whose rep loss is above this did not converge (default 0.1, protocol 5).

    Raises:
        FileNotFoundError: ``results`` is not a folder.
    """
    root = Path(results)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    skipped: list[str] = []
    frames, hints = [], {}
    for path in sorted((root / "scores").glob("*/*.csv")):
        model_id, regularizer = path.parent.name, path.stem
        try:
            parse_model_id(model_id)
        except ValueError as err:
            skipped.append(f"{path}: {err}")
            log.warning(skipped[-1])
            continue
        summary = _read_json_or_none(path.with_suffix(".json")) or {}
        table = _read_scores(path, summary, model_id, regularizer, converged_below, skipped)
        if table is not None:
            frames.append(table)
            hints.setdefault(model_id, summary.get("model"))
    grids = []
    for grid in sorted((root / "iris").glob("*/*/grid.png")):
        model_id, regularizer = grid.parent.parent.name, grid.parent.name
        grids.append((model_id, regularizer, grid))
        hints.setdefault(model_id, (_read_json_or_none(grid.parent / "meta.json") or {}).get("model"))
    scored = {(t["model_id"].iat[0], t["regularizer"].iat[0]) for t in frames}
    for model_id, regularizer, _ in grids:
        if (model_id, regularizer) not in scored:
            skipped.append(f"iris/{model_id}/{regularizer}: no scores; only its grid is reported")
            log.info(skipped[-1])
    for folder in sorted((root / "models").glob("*")):
        if (folder / "metrics.json").is_file():
            hints.setdefault(folder.name, None)
    for path in sorted((root / "evaluation").glob("*.json")):
        hints.setdefault(path.stem, None)

    rows = []
    for model_id, hint in sorted(hints.items()):
        try:
            rows.append(_model_row(root, model_id, hint))
        except ValueError as err:
            skipped.append(f"model {model_id}: {err}")
            log.warning(skipped[-1])
    models = pd.DataFrame(rows, columns=["model_id", "arch", "regime", "epoch", "final_epoch", "dataset", "clean_acc",
                                         "robust_acc", "probe_acc", "eps", "attack_steps", "accuracy_source"])
    models["epoch"] = models["epoch"].astype("Int64")
    models["final_epoch"] = pd.to_numeric(models["final_epoch"]).astype("Int64")
    models = models.set_index("model_id")

    outcome_cols = ["model_id", "regularizer", "proxy", "index", "target_index", "rep_loss", "unconverged", "2afc",
                    "clustering", "optimised_against"]
    outcomes = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=outcome_cols)
    iris = outcomes.drop_duplicates(["model_id", "regularizer", "index"])
    sets = iris.groupby(["model_id", "regularizer"]).agg(n_iris=("index", "size"), n_unconverged=("unconverged", "sum"))
    self_proxy = (outcomes[outcomes["optimised_against"].astype(bool)].groupby(["model_id", "regularizer"])["proxy"]
                  .first())
    sets["self_proxy"] = self_proxy.reindex(sets.index).fillna("")
    sets["n_unconverged"] = sets["n_unconverged"].astype(int)
    return Results(root, models, outcomes, sets, grids, skipped)


# -- cells ------------------------------------------------------------------------------


def summarise_cells(res: Results, *, bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Every per-target cell: one row per (model, regularizer, proxy, task).

    Args:
        res: the loaded results.
        bootstrap: resamples of the bootstrap 95% interval (default 2000).
        seed: bootstrap seed (default 0).

    Returns:
        columns ``model_id``, ``regularizer``, ``proxy``, ``task``, ``mean``,
        ``std``, ``n``, ``ci_low``, ``ci_high`` (percent, :func:`scoring.summarise`),
        ``n_iris``, ``n_unconverged``, ``self_scored``.
    """
    rows = []
    for (model_id, regularizer, proxy), part in res.outcomes.groupby(["model_id", "regularizer", "proxy"], sort=True):
        info = res.sets.loc[(model_id, regularizer)]
        for task in TASKS:
            rows.append({"model_id": model_id, "regularizer": regularizer, "proxy": proxy, "task": task,
                         **scoring.summarise(part[task].to_numpy(dtype=np.float64), bootstrap, seed),
                         "n_iris": int(info["n_iris"]), "n_unconverged": int(info["n_unconverged"]),
                         "self_scored": info["self_proxy"] == proxy})
    columns = ["model_id", "regularizer", "proxy", "task", "mean", "std", "n", "ci_low", "ci_high", "n_iris",
               "n_unconverged", "self_scored"]
    return pd.DataFrame(rows, columns=columns)


def averaged_proxies(available: Sequence[str], proxies: Sequence[str]) -> list[str]:
    """The proxies an over-proxies cell averages: the LPIPS variants among ``proxies`` that were
    scored (the paper's cells), else every scored one of ``proxies``."""
    scored = [p for p in proxies if p in set(available)]
    lpips = [p for p in scored if p.startswith("lpips")]
    return lpips or scored


def over_proxy_cells(cells: pd.DataFrame, proxies: Sequence[str]) -> pd.DataFrame:
    """The paper's cells: mean +- std over proxies of per-proxy means (:func:`scoring.summarise_over_proxies`).

    A set optimised against one of the proxies is averaged over the others
    (when any remain). Returns one row per (model, regularizer, task) with
    ``proxy = "over-proxies"``, ``proxies_used`` (comma-separated), ``mean``,
    ``std`` (ddof 0), ``n`` (proxies) and the set's convergence counts.
    """
    rows = []
    for (model_id, regularizer, task), part in cells[cells["proxy"].isin(proxies)].groupby(
            ["model_id", "regularizer", "task"], sort=True):
        use = part[~part["self_scored"]] if (~part["self_scored"]).any() else part
        use = use.sort_values("proxy", key=lambda names: names.map(list(proxies).index))
        cell = scoring.summarise_over_proxies(dict(zip(use["proxy"], use["mean"])))
        rows.append({"model_id": model_id, "regularizer": regularizer, "proxy": "over-proxies", "task": task, **cell,
                     "ci_low": np.nan, "ci_high": np.nan, "n_iris": int(part["n_iris"].iat[0]),
                     "n_unconverged": int(part["n_unconverged"].iat[0]), "self_scored": bool(use["self_scored"].any()),
                     "proxies_used": ",".join(use["proxy"])})
    return pd.DataFrame(rows, columns=[*cells.columns, "proxies_used"])


class _Marks:
    """Formats cells and remembers which marks a table used, for its footnotes."""

    def __init__(self, models: pd.DataFrame, converged_below: float):
        self.models = models
        self.converged_below = converged_below
        self.unconverged: dict[tuple[str, str], tuple[int, int]] = {}
        self.self_scored: set[tuple[str, str]] = set()
        self.missing = False

    def text(self, cell: pd.Series | None) -> str:
        """``"mean ± std (n=..)"`` plus marks; ``–`` for no cell."""
        if cell is None:
            self.missing = True
            return MISSING
        std = f" ± {cell['std']:.2f}" if np.isfinite(cell["std"]) else ""
        text = f"{cell['mean']:.2f}{std} (n={int(cell['n'])})"
        key = (cell["model_id"], cell["regularizer"])
        if cell["n_unconverged"] > 0:
            self.unconverged[key] = (int(cell["n_unconverged"]), int(cell["n_iris"]))
            text += UNCONVERGED
        if cell["self_scored"]:
            self.self_scored.add(key)
            text += SELF_SCORED
        return text

    def footnotes(self) -> list[str]:
        notes = []
        if self.unconverged:
            listed = "; ".join(f"{_model_label(self.models, m)} {g}: {k} of {n}"
                               for (m, g), (k, n) in sorted(self.unconverged.items()))
            notes.append(f"{UNCONVERGED} IRIs that did not converge (rep loss > {self.converged_below:g}): {listed}.")
        if self.self_scored:
            listed = "; ".join(f"{_model_label(self.models, m)} {g}" for m, g in sorted(self.self_scored))
            notes.append(f"{SELF_SCORED} Scored by the proxy these IRIs were optimised against (a biased judge): {listed}.")
        if self.missing:
            notes.append(f"{MISSING} no data.")
        return notes


def _lookup(cells: pd.DataFrame) -> dict[tuple, pd.Series]:
    """Cells keyed by (model_id, regularizer, proxy, task)."""
    return {(row["model_id"], row["regularizer"], row["proxy"], row["task"]): row for _, row in cells.iterrows()}


def _training_label(models: pd.DataFrame, model_id: str) -> str:
    """The paper's "training" column: ``AT (l2, eps=1)``, ``Standard``, ..."""
    row = models.loc[model_id]
    label = TRAINING_LABELS.get(row["regime"], row["regime"])
    if row["regime"] in ROBUST and pd.notna(row["eps"]):
        label += f" (l2, eps={float(row['eps']):g})"
    return label


def _model_label(models: pd.DataFrame, model_id: str) -> str:
    """``ResNet18 AT (l2, eps=1)`` (with ``@epoch`` for intermediate checkpoints)."""
    row = models.loc[model_id]
    epoch = f" @ epoch {row['epoch']}" if pd.notna(row["epoch"]) else ""
    return f"{arch_name(row['arch'])} {_training_label(models, model_id)}{epoch}"


def _order(values: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """``values`` in the order of ``preferred``, unknown ones after it alphabetically."""
    rank: dict[str, int] = {}
    for i, v in enumerate(preferred):
        rank.setdefault(v, i)
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), v))


def _final_models(res: Results) -> list[str]:
    """Ids of final models (no ``@epoch``), rows ordered by regime then architecture (the paper's order)."""
    final = res.models[res.models["epoch"].isna()]
    regime_rank = {r: i for i, r in enumerate(_order(final["regime"], REGIMES))}
    arch_rank = {a: i for i, a in enumerate(_order(final["arch"], ARCHS))}
    return sorted(final.index, key=lambda m: (regime_rank[final.at[m, "regime"]], arch_rank[final.at[m, "arch"]], m))


# -- tables -----------------------------------------------------------------------------


@dataclass
class Table:
    """One report table: ``frame`` holds display strings; its first ``n_keys``
    columns label the rows (the first groups them in LaTeX)."""

    name: str
    title: str
    frame: pd.DataFrame
    n_keys: int
    footnotes: list[str]


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$",
          "–": "--", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped and ``±``, ``†``, ``‡``, ``–`` typeset."""
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def to_markdown(table: Table) -> str:
    """Title line, the table (pandas ``to_markdown``), then the footnotes."""
    parts = [f"**{table.title}**", "", table.frame.to_markdown(index=False, disable_numparse=True), ""]
    parts += [note + "\n" for note in table.footnotes]
    return "\n".join(parts)


def to_latex(table: Table) -> str:
    r"""A booktabs ``table`` environment (needs ``\usepackage{booktabs}``).

    The first key column is printed once per group, with ``\midrule`` between
    groups (the paper's layout); footnotes follow the tabular in small type.
    """
    frame = table.frame
    spec = "l" * table.n_keys + "c" * (frame.shape[1] - table.n_keys)
    lines = [r"% written by iri_alignment.reporting; needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             r"\small", rf"\caption{{{latex_escape(table.title)}}}", rf"\label{{tab:{table.name.replace('_', '-')}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(map(latex_escape, frame.columns)) + r" \\",
             r"\midrule"]
    previous = None
    for values in frame.itertuples(index=False):
        cells = [latex_escape(v) for v in values]
        if table.n_keys > 1 and previous is not None:
            if values[0] == previous:
                cells[0] = ""
            else:
                lines.append(r"\midrule")
        previous = values[0]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.footnotes:
        lines += [r"\par\smallskip", r"\parbox{\linewidth}{\footnotesize " + r" \\ ".join(map(latex_escape, table.footnotes))
                  + "}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    """Write ``<name>.csv``, ``.md`` and ``.tex`` into ``out_dir``; return the paths."""
    out = Path(out_dir)
    paths = [out / f"{table.name}.{ext}" for ext in ("csv", "md", "tex")]
    with atomic_write(paths[0], "w") as fh:
        table.frame.to_csv(fh, index=False)
    with atomic_write(paths[1], "w") as fh:
        fh.write(to_markdown(table))
    with atomic_write(paths[2], "w") as fh:
        fh.write(to_latex(table))
    return paths


def _regularizers(cells: pd.DataFrame) -> list[str]:
    return _order(cells["regularizer"], REGULARIZERS)


def alignment_by_regularizer_table(res: Results, cells: pd.DataFrame, proxy: str, *, converged_below: float) -> Table | None:
    """Table 1 layout: rows (training, model), columns regularizers; 2AFC of ``proxy``, mean ± std over targets."""
    part = cells[(cells["proxy"] == proxy) & (cells["task"] == "2afc")]
    models = [m for m in _final_models(res) if m in set(part["model_id"])]
    if not models:
        return None
    marks, lookup = _Marks(res.models, converged_below), _lookup(part)
    regs = _regularizers(part)
    frame = pd.DataFrame([{"training": _training_label(res.models, m), "model": arch_name(res.models.at[m, "arch"]),
                           "proxy": proxy, **{g: marks.text(lookup.get((m, g, proxy, "2afc"))) for g in regs}}
                          for m in models])
    title = (f"2AFC alignment (%) of IRIs by regularizer, judged by {proxy}: mean ± std over targets (n = targets)")
    return Table("alignment_by_regularizer", title, frame, 2, marks.footnotes())


def alignment_over_proxies_table(res: Results, over: pd.DataFrame, used: Sequence[str], *,
                                 converged_below: float) -> Table | None:
    """Table 1 as the paper computes it: 2AFC mean ± std over proxies (n = proxies)."""
    part = over[over["task"] == "2afc"]
    models = [m for m in _final_models(res) if m in set(part["model_id"])]
    if not models:
        return None
    marks, lookup = _Marks(res.models, converged_below), _lookup(part)
    regs = _regularizers(part)
    label = "mean over " + ", ".join(used)
    frame = pd.DataFrame([{"training": _training_label(res.models, m), "model": arch_name(res.models.at[m, "arch"]),
                           "proxy": label, **{g: marks.text(lookup.get((m, g, "over-proxies", "2afc"))) for g in regs}}
                          for m in models])
    notes = marks.footnotes()
    if part["proxies_used"].ne(",".join(used)).any():
        notes.append("IRIs optimised against one of the proxies are averaged over the others (n counts the proxies used).")
    title = f"2AFC alignment (%) of IRIs by regularizer: mean ± std over proxies ({', '.join(used)}; n = proxies)"
    return Table("alignment_by_regularizer_over_proxies", title, frame, 2, notes)


def proxies_table(res: Results, cells: pd.DataFrame, proxies: Sequence[str], *, converged_below: float,
                  regularizer: str = "reg-free") -> Table | None:
    """Rows (training, model); 2AFC and clustering of ``regularizer`` IRIs under every proxy; clean and robust accuracy."""
    part = cells[cells["regularizer"] == regularizer]
    present = [p for p in proxies if p in set(part["proxy"])]
    models = [m for m in _final_models(res) if m in set(part["model_id"])]
    if not present or not models:
        return None
    marks, lookup = _Marks(res.models, converged_below), _lookup(part)
    rows = []
    for m in models:
        row = {"training": _training_label(res.models, m), "model": arch_name(res.models.at[m, "arch"])}
        for task in TASKS:
            for p in present:
                row[f"{TASK_NAMES[task]} {p}"] = marks.text(lookup.get((m, regularizer, p, task)))
        for key, name in (("clean_acc", "clean acc. (%)"), ("robust_acc", "robust acc. (%)")):
            value = res.models.at[m, key]
            row[name] = f"{value:.2f}" if np.isfinite(value) else MISSING
            marks.missing |= not np.isfinite(value)
        rows.append(row)
    notes = marks.footnotes()
    attacks = res.models.loc[models].dropna(subset=["eps"])
    if not attacks.empty:
        eps = ", ".join(f"{e:g}" for e in sorted(attacks["eps"].astype(float).unique()))
        steps = sorted(attacks["attack_steps"].dropna().astype(int).unique())
        notes.append(f"Robust accuracy under l2 PGD at eps {eps} (each model's own)"
                     + (f", {', '.join(map(str, steps))} steps." if steps else "."))
    title = (f"Alignment (%) of {regularizer} IRIs under each proxy (columns name the proxy; mean ± std over targets), "
             f"with clean and robust test accuracy (%)")
    return Table("proxies", title, pd.DataFrame(rows), 2, notes)


def _by_arch_and_regime(res: Results, part: pd.DataFrame) -> tuple[list[str], list[str], dict]:
    """Architectures, regimes and (arch, regime) -> model id of the final models in ``part``."""
    ids = [m for m in _final_models(res) if m in set(part["model_id"])]
    index = {(res.models.at[m, "arch"], res.models.at[m, "regime"]): m for m in ids}
    archs = _order([a for a, _ in index], ARCHS)
    regimes = _order([r for _, r in index], REGIMES)
    return archs, regimes, index


def architecture_loss_table(res: Results, cells: pd.DataFrame, proxy: str, *, converged_below: float) -> Table | None:
    """Rows architecture, columns training regime; reg-free 2AFC of ``proxy``."""
    part = cells[(cells["proxy"] == proxy) & (cells["regularizer"] == "reg-free") & (cells["task"] == "2afc")]
    archs, regimes, index = _by_arch_and_regime(res, part)
    if not archs:
        return None
    marks, lookup = _Marks(res.models, converged_below), _lookup(part)
    regimes = _order(regimes, ("standard", "adversarial", *REGIMES))
    frame = pd.DataFrame([{"model": arch_name(a), "proxy": proxy,
                           **{r: marks.text(lookup.get((index.get((a, r)), "reg-free", proxy, "2afc"))) for r in regimes}}
                          for a in archs])
    title = f"2AFC alignment (%) of reg-free IRIs by architecture and training regime, judged by {proxy} (mean ± std over targets)"
    return Table("architecture_loss", title, frame, 1, marks.footnotes())


def augmentation_table(res: Results, cells: pd.DataFrame, proxy: str, *, converged_below: float) -> Table | None:
    """Rows architecture, columns regimes that differ in augmentation; reg-free 2AFC and clustering of ``proxy``."""
    part = cells[(cells["proxy"] == proxy) & (cells["regularizer"] == "reg-free")]
    archs, regimes, index = _by_arch_and_regime(res, part)
    regimes = [r for r in AUGMENTATION_REGIMES if r in regimes]
    if len(regimes) < 2:
        return None
    marks, lookup = _Marks(res.models, converged_below), _lookup(part)
    rows = []
    for a in archs:
        row = {"model": arch_name(a), "proxy": proxy}
        for r in regimes:
            for task in TASKS:
                row[f"{r} {TASK_NAMES[task]}"] = marks.text(lookup.get((index.get((a, r)), "reg-free", proxy, task)))
        rows.append(row)
    title = (f"Alignment (%) of reg-free IRIs by augmentation regime (2AFC and clustering, chance 33.3%), judged by "
             f"{proxy} (mean ± std over targets)")
    return Table("augmentation", title, pd.DataFrame(rows), 1, marks.footnotes())


def simclr_checkpoints(res: Results, cells: pd.DataFrame, proxy: str, regularizer: str = "reg-free") -> pd.DataFrame:
    """The SimCLR checkpoints with ``regularizer`` IRIs scored by ``proxy``: one row per (arch, regime, epoch).

    An ``@epoch`` id gives its epoch; a final model its ``final_epoch`` (NA when
    unknown). Where a final model and an intermediate checkpoint share an
    epoch, the final model (which has the probe accuracy) is kept.

    Returns:
        columns ``arch``, ``regime``, ``epoch`` (Int64), ``final`` (bool), ``model_id``.
    """
    scored = set(cells.loc[(cells["proxy"] == proxy) & (cells["regularizer"] == regularizer), "model_id"])
    models = res.models[res.models["regime"].isin(CONTRASTIVE) & res.models.index.isin(scored)]
    rows = pd.DataFrame({"arch": models["arch"], "regime": models["regime"], "final": models["epoch"].isna(),
                         "epoch": models["epoch"].fillna(models["final_epoch"]).astype("Int64"),
                         "model_id": models.index}).reset_index(drop=True)
    rows = rows.sort_values(["arch", "regime", "epoch", "final"], na_position="last")
    duplicated = rows.duplicated(["arch", "regime", "epoch"], keep="last") & rows["epoch"].notna()
    for m in rows.loc[duplicated, "model_id"]:
        log.info("simclr epochs: %s is at the same epoch as the final model; using the final model", m)
    return rows[~duplicated].reset_index(drop=True)


def simclr_epochs_table(res: Results, cells: pd.DataFrame, proxy: str, *, converged_below: float,
                        regularizer: str = "reg-free") -> Table | None:
    """Rows (model, epoch), columns SimCLR regimes: 2AFC of ``proxy`` on ``regularizer`` IRIs and linear-probe accuracy."""
    points = simclr_checkpoints(res, cells, proxy, regularizer)
    if points.empty:
        return None
    part = cells[(cells["proxy"] == proxy) & (cells["regularizer"] == regularizer) & (cells["task"] == "2afc")]
    marks, lookup = _Marks(res.models, converged_below), _lookup(part)
    regimes = _order(points["regime"], CONTRASTIVE)
    with_probe = [r for r in regimes if res.models.loc[points.loc[points["regime"] == r, "model_id"], "probe_acc"].notna().any()]
    rows = []
    points["epoch_key"] = points["epoch"].astype("Float64").fillna(np.inf)  # an unknown final epoch sorts last
    arch_rank = {a: i for i, a in enumerate(_order(points["arch"], ARCHS))}
    for (_, arch, epoch_key), group in points.groupby([points["arch"].map(arch_rank), "arch", "epoch_key"], sort=True):
        row = {"model": arch_name(arch), "epoch": "final" if np.isinf(epoch_key) else str(int(epoch_key)), "proxy": proxy}
        by_regime = dict(zip(group["regime"], group["model_id"]))
        for r in regimes:
            row[f"{r} 2AFC"] = marks.text(lookup.get((by_regime.get(r), regularizer, proxy, "2afc")))
            if r in with_probe:
                acc = res.models.at[by_regime[r], "probe_acc"] if r in by_regime else np.nan
                row[f"{r} probe acc. (%)"] = f"{acc:.2f}" if np.isfinite(acc) else MISSING
                marks.missing |= not np.isfinite(acc)
        rows.append(row)
    frame = pd.DataFrame(rows)
    notes = marks.footnotes()
    finals = points[points["final"]]
    if not finals.empty:
        notes.append("Final models: " + "; ".join(f"{arch_name(a)} {r} at epoch {e if pd.notna(e) else '?'}"
                                                  for a, r, e in zip(finals["arch"], finals["regime"], finals["epoch"]))
                     + "; probe accuracy is the final linear probe's test accuracy.")
    title = f"2AFC alignment (%) of {regularizer} IRIs over SimCLR training epochs, judged by {proxy} (mean ± std over targets)"
    return Table("simclr_epochs", title, frame, 2, notes)


# -- figures ----------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=150)
    return path


def copy_grids(res: Results, out_dir: Path) -> list[Path]:
    """Copy every IRI set's ``grid.png`` to ``out_dir/<model_id>_<regularizer>.png``."""
    paths = []
    for model_id, regularizer, grid in res.grids:
        dst = out_dir / f"{model_id}_{regularizer}.png"
        with atomic_write(dst) as fh:
            fh.write(grid.read_bytes())
        paths.append(dst)
    return paths


def plot_alignment_by_regularizer(res: Results, cells: pd.DataFrame, proxy: str, path: Path) -> Path | None:
    """Grouped bars: one group per final model, one bar per regularizer; error bars are the bootstrap 95% interval."""
    part = cells[(cells["proxy"] == proxy) & (cells["task"] == "2afc")]
    models = [m for m in _final_models(res) if m in set(part["model_id"])]
    if not models:
        return None
    regs, lookup = _regularizers(part), _lookup(part)
    fig = Figure(figsize=(max(5.0, 1.1 * len(models) + 2), 3.8))
    ax = fig.add_subplot()
    width = 0.8 / len(regs)
    x = np.arange(len(models))
    for k, g in enumerate(regs):
        got = [lookup.get((m, g, proxy, "2afc")) for m in models]
        mean = np.array([c["mean"] if c is not None else np.nan for c in got])
        low = np.array([c["mean"] - c["ci_low"] if c is not None else np.nan for c in got])
        high = np.array([c["ci_high"] - c["mean"] if c is not None else np.nan for c in got])
        pos = x + (k - (len(regs) - 1) / 2) * width
        ax.bar(pos, mean, width, yerr=np.vstack([low, high]), capsize=2, label=g)
        for p, c in zip(pos, got):
            if c is not None and (c["n_unconverged"] > 0 or c["self_scored"]):
                marks = UNCONVERGED * (c["n_unconverged"] > 0) + SELF_SCORED * bool(c["self_scored"])
                ax.text(p, min(c["ci_high"], 100) + 1, marks, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{arch_name(res.models.at[m, 'arch'])}\n{_training_label(res.models, m)}" for m in models],
                  fontsize=7)
    ax.set_ylim(0, 108)
    ax.set_ylabel(f"2AFC alignment (%), {proxy}")
    ax.set_title(f"IRI alignment by regularizer ({proxy} 2AFC; bars: bootstrap 95% CI)", fontsize=9)
    ax.legend(fontsize=7, title="regularizer", title_fontsize=7)
    return _save(fig, path)


def proxy_rank_correlation(cells: pd.DataFrame, proxies: Sequence[str], reference: str, models: Sequence[str],
                           regularizer: str = "reg-free") -> dict[str, float]:
    """Spearman rank correlation, across ``models``, of each proxy's 2AFC with the ``reference`` proxy's.

    NaN where fewer than three models have both scores or one of them is constant.
    """
    part = cells[(cells["regularizer"] == regularizer) & (cells["task"] == "2afc")]
    wide = part.pivot_table(index="model_id", columns="proxy", values="mean").reindex(list(models))
    out = {}
    for p in proxies:
        if p not in wide.columns or reference not in wide.columns:
            continue
        ok = wide[reference].notna() & wide[p].notna()
        x, y = wide.loc[ok, reference].to_numpy(), wide.loc[ok, p].to_numpy()
        varies = len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        out[p] = float(stats.spearmanr(x, y).statistic) if varies else float("nan")
    return out


def plot_proxy_agreement(res: Results, cells: pd.DataFrame, proxies: Sequence[str], reference: str, path: Path,
                         regularizer: str = "reg-free") -> tuple[Path | None, dict[str, float]]:
    """2AFC of every final model under each proxy (models sorted by the ``reference`` proxy), with each proxy's
    Spearman correlation with the reference in the legend: do the proxies rank models alike?"""
    part = cells[(cells["regularizer"] == regularizer) & (cells["task"] == "2afc") & cells["proxy"].isin(proxies)]
    models = [m for m in _final_models(res) if m in set(part["model_id"])]
    present = [p for p in proxies if p in set(part["proxy"])]
    if not models or not present:
        return None, {}
    lookup = _lookup(part)
    ref = reference if reference in present else present[0]
    models = sorted(models, key=lambda m: lookup[(m, regularizer, ref, "2afc")]["mean"] if (m, regularizer, ref, "2afc")
                    in lookup else -1.0)
    rho = proxy_rank_correlation(cells, present, ref, models, regularizer)
    fig = Figure(figsize=(max(5.0, 0.9 * len(models) + 2), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(models))
    for p in present:
        y = [lookup[(m, regularizer, p, "2afc")]["mean"] if (m, regularizer, p, "2afc") in lookup else np.nan for m in models]
        label = p if p == ref else f"{p} (Spearman {rho.get(p, np.nan):.2f})"
        ax.plot(x, y, marker="o", lw=1, label=label)
    ax.set_xticks(x, [f"{arch_name(res.models.at[m, 'arch'])}\n{_training_label(res.models, m)}" for m in models],
                  fontsize=7)
    ax.set_ylim(-3, 103)
    ax.set_ylabel(f"2AFC alignment (%), {regularizer} IRIs")
    ax.set_title(f"Proxy agreement: models ordered by {ref}; Spearman vs {ref}", fontsize=9)
    ax.legend(fontsize=7, title="proxy", title_fontsize=7)
    return _save(fig, path), rho


def plot_simclr_epochs(res: Results, cells: pd.DataFrame, proxy: str, path: Path,
                       regularizer: str = "reg-free") -> Path | None:
    """2AFC of ``regularizer`` IRIs over SimCLR epochs, one line per (architecture, regime) with its
    bootstrap band; final probe accuracy as squares on a second axis."""
    points = simclr_checkpoints(res, cells, proxy, regularizer).dropna(subset=["epoch"])
    if points.empty:
        return None
    lookup = _lookup(cells[(cells["proxy"] == proxy) & (cells["regularizer"] == regularizer) & (cells["task"] == "2afc")])
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    probe_ax = None
    for (arch, regime), group in points.groupby(["arch", "regime"], sort=True):
        got = [lookup[(m, regularizer, proxy, "2afc")] for m in group["model_id"]]
        epochs = group["epoch"].astype(int).to_numpy()
        line, = ax.plot(epochs, [c["mean"] for c in got], marker="o", label=f"{arch_name(arch)} {regime}")
        ax.fill_between(epochs, [c["ci_low"] for c in got], [c["ci_high"] for c in got], alpha=0.2, color=line.get_color())
        probe = res.models.loc[group["model_id"], "probe_acc"].to_numpy(dtype=np.float64)
        if np.isfinite(probe).any():
            probe_ax = probe_ax or ax.twinx()
            probe_ax.plot(epochs, probe, ls="none", marker="s", color=line.get_color())
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{regularizer} 2AFC (%), {proxy}")
    ax.set_ylim(-3, 103)
    if probe_ax is not None:
        probe_ax.set_ylabel("linear-probe accuracy (%) (squares)")
        probe_ax.set_ylim(-3, 103)
    ax.set_title(f"Alignment over SimCLR training ({proxy} 2AFC; band: bootstrap 95% CI)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


# -- the report -------------------------------------------------------------------------


def build_report(results: Path, out_tables: Path, out_figures: Path, *, structural_proxy: str, proxies: list[str],
                 alpha: float = 0.05, permutations: int = 10000, bootstrap: int = 2000, seed: int = 0,
                 converged_below: float = 0.1, epochs_regularizer: str = "reg-free") -> dict:
    """Every table, figure and significance test the results folder allows.

    Args:
        results: the results root (layout in the module docstring); read only.
        out_tables: folder for the tables (created).
        out_figures: folder for the figures (created).
        structural_proxy: the proxy the single-proxy tables, figures and tests use (e.g. ``ms-ssim``, ``lpips-alex``).
        proxies: the proxies to report in the ``proxies`` table and to average over (LPIPS variants
            when any were scored).
        alpha: family-wise level of the significance tests, in (0, 1) (default 0.05).
        permutations: sign-flip resamples of the permutation tests (default 10000).
        bootstrap: bootstrap resamples of every interval (default 2000).
        seed: seed of every bootstrap and permutation (default 0).
        converged_below: an IRI with rep loss above this did not converge and marks its cells (default 0.1).
        epochs_regularizer: the regularizer of the alignment-over-SimCLR-epochs table and figure
            (``inversion.epochs_regularizer``; default ``reg-free``).

    Returns:
        ``{"tables": [...], "figures": [...], "skipped": [...], "proxy", "headline"}``:
        paths written (str), what was skipped and why, and the headline numbers:
        ``alignment`` (final model -> regularizer -> structural-proxy 2AFC %),
        ``proxy_rank_correlation`` (Spearman with the structural proxy across models)
        and ``significant`` (the comparisons significant after Holm) of ``n_tests``.

    Raises:
        FileNotFoundError: ``results`` is not a folder.
    """
    out_tables, out_figures = Path(out_tables), Path(out_figures)
    out_tables.mkdir(parents=True, exist_ok=True)
    out_figures.mkdir(parents=True, exist_ok=True)
    res = load_results(results, converged_below=converged_below)
    skipped = list(res.skipped)

    def skip(reason: str) -> None:
        skipped.append(reason)
        log.info("report: skipped %s", reason)

    cells = summarise_cells(res, bootstrap=bootstrap, seed=seed)
    available = sorted(set(cells["proxy"]))
    for p in [*proxies, structural_proxy]:
        if p not in available:
            skip(f"proxy {p}: no scores use it")
    used = averaged_proxies(available, proxies)
    over = over_proxy_cells(cells, used)
    with atomic_write(out_tables / "cells.csv", "w") as fh:
        pd.concat([cells.assign(proxies_used=cells["proxy"]), over], ignore_index=True).to_csv(fh, index=False)
    tables_written: list[Path] = [out_tables / "cells.csv"]

    kw = {"converged_below": converged_below}
    builders = [
        ("alignment_by_regularizer", lambda: alignment_by_regularizer_table(res, cells, structural_proxy, **kw),
         f"no final model scored by {structural_proxy}"),
        ("alignment_by_regularizer_over_proxies", lambda: alignment_over_proxies_table(res, over, used, **kw),
         "no final model scored by any of the proxies"),
        ("proxies", lambda: proxies_table(res, cells, proxies, **kw), "no reg-free IRI set of a final model scored by the proxies"),
        ("architecture_loss", lambda: architecture_loss_table(res, cells, structural_proxy, **kw),
         f"no reg-free IRI set of a final model scored by {structural_proxy}"),
        ("augmentation", lambda: augmentation_table(res, cells, structural_proxy, **kw),
         f"fewer than two of the regimes {', '.join(AUGMENTATION_REGIMES)} scored by {structural_proxy}"),
        ("simclr_epochs", lambda: simclr_epochs_table(res, cells, structural_proxy, regularizer=epochs_regularizer, **kw),
         f"no SimCLR model ({', '.join(CONTRASTIVE)}) with {epochs_regularizer} IRIs scored by {structural_proxy}"),
    ]
    for name, build, reason in builders:
        table = build()
        if table is None:
            skip(f"table {name}: {reason}")
        else:
            tables_written += write_table(table, out_tables)

    final = _final_models(res)
    sig_input = res.outcomes[(res.outcomes["proxy"] == structural_proxy) & res.outcomes["model_id"].isin(final)]
    sig_input = sig_input.assign(arch=sig_input["model_id"].map(res.models["arch"]),
                                 regime=sig_input["model_id"].map(res.models["regime"]),
                                 outcome=sig_input["2afc"].astype(np.float64))
    tests, not_tested = significance.run_tests(sig_input, proxy=structural_proxy, alpha=alpha, permutations=permutations,
                                               bootstrap=bootstrap, seed=seed)
    tables_written += significance.write_significance(tests, not_tested, out_tables, proxy=structural_proxy, alpha=alpha)
    skipped += [f"significance: {s}" for s in not_tested]

    figures = copy_grids(res, out_figures / "grids")
    if not figures:
        skip("grids: no IRI set has a grid.png")
    plotted = plot_alignment_by_regularizer(res, cells, structural_proxy, out_figures / "alignment_by_regularizer.png")
    if plotted is None:
        skip(f"figure alignment_by_regularizer: no final model scored by {structural_proxy}")
    agreement, rho = plot_proxy_agreement(res, cells, proxies, structural_proxy, out_figures / "proxy_agreement.png")
    if agreement is None:
        skip("figure proxy_agreement: no reg-free IRI set scored by the proxies")
    epochs = plot_simclr_epochs(res, cells, structural_proxy, out_figures / "simclr_epochs.png", epochs_regularizer)
    if epochs is None:
        skip("figure simclr_epochs: no SimCLR checkpoint with a known epoch")
    figures += [p for p in (plotted, agreement, epochs) if p is not None]

    main = cells[(cells["proxy"] == structural_proxy) & (cells["task"] == "2afc") & cells["model_id"].isin(final)]
    alignment = {m: {g: round(float(v), 2) for g, v in zip(part["regularizer"], part["mean"])}
                 for m, part in main.groupby("model_id", sort=False)}
    headline = {"alignment": {m: alignment[m] for m in final if m in alignment}, "proxy_rank_correlation": rho,
                "n_tests": int(len(tests)), "significant": tests.loc[tests["significant"].astype(bool), "comparison"].tolist()}
    log.info("report: %d tables, %d figures, %d skipped", len(tables_written), len(figures), len(skipped))
    return {"tables": [str(p) for p in tables_written], "figures": [str(p) for p in figures], "skipped": skipped,
            "proxy": structural_proxy, "headline": headline}
