"""The report's tables: display frames with marks and footnotes, written as CSV, Markdown and LaTeX."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from iri_alignment.io import atomic_write
from iri_alignment.reporting.cells import cell_lookup
from iri_alignment.reporting.layout import (
    ARCHS,
    AUGMENTATION_REGIMES,
    CONTRASTIVE,
    FAILED,
    MISSING,
    NULL_TASKS,
    REGIMES,
    SELF_SCORED,
    TASK_NAMES,
    TASKS,
    UNCONVERGED,
    failed,
    final_models,
    model_label,
    order,
    regularizer_order,
    training_label,
)
from iri_alignment.reporting.results import Results
from iri_alignment.significance import arch_name

log = logging.getLogger(__name__)

NULL_NOTE = ("2AFC null: the same 2AFC with a target of another class (the clustering candidates) in place of the "
             "own target. A smooth image is closer to any target than to a noise seed, so the margin (2AFC - null, "
             "in points) is the part of 2AFC that is specific to the own target; chance of clustering is 33.3%.")


class _Marks:
    """Formats cells and remembers which marks a table used, for its footnotes."""

    def __init__(self, models: pd.DataFrame, converged_below: float):
        self.models = models
        self.converged_below = converged_below
        self.unconverged: dict[tuple[str, str], tuple[int, int]] = {}
        self.self_scored: set[tuple[str, str]] = set()
        self.failed: set[str] = set()
        self.missing = False
        self.replicated = False

    def text(self, cell: pd.Series | None) -> str:
        """``"mean ± std (n=..)"`` plus marks; ``–`` for no cell."""
        if cell is None:
            self.missing = True
            return MISSING
        std = f" ± {cell['std']:.2f}" if np.isfinite(cell["std"]) else ""
        runs = ""
        if np.isfinite(cell.get("replicate_std", np.nan)):
            self.replicated = True
            runs = f", {int(cell['replicates'])} runs ± {cell['replicate_std']:.2f}"
        text = f"{cell['mean']:.2f}{std} (n={int(cell['n'])}{runs})"
        key = (cell["model_id"], cell["regularizer"])
        if cell["n_unconverged"] > 0:
            self.unconverged[key] = (int(cell["n_unconverged"]), int(cell["n_iris"]))
            text += UNCONVERGED
        if cell["self_scored"]:
            self.self_scored.add(key)
            text += SELF_SCORED
        if failed(self.models, cell["model_id"]):
            self.failed.add(cell["model_id"])
            text += FAILED
        return text

    def footnotes(self) -> list[str]:
        notes = []
        if self.unconverged:
            listed = "; ".join(f"{model_label(self.models, m)} {g}: {k} of {n}"
                               for (m, g), (k, n) in sorted(self.unconverged.items()))
            notes.append(f"{UNCONVERGED} IRIs that did not converge (rep loss > {self.converged_below:g}): {listed}.")
        if self.self_scored:
            listed = "; ".join(f"{model_label(self.models, m)} {g}" for m, g in sorted(self.self_scored))
            notes.append(f"{SELF_SCORED} Scored by the proxy these IRIs were optimised against (a biased judge): {listed}.")
        if self.failed:
            listed = "; ".join(f"{model_label(self.models, m)}: {self.models.at[m, 'below_floor']}" for m in sorted(self.failed))
            notes.append(f"{FAILED} FAILED: below its accuracy floor (evaluation.floor), so not data; left out of the "
                         f"significance tests and the directions: {listed}.")
        if self.replicated:
            notes.append("With training replicates, mean ± std and n are over every target of every replicate; "
                         "\"k runs ± s\" is the std over the k replicates' own means (the spread between training runs).")
        if self.missing:
            notes.append(f"{MISSING} no data.")
        return notes



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


def alignment_by_regularizer_table(res: Results, cells: pd.DataFrame, proxy: str, *, converged_below: float) -> Table | None:
    """Table 1 layout: rows (training, model), columns regularizers; 2AFC of ``proxy``, mean ± std over targets."""
    part = cells[(cells["proxy"] == proxy) & (cells["task"] == "2afc")]
    models = [m for m in final_models(res) if m in set(part["model_id"])]
    if not models:
        return None
    marks, lookup = _Marks(res.models, converged_below), cell_lookup(cells[cells["proxy"] == proxy])
    regs = regularizer_order(part)
    rows = []
    for m in models:
        row = {"training": training_label(res.models, m), "model": arch_name(res.models.at[m, "arch"]), "proxy": proxy}
        for g in regs:
            row[g] = marks.text(lookup.get((m, g, proxy, "2afc")))
            for task in NULL_TASKS:
                if (m, g, proxy, task) in lookup:
                    row[f"{g} {TASK_NAMES[task].removeprefix('2AFC ')}"] = marks.text(lookup[(m, g, proxy, task)])
        rows.append(row)
    notes = marks.footnotes()
    if any(task in set(cells["task"]) for task in NULL_TASKS):
        notes.append(NULL_NOTE)
    title = (f"2AFC alignment (%) of IRIs by regularizer, judged by {proxy}: mean ± std over targets (n = targets), "
             f"with its wrong-target null and the margin 2AFC - null")
    return Table("alignment_by_regularizer", title, pd.DataFrame(rows), 2, notes)


def alignment_over_proxies_table(res: Results, over: pd.DataFrame, used: Sequence[str], *,
                                 converged_below: float) -> Table | None:
    """Table 1 as the paper computes it: 2AFC mean ± std over proxies (n = proxies)."""
    part = over[over["task"] == "2afc"]
    models = [m for m in final_models(res) if m in set(part["model_id"])]
    if not models:
        return None
    marks, lookup = _Marks(res.models, converged_below), cell_lookup(part)
    regs = regularizer_order(part)
    label = "mean over " + ", ".join(used)
    frame = pd.DataFrame([{"training": training_label(res.models, m), "model": arch_name(res.models.at[m, "arch"]),
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
    models = [m for m in final_models(res) if m in set(part["model_id"])]
    if not present or not models:
        return None
    marks, lookup = _Marks(res.models, converged_below), cell_lookup(part)
    rows = []
    for m in models:
        row = {"training": training_label(res.models, m), "model": arch_name(res.models.at[m, "arch"])}
        for task in (TASKS[0], *NULL_TASKS, *TASKS[1:]):
            for p in present:
                if task in NULL_TASKS and (m, regularizer, p, task) not in lookup:
                    continue  # scored before the null existed
                row[f"{TASK_NAMES[task]} {p}"] = marks.text(lookup.get((m, regularizer, p, task)))
        for key, name in (("clean_acc", "clean acc. (%)"), ("robust_acc", "robust acc. (%)")):
            value = res.models.at[m, key]
            row[name] = f"{value:.2f}" if np.isfinite(value) else MISSING
            marks.missing |= not np.isfinite(value)
        rows.append(row)
    notes = marks.footnotes()
    if any(task in set(part["task"]) for task in NULL_TASKS):
        notes.append(NULL_NOTE)
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
    ids = [m for m in final_models(res) if m in set(part["model_id"])]
    external = res.models["external"] if "external" in res.models.columns else pd.Series(False, index=res.models.index)
    index = {}
    for m in sorted(ids, key=lambda m: bool(external.get(m, False))):  # a trained model keeps its cell
        index.setdefault((res.models.at[m, "arch"], res.models.at[m, "regime"]), m)
    archs = order([a for a, _ in index], ARCHS)
    regimes = order([r for _, r in index], REGIMES)
    return archs, regimes, index


def architecture_loss_table(res: Results, cells: pd.DataFrame, proxy: str, *, converged_below: float) -> Table | None:
    """Rows architecture, columns training regime; reg-free 2AFC of ``proxy``."""
    part = cells[(cells["proxy"] == proxy) & (cells["regularizer"] == "reg-free") & (cells["task"] == "2afc")]
    archs, regimes, index = _by_arch_and_regime(res, part)
    if not archs:
        return None
    marks, lookup = _Marks(res.models, converged_below), cell_lookup(part)
    regimes = order(regimes, ("standard", "adversarial", *REGIMES))
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
    marks, lookup = _Marks(res.models, converged_below), cell_lookup(part)
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
    marks, lookup = _Marks(res.models, converged_below), cell_lookup(part)
    regimes = order(points["regime"], CONTRASTIVE)
    with_probe = [r for r in regimes if res.models.loc[points.loc[points["regime"] == r, "model_id"], "probe_acc"].notna().any()]
    rows = []
    points["epoch_key"] = points["epoch"].astype("Float64").fillna(np.inf)  # an unknown final epoch sorts last
    arch_rank = {a: i for i, a in enumerate(order(points["arch"], ARCHS))}
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


