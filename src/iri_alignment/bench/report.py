"""The bench's report: the kept rate per group, the paper study's cost at those rates,
the machine it was measured on, and the markdown tables ``make bench`` prints."""

from __future__ import annotations

import platform

import torch

from iri_alignment.bench.race import GAIN, REFERENCE
from iri_alignment.bench.startup import JOB_IMPORTS
from iri_alignment.devices import bf16_native
from iri_alignment.params import inversion_iterations
from iri_alignment.plan import kept_epochs


def summary(rows: list[dict], keys: tuple[str, ...], rate_key: str) -> list[dict]:
    """Per group (``keys``), the fp32 eager and the kept rate: the rows ``paper_cost`` reads."""
    out = []
    for r in rows:
        if r["variant"] == REFERENCE and r["phase"] == 1:
            group = [g for g in rows if all(g[k] == r[k] for k in keys)]
            kept = next(g for g in group if g["kept"])
            out.append({**{k: r[k] for k in keys}, "batch_size": kept["batch_size"], rate_key: kept["rate"],
                        f"{rate_key}_fp32": r["rate"], "kept": kept["variant"], "kept_ratio": kept["ratio"]})
    return out


def paper_cost(report: dict, paper: dict) -> dict:
    """Hours the paper study would take at the measured throughput.

    Work model (image passes, forward + backward): supervised training
    ``epochs x n_train`` per model, times ``steps + 1`` for PGD adversarial
    training; SimCLR ``epochs x n_train x 2`` views; evaluation
    ``n_test x (attack_steps + 1)``; inversion ``targets x iterations`` per
    IRI set. Throughputs measured at another width or on another device
    scale this linearly, so run ``make bench`` on the GPU you will use,
    with ``--width 1``, for a real estimate.
    """
    t, inv = paper["training"], paper["inversion"]
    n_train, n_test = 50_000, 10_000
    train_speed = {(r["arch"], r["regime"]): r["images_per_s"] for r in report["training"]}
    inv_speed = {r["arch"]: r["image_iterations_per_s"] for r in report["inversion"]}
    hours: dict[str, float] = {"train": 0.0, "evaluate": 0.0, "invert": 0.0}
    n_targets = inv["targets"]["per_class"] * 10
    steps_all = sum(inversion_iterations(paper, r) for r in inv["regularizers"])  # per target, all regularizers
    epoch_steps = inversion_iterations(paper, inv["epochs_regularizer"])  # kept SimCLR checkpoints: that regularizer only
    for arch in paper["models"]["archs"]:
        std = train_speed.get((arch, "standard"))
        if not std or arch not in inv_speed:
            continue
        for regime in t["regimes"]:
            steps = t["regime"][regime].get("attack", {}).get("steps", 0)
            hours["train"] += t["supervised"]["epochs"] * n_train * (steps + 1) / std / 3600
            hours["evaluate"] += n_test * (paper["evaluation"]["attack_steps"] + 1) / (3 * std) / 3600
            hours["invert"] += steps_all * n_targets / inv_speed[arch] / 3600
    c = t["contrastive"]
    for arch in c["archs"]:
        if (arch, "standard") in train_speed and arch in inv_speed:
            for regime in t["contrastive_regimes"]:
                hours["train"] += c["epochs"] * n_train * 2 / train_speed[(arch, "standard")] / 3600
                kept = len(kept_epochs(paper, regime))  # the last epoch is the final model's set, counted in steps_all
                hours["invert"] += (steps_all + kept * epoch_steps) * n_targets / inv_speed[arch] / 3600
    hours["total"] = sum(hours.values())
    return {k: round(v, 1) for k, v in hours.items()}


def machine(device) -> dict:
    """:func:`iri_alignment.provenance.machine` (CPU model, cores, threads, torch, commit) plus what the
    bench adds: the platform, the device measured and torchvision's version."""
    import torchvision

    from iri_alignment.provenance import machine as provenance_machine

    info = provenance_machine()
    return {**info, "platform": platform.platform(), "processor": info["cpu"], "cpu_count": info["cores"],
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torchvision": torchvision.__version__, "bf16_native": bf16_native(device)}


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _note(r: dict) -> str:
    notes = []
    if r.get("error"):
        notes.append("failed: " + r["error"].replace("|", "/")[:110])
    if r.get("compile_s") is not None:
        notes.append(f"compile {r['compile_s']:.1f} s")
    if r.get("phase", 1) > 1:
        notes.append("ratio vs fp32 eager of round 2")
    if r.get("probe"):
        notes.append("probe, not kept")
    if r.get("stage") == "scoring":
        err = r.get("bf16_max_abs_error")
        notes.append(f"bf16 would err by up to {err:.2g}" if err else "bf16 not applicable")
    return "; ".join(notes)


def stage_table(rows: list[dict], keys: tuple[str, ...]) -> list[str]:
    head = [*keys, "variant", "batch", f"{rows[0]['unit'] if rows else 'rate'}", "ratio vs fp32 eager", "GFLOP/s",
            "% fp32 peak", "% bf16 peak", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [*(str(r[k]) for k in keys), ("**" + r["variant"] + "**") if r["kept"] else r["variant"],
                 _fmt(r["batch_size"], "d"), _fmt(r["rate"], ",.0f"),
                 _fmt(r["ratio"], ".2f") + ("x" if r["ratio"] else ""),
                 _fmt(r["gflops"], ".1f"), _fmt(r["pct_fp32_peak"], ".1f"), _fmt(r["pct_bf16_peak"], ".1f"), _note(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in rows:
        if r["kept"]:
            lines.append(f"- kept, {' '.join(str(r[k]) for k in keys)}: {r['variant']} ({r['ratio']:.2f}x fp32 eager)")
    return lines


def markdown(report: dict) -> str:
    m, peaks = report["machine"], report["peaks"]
    lines = [f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, "
             f"device {m['device']}"
             f"{' ' + m['gpu'] if m['gpu'] else ''}, bf16 native: {'yes' if m['bf16_native'] else 'no'}, "
             f"torch {m['torch']}, commit {str(m['git_commit'])[:12]}; "
             f"profile {report['profile']}, width {report['width']}.",
             "",
             f"Matmul peaks ({peaks['size']}x{peaks['size']}): fp32 {peaks['fp32']:.1f} GFLOP/s, "
             f"bf16 {peaks['bf16']:.1f} GFLOP/s"
             f"{'' if peaks.get('bf16_native', True) else ' (emulated: not a ceiling, so no % of it is given)'}. "
             f"Bold: the kept path (fastest, and at least {GAIN:.2f}x fp32 eager).",
             "", "### Training", ""]
    lines += stage_table(report["variants"]["training"], ("arch", "regime"))
    lines += ["", "| arch | AT / standard cost (fp32 eager) |", "|---|---|"]
    lines += [f"| {a} | {v:.2f}x |" for a, v in report["adversarial_cost_ratio"].items()]
    lines += ["", "### Inversion", ""]
    lines += stage_table(report["variants"]["inversion"], ("arch",))
    lines += ["", "### Scoring", ""]
    lines += stage_table(report["variants"]["scoring"], ("proxy",))
    lines += ["", "Scoring stays fp32: SSIM's local variances E[x^2] - E[x]^2 cancel catastrophically in bf16 "
              "(8-bit mantissa); the note gives the error bf16 autocast would cause."]
    st = report.get("startup")
    if st:
        secs = st["seconds"]
        lines += ["", "### Process start-up", ""]
        lines += [f"- `{label}`: {_fmt(s, '.2f')} s" for label, s in secs.items()]
        job = st.get("job")
        if job:
            lines.append(f"- a job that only starts (`{job['command']}`: torch, MLflow and its store, one run): "
                         f"{job['own_process_s']:.2f} s as its own process, {job['forked_s']:.2f} s forked from "
                         f"`iri workers run`'s server ({job['ratio']:.1f}x)")
        if st.get("dag_jobs"):
            per_job = job["own_process_s"] if job else (secs.get(JOB_IMPORTS) or 0)
            saved = f", of which forking saves ~{st['dag_jobs'] * (per_job - job['forked_s']) / 60:.1f}" if job else ""
            lines.append(f"- {report['profile']} DAG: {st['dag_jobs']} jobs, each its own process that imports torch: "
                         f"~{st['dag_jobs'] * per_job / 60:.1f} min of start-up in total{saved} "
                         "(start-up time x jobs)")
    cost, cost32 = report["paper_cost_hours"], report["paper_cost_hours_fp32"]
    if cost is None:
        return "\n".join([*lines, "", f"Paper study cost not computed: {report.get('paper_cost_error')}"])
    lines += ["", f"Paper study at these speeds (width {report['width']}, {m['device']}): kept paths "
              f"{cost['total']} device-hours (train {cost['train']}, evaluate {cost['evaluate']}, "
              f"invert {cost['invert']}); "
              f"fp32 eager {cost32['total']}."]
    return "\n".join(lines)
