"""The ``iri`` command line: every stage of the study is one subcommand.

Snakemake rules and DVC stages call these commands and nothing else; run
``iri COMMAND --help`` for the options of each. Every command that reads the
study parameters takes ``--params FILE`` (default ``params.yaml``) and
``--profile NAME`` (default: the file's ``profile`` key).
"""

from __future__ import annotations

import json
import logging
import sys

import click

from iri_alignment import __version__

log = logging.getLogger("iri_alignment")


class _Group(click.Group):
    """Turns the package's own errors into one clear line and exit code 1,
    instead of a traceback; anything unexpected still shows its traceback."""

    def invoke(self, ctx):
        from iri_alignment.checkpoints import CheckpointError
        from iri_alignment.data import DatasetError
        from iri_alignment.models import ModelWeightsError
        from iri_alignment.params import ParamsError

        try:
            return super().invoke(ctx)
        except (ParamsError, DatasetError, CheckpointError, ModelWeightsError, ValueError, FileNotFoundError,
                FileExistsError) as err:
            raise click.ClickException(str(err)) from None


def params_options(func):
    func = click.option("--profile", default=None, help="Profile merged into the defaults (default: the file's `profile` key).")(func)
    func = click.option("--params", "params_file", default="params.yaml", show_default=True,
                        type=click.Path(dir_okay=False), help="Study parameters file.")(func)
    return func


def device_option(func):
    return click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda", "mps"]),
                        help="Where to compute (default: study.device from params).")(func)


def load(params_file: str, profile: str | None) -> dict:
    """The merged, validated params with the group's ``--set`` overrides applied."""
    from iri_alignment.params import load_params

    ctx = click.get_current_context(silent=True)
    overrides = ((ctx.find_root().obj or {}).get("overrides", ()) if ctx else ())
    return load_params(params_file, profile, overrides)


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iri")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--threads", default=None, type=click.IntRange(min=1), envvar="IRI_THREADS",
              help="CPU threads for torch (default: torch's choice; env IRI_THREADS). Give each parallel job its own share: "
                   "two jobs with two threads each on two cores run many times slower than with one.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one parameter after the profile is merged, e.g. --set study.seed=1 (value parsed as YAML; "
                   "repeatable; validated like the file).")
@click.pass_context
def cli(ctx: click.Context, log_level: str, threads: int | None, overrides: tuple[str, ...]) -> None:
    """iri-alignment: do a network's invariances match human perception?

    Train models, generate identically represented inputs (IRIs), score
    their alignment with perceptual proxies, and report (Nanda et al., AAAI 2023).
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ctx.obj = {"overrides": overrides}
    if threads:
        import torch

        torch.set_num_threads(threads)


# -- params -------------------------------------------------------------------------


@cli.group("params")
def params_group() -> None:
    """Validate and show the study parameters."""


@params_group.command("check")
@click.argument("file", default="params.yaml", type=click.Path(dir_okay=False))
@click.option("--profile", default=None, help="Check one profile (default: the defaults and every profile).")
def params_check(file: str, profile: str | None) -> None:
    """Validate FILE against the schema; exit non-zero naming every bad key."""
    from iri_alignment.params import check_file

    names = check_file(file, profile)
    click.echo(f"{file}: valid ({', '.join(names)})")


@params_group.command("show")
@params_options
@click.option("--key", default=None, help="Print one subtree, e.g. training.supervised.")
def params_show(params_file: str, profile: str | None, key: str | None) -> None:
    """Print the merged, validated parameters as JSON."""
    from iri_alignment.params import get

    params = load(params_file, profile)
    echo_json(get(params, key) if key else params)


@params_group.command("split")
@params_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for one JSON file per section.")
def params_split(params_file: str, profile: str | None, out: str) -> None:
    """Write each section of the merged params to OUT/<section>.json.

    DVC stages depend on these files, so a stage reruns exactly when the
    merged settings it reads change, whichever profile they came from.
    A file whose content is unchanged is not rewritten.
    """
    import json
    from pathlib import Path

    from iri_alignment.io import atomic_write

    params = load(params_file, profile)
    for section, value in params.items():
        path = Path(out) / f"{section}.json"
        text = json.dumps(value, indent=2, sort_keys=True) + "\n"
        if not path.exists() or path.read_text() != text:
            with atomic_write(path, "w") as fh:
                fh.write(text)
    click.echo(f"wrote {len(params)} sections to {out}")


# -- data ---------------------------------------------------------------------------


@cli.group("data")
def data_group() -> None:
    """Download, generate and check datasets."""


@data_group.command("prepare")
@click.option("--dataset", required=True, type=click.Choice(["cifar10", "cifar100", "imagenet", "shapes"]))
@click.option("--root", default=None, help="Data root (default data.root); for imagenet, the ImageNet folder (default data.imagenet_root).")
@click.option("--no-download", is_flag=True, help="Fail instead of downloading a missing CIFAR archive.")
@params_options
def data_prepare(dataset: str, root: str | None, no_download: bool, params_file: str, profile: str | None) -> None:
    """Make DATASET ready on disk (download and verify, or generate) and print a summary."""
    from iri_alignment.data import prepare

    cfg = load(params_file, profile)["data"]
    if dataset == "imagenet":
        summary = prepare(dataset, cfg["root"], imagenet_root=root or cfg["imagenet_root"])
    else:
        summary = prepare(dataset, root or cfg["root"], shapes=cfg["shapes"], download=not no_download)
    echo_json(summary)


# -- models -------------------------------------------------------------------------


@cli.group("models")
def models_group() -> None:
    """The model registry, and external models (models.external): fetch and inspect."""


@models_group.command("describe")
@click.option("--dataset", required=True, type=click.Choice(["cifar10", "cifar100", "imagenet", "shapes"]))
@click.option("--arch", required=True)
@click.option("--width", default=1.0, show_default=True, type=float, help="Channel multiplier (CIFAR-style models only).")
def models_describe(dataset: str, arch: str, width: float) -> None:
    """Print parameter count and representation size of a model as JSON."""
    from iri_alignment.models import describe_model

    echo_json(describe_model(dataset, arch, width=width))


@models_group.command("list")
def models_list() -> None:
    """List the architectures available per dataset family."""
    from iri_alignment.models import ARCHITECTURES

    echo_json({family: list(archs) for family, archs in ARCHITECTURES.items()})


@models_group.command("fetch")
@click.option("--id", "model_id", required=True, help="An id of models.external.")
@params_options
def models_fetch(model_id, params_file, profile) -> None:
    """Download an external model's weights.url to weights.file and verify its sha256."""
    from iri_alignment.external import find_external
    from iri_alignment.external.weights import fetch, sha256sum

    path = fetch(find_external(load(params_file, profile), model_id))
    echo_json({"id": model_id, "file": str(path), "sha256": sha256sum(path)})


@models_group.command("inspect")
@click.option("--id", "model_id", required=True, help="An id of models.external.")
@click.option("--n", "n_images", default=256, show_default=True, type=click.IntRange(min=0),
              help="Test images for top-1 accuracy (0: skip).")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Write the descriptor the DAG inverts from (results/models/<id>/external.json).")
@click.option("--fetch-missing", is_flag=True, help="Download a missing weights file from its pinned url first.")
@params_options
@device_option
def models_inspect(model_id, n_images, out, fetch_missing, params_file, profile, device) -> None:
    """Check an external model (layer, eval mode, determinism, input gradient, top-1) and print the report."""
    from pathlib import Path

    from iri_alignment.external import find_external
    from iri_alignment.external.inspection import descriptor, inspect_external
    from iri_alignment.io import write_json

    params = load(params_file, profile)
    model = find_external(params, model_id)
    if fetch_missing and model.weights and not Path(model.weights["file"]).is_file():
        from iri_alignment.external.weights import fetch

        fetch(model)
    report = inspect_external(model, params, device=_device(params, device), n=n_images)
    if out:
        write_json(out, descriptor(model, params, report))
    echo_json(report)


# -- training and evaluation ----------------------------------------------------------


def _study(params_file: str, profile: str | None, dataset: str | None = None) -> dict:
    """Load params, optionally pointing the study at another dataset."""
    from iri_alignment.params import validate

    params = load(params_file, profile)
    if dataset and dataset != params["data"]["dataset"]:
        params["data"]["dataset"] = dataset
        validate(params, source=params_file)
    return params


def _device(params: dict, device: str | None):
    from iri_alignment.devices import resolve_device

    return resolve_device(device or params["study"]["device"])


@cli.command("train")
@click.option("--dataset", default=None, help="Dataset (default data.dataset).")
@click.option("--arch", required=True, help="Architecture, e.g. resnet18 (see `iri models list`).")
@click.option("--regime", required=True, help="standard, adversarial, simclr, ... (see the README).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for checkpoints and metrics.")
@click.option("--restart", is_flag=True, help="Discard a resumable last.pt and train from scratch.")
@click.option("--replace-stale", is_flag=True, help="Discard last.pt only if it was written under other settings.")
@click.option("--evaluate/--no-evaluate", default=True, show_default=True,
              help="End with clean and robust test accuracy (the pipeline evaluates in its own stage).")
@click.option("--replicate", default=0, show_default=True, type=click.IntRange(min=0),
              help="Training replicate k: seed study.seed + training.seed_offset + k (study.replicates).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@params_options
@device_option
def train_cmd(dataset, arch, regime, out, restart, replace_stale, evaluate, replicate, no_progress, params_file, profile,
              device) -> None:
    """Train one model with the protocol's settings; resumes if interrupted."""
    from iri_alignment.training import REGIMES, train

    if regime not in REGIMES:
        raise click.BadParameter(f"{regime!r}; choose one of {', '.join(REGIMES)}", param_hint="--regime")
    params = _study(params_file, profile, dataset)
    metrics = train(params, arch=arch, regime=regime, out=out, device=_device(params, device),
                    progress=not no_progress, restart=restart, evaluate=evaluate, replace_stale=replace_stale,
                    replicate=replicate)
    echo_json(metrics)


@cli.command("evaluate")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--attack-steps", default=None, type=int, help="PGD steps (default evaluation.attack_steps).")
@click.option("--eps", default=None, type=float, help="l2 radius (default: the model's).")
@click.option("--limit", default=None, type=int, help="Evaluate on the first N test images only.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the JSON here.")
@params_options
@device_option
def evaluate_cmd(checkpoint, attack_steps, eps, limit, out, params_file, profile, device) -> None:
    """Clean and l2-PGD robust test accuracy of a checkpoint, as JSON."""
    from iri_alignment.training import evaluate_checkpoint

    params = _study(params_file, profile)
    echo_json(evaluate_checkpoint(params, checkpoint, device=_device(params, device), attack_steps=attack_steps,
                                  eps=eps, limit=limit, out=out))


@cli.command("calibrate")
@click.option("--out", default="results/calibration", show_default=True, type=click.Path(file_okay=False))
@click.option("--seeds", default=None, help="Comma-separated training seeds (default calibration.seeds).")
@click.option("--threads", "thread_counts", default=None, help="Comma-separated torch thread counts (default calibration.threads).")
@click.option("--model", "models", multiple=True, help="Only this model id, e.g. vgg16-adversarial (repeatable; default all).")
@params_options
def calibrate_cmd(out, seeds, thread_counts, models, params_file, profile) -> None:
    """Train every model of the profile per seed and thread count and check it
    against calibration.targets; print the table, exit 1 if any run misses."""
    from pathlib import Path

    from iri_alignment.calibration import calibrate

    params = _study(params_file, profile)
    ints = lambda text: [int(v) for v in text.split(",")] if text else None  # noqa: E731
    overrides = click.get_current_context().find_root().obj["overrides"]
    result = calibrate(params, params_file=params_file, out=out, seeds=ints(seeds), threads=ints(thread_counts),
                       models=list(models) or None, overrides=overrides)
    click.echo(Path(result["table"]).read_text())
    if not result["passed"]:
        raise click.ClickException("calibration missed its targets:\n  " + "\n  ".join(result["missed"]))


# -- IRIs and alignment -----------------------------------------------------------------


@cli.command("invert")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--regularizer", required=True, type=click.Choice(["reg-free", "human-aligned", "adversarial", "freq", "fourier"]))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the IRI set.")
@click.option("--targets", default=None, help="Comma-separated dataset indices (default: inversion.targets from params).")
@click.option("--seed-type", default=None, type=click.Choice(["noise", "light-noise", "white", "black"]),
              help="Starting image (default inversion.seed_type).")
@click.option("--iterations", default=None, type=int, help="Steps (default inversion.iterations).")
@click.option("--no-progress", is_flag=True)
@params_options
@device_option
def invert_cmd(checkpoint, regularizer, out, targets, seed_type, iterations, no_progress, params_file, profile, device) -> None:
    """Generate one IRI per target for a model under a regularizer; resumes if interrupted."""
    from iri_alignment.generation import generate

    params = _study(params_file, profile)
    indices = [int(t) for t in targets.split(",")] if targets else None
    summary = generate(params, checkpoint=checkpoint, regularizer=regularizer, out=out, device=_device(params, device),
                       seed_type=seed_type, iterations=iterations, target_indices=indices, progress=not no_progress)
    echo_json(summary)


@cli.command("score")
@click.option("--iris", required=True, type=click.Path(file_okay=False, exists=True), help="An IRI set folder.")
@click.option("--proxy", "proxies", multiple=True, help="Perceptual proxy; repeat for several (default scoring.proxies).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Per-IRI CSV; the summary goes beside it as .json.")
@params_options
@device_option
def score_cmd(iris, proxies, out, params_file, profile, device) -> None:
    """Score an IRI set with 2AFC and clustering under perceptual proxies."""
    from iri_alignment.alignment import score

    params = _study(params_file, profile)
    summary = score(params, iris=iris, proxies=list(proxies) or params["scoring"]["proxies"], out=out,
                    device=_device(params, device))
    echo_json({"proxies": {p: {t: round(v[t]["mean"], 2) for t in ("2afc", "clustering")} for p, v in summary["proxies"].items()},
               "over_proxies": summary["over_proxies"]})


@cli.command("export-human")
@click.option("--iris", required=True, type=click.Path(file_okay=False, exists=True), help="An IRI set folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@params_options
def export_human_cmd(iris, out, params_file, profile) -> None:
    """Write the 2AFC and clustering trials a human study would show."""
    from iri_alignment.alignment import export_human

    echo_json(export_human(_study(params_file, profile), iris=iris, out=out))


# -- the robust-features experiments -----------------------------------------------------


@cli.group("features")
def features_group() -> None:
    """The robust-features experiments of the source talk: non-robust features, saliency,
    representation distance, counterfactuals (README "Robust features")."""


def _features_run(params, name: str, tags: dict, fn):
    from iri_alignment.plan import features_hash
    from iri_alignment.tracking import log_metrics, start_run

    section = "nonrobust" if name.startswith("nonrobust") else name
    tags = {"dataset": params["data"]["dataset"], "arch": params["features"]["arch"] if section == "nonrobust" else
            ",".join(params["models"]["archs"]), "regime": "standard" if section == "nonrobust" else "standard,adversarial",
            "params_hash": features_hash(params, section), "experiment": name, **tags}
    with start_run(params, stage="features", name=name, tags=tags, log_params=params["features"]):
        result = fn()
        flat = {k: v for k, v in result.items() if isinstance(v, (int, float))}
        for row in result.get("comparisons", []):
            key = "-".join(str(row[k]) for k in ("arch", "metric") if k in row)
            flat.update({f"{key}-p_holm": row["p_holm"], **{f"{key}-{k}": row[k] for k in row
                                                           if k.startswith(("median", "agreement", "difference"))}})
        log_metrics(flat)
    return result


@features_group.command("nonrobust")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False, exists=True),
              help="The standard source model (variant plain).")
@click.option("--kind", required=True, type=click.Choice(["det", "rand"]))
@click.option("--variant", default="plain", show_default=True, type=click.Choice(["plain", "pattern"]),
              help="pattern: the positive control (a class-keyed pattern; its source model is trained here).")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@params_options
@device_option
def features_nonrobust(checkpoint, kind, variant, out, params_file, profile, device) -> None:
    """Build D_det or D_rand and its noise control, train a fresh model on each, test on the original test set."""
    from iri_alignment.features.runs import run_nonrobust

    if variant == "plain" and checkpoint is None:
        raise click.BadParameter("variant plain attacks a trained standard model: give --checkpoint", param_hint="--checkpoint")
    params = _study(params_file, profile)
    echo_json(_features_run(params, f"nonrobust-{variant}-{kind}", {"kind": kind, "variant": variant},
                            lambda: run_nonrobust(params, checkpoint, kind=kind, variant=variant, out=out,
                                                  device=_device(params, device))))


def _models_command(name: str, doc: str, run: str, out_help: str):
    @features_group.command(name, help=doc)
    @click.option("--checkpoint", "checkpoints", multiple=True, required=True,
                  type=click.Path(dir_okay=False, exists=True), help="A model; repeat (standard and AT of each arch).")
    @click.option("--out", required=True, type=click.Path(), help=out_help)
    @params_options
    @device_option
    def command(checkpoints, out, params_file, profile, device) -> None:
        from iri_alignment.features import runs

        params = _study(params_file, profile)
        echo_json(_features_run(params, name, {}, lambda: getattr(runs, run)(params, list(checkpoints), out,
                                                                             _device(params, device))))

    return command


_models_command("saliency", "Input-gradient saliency of each model, measured (mask energy, AUROC, cosine); AT vs standard.",
                "run_saliency", "Folder for saliency.csv, saliency_compare.csv, saliency.png.")
_models_command("repdistance", "How often each model finds x closer to an imperceptible x + d than to another class's image.",
                "run_repdistance", "Folder for repdistance.csv and repdistance_compare.csv.")
_models_command("counterfactual", "The figure: each image with its top contributing features enhanced.",
                "run_counterfactual", "The figure (.png).")


@features_group.command("tables")
@click.option("--features", "features_dir", default="results/features", show_default=True,
              type=click.Path(file_okay=False, exists=True))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Default: FEATURES/tables.")
def features_tables(features_dir, out) -> None:
    """The experiments' tables (CSV, Markdown, LaTeX)."""
    from pathlib import Path

    from iri_alignment.features.runs import write_tables

    for path in write_tables(features_dir, out or Path(features_dir) / "tables"):
        if path.suffix == ".md":
            click.echo(path.read_text())


# -- the human study ---------------------------------------------------------------------


@cli.group("survey")
def survey_group() -> None:
    """The human study: build a jsPsych study from IRI sets, serve it, export it to JATOS, analyse answers."""


@survey_group.command("build")
@click.option("--iris", "iris", multiple=True, required=True, type=click.Path(file_okay=False, exists=True),
              help="An IRI set folder (results/iris/<model>/<regularizer>); repeat for several.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The study folder (replaced).")
@params_options
def survey_build(iris, out, params_file, profile) -> None:
    """Build a self-contained study folder (page, jsPsych, images, balanced lists) from IRI sets."""
    from iri_alignment.survey.build import build_study

    summary = build_study(list(iris), out, load(params_file, profile))
    echo_json({k: v for k, v in summary.items() if k not in ("survey", "sources")})
    click.echo(f"serve it: iri survey serve --study {out}    (or for JATOS: iri survey jatos --study {out} --out study.jzip)")


@survey_group.command("serve")
@click.option("--study", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep 127.0.0.1 unless behind a proxy).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="SQLite file for the answers (default STUDY/responses.db).")
def survey_serve(study, host, port, db) -> None:
    """Serve the study; answers are stored per trial as they are given."""
    from iri_alignment.survey.server import serve

    serve(study, host=host, port=port, db=db)


@survey_group.command("jatos")
@click.option("--study", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .jzip to write.")
def survey_jatos(study, out) -> None:
    """Write the study as a JATOS study archive (.jzip) to import into JATOS."""
    from iri_alignment.survey.jatos import build_jzip

    echo_json(build_jzip(study, out))


@survey_group.command("analyze")
@click.option("--responses", required=True, type=click.Path(dir_okay=False, exists=True),
              help="The server's SQLite file, its CSV export, or JATOS results (.txt or .zip).")
@click.option("--study", required=True, type=click.Path(file_okay=False, exists=True), help="The study folder the answers belong to.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--scores", default=None, type=click.Path(file_okay=False, exists=True),
              help="results/scores, for the proxies' agreement with the raters.")
@click.option("--results", default=None, type=click.Path(file_okay=False, exists=True), help="results/, for accuracies.")
@click.option("--proxy", default=None, help="The proxy of the paper-layout table (default scoring.structural_proxy).")
@params_options
def survey_analyze(responses, study, out, scores, results, proxy, params_file, profile) -> None:
    """Exclusions, human alignment per model (mean ± std over raters, bootstrap CI), reliability, humans vs proxies."""
    from pathlib import Path

    from iri_alignment.survey.analysis import analyze
    from iri_alignment.survey.build import read_summary
    from iri_alignment.tracking import log_artifact, log_metrics, start_run

    params = load(params_file, profile)
    read_summary(study)  # a wrong --study fails here, before an MLflow run is opened
    with start_run(params, stage="survey", name="human-study", tags={"study": str(study)},
                   log_params={"responses": str(responses)}):
        summary = analyze(responses, study, out, scores=scores, results=results,
                          proxy=proxy or params["scoring"]["structural_proxy"],
                          bootstrap=params["report"]["significance"]["bootstrap"], seed=params["study"]["seed"])
        log_metrics({f"excluded_{k}": v for k, v in summary["exclusions"].items()} | {"raters": summary["raters"]})
        for name in ("human_alignment.md", "human_by_set.csv", "human_reliability.csv", "human_vs_proxy.csv"):
            log_artifact(Path(out) / name)
    click.echo(Path(out, "human_alignment.md").read_text())
    echo_json(summary["exclusions"])


# -- report and tracking ----------------------------------------------------------------


@cli.command("report")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, exists=True))
@params_options
def report_cmd(results, params_file, profile) -> None:
    """Tables (CSV, Markdown, LaTeX), figures and significance tests from every score."""
    from pathlib import Path

    from iri_alignment.io import write_json
    from iri_alignment.plan import inversion_jobs
    from iri_alignment.provenance import machine
    from iri_alignment.reporting import build_report
    from iri_alignment.reporting.results import unplanned_sets

    params = _study(params_file, profile)
    sig = params["report"]["significance"]
    unplanned = unplanned_sets(results, inversion_jobs(params))
    if unplanned:
        log.warning("%s holds %d scored IRI set(s) that profile %s does not plan (another profile's run, or by hand), "
                    "and reports them too: %s. Keep each profile's run apart with snakemake --config results=DIR.",
                    results, len(unplanned), params["profile"], ", ".join(unplanned[:8]) + (" ..." if len(unplanned) > 8 else ""))
    summary = build_report(Path(results), Path(results) / "tables", Path(results) / "figures",
                           structural_proxy=params["scoring"]["structural_proxy"], proxies=params["scoring"]["proxies"],
                           alpha=sig["alpha"], permutations=sig["permutations"], bootstrap=sig["bootstrap"],
                           seed=params["study"]["seed"], converged_below=params["inversion"]["converged_below"],
                           epochs_regularizer=params["inversion"]["epochs_regularizer"],
                           floors=params["evaluation"]["floor"], machine=machine(), profile=params["profile"])
    write_json(Path(results) / "tables" / "summary.json", {**summary, "unplanned_sets": unplanned})
    click.echo(f"tables: {Path(results, 'tables').resolve()}\nfigures: {Path(results, 'figures').resolve()}")
    if summary["failed"]:
        from iri_alignment.validity import failure_line

        log.error(failure_line(summary["failed"]))


@cli.command("diagnose")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Folder (default RESULTS/diagnostics).")
@click.option("--proxy", "proxy_name", default=None, help="Proxy of the clustering column (default scoring.structural_proxy).")
@click.option("--blur", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Gaussian sigma (pixels) on the grey levels before the edge and polarity columns; 0 = none.")
@params_options
@device_option
def diagnose_cmd(results, out, proxy_name, blur, params_file, profile, device) -> None:
    """Why clustering is what it is: seed-as-query, mean-colour and edge clustering, polarity
    (diagnostics/clustering.{md,json,csv}; see iri_alignment.diagnostics)."""
    from pathlib import Path

    from iri_alignment.diagnostics import write_diagnostics

    params = _study(params_file, profile)
    out = Path(out) if out else Path(results) / "diagnostics"
    write_diagnostics(results, out, proxy_name or params["scoring"]["structural_proxy"],
                      bootstrap=params["report"]["significance"]["bootstrap"], seed=params["study"]["seed"],
                      blur=blur, device=_device(params, device))
    click.echo((out / "clustering.md").read_text())


@cli.command("validity")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False))
@params_options
def validity_cmd(results, params_file, profile) -> None:
    """Exit 1, naming each model below its accuracy floor, unless report.allow_failed
    (reads the report's tables/validity.json; the pipeline's last step)."""
    from pathlib import Path

    from iri_alignment.io import read_json
    from iri_alignment.validity import failure_line

    params = _study(params_file, profile)
    path = Path(results) / "tables" / "validity.json"
    if not path.is_file():
        raise click.ClickException(f"{path} does not exist: run `iri report --results {results}` first")
    validity = read_json(path)
    if not validity["models"]:
        raise click.ClickException(f"{path} lists no model: nothing was evaluated, so nothing passed its floor; "
                                   "run the study (snakemake) before judging it")
    failed = validity["failed"]
    if failed and not params["report"].get("allow_failed", False):
        raise click.ClickException(failure_line(failed))
    if failed:
        log.warning("report.allow_failed is set; accepted although below the floor: %s", ", ".join(sorted(failed)))
    click.echo(f"validity: {'accepted with failures' if failed else 'every model above its floor'}")


@cli.command("timings")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False, exists=True))
@click.option("--cores", default=None, type=int, help="Cores the DAG ran on (default: this machine's).")
@click.option("--threads", "threads_per_job", default=1, show_default=True, type=int,
              help="Torch threads per job (the Snakefile's config threads_per_job), for the machine line.")
@click.option("--forked", is_flag=True,
              help="The jobs ran in a fork server (`iri workers run`): their CPU time was not measured.")
def timings_cmd(results, cores, threads_per_job, forked) -> None:
    """Where the last DAG run's time went, per stage (results/benchmarks -> tables/timings.md)."""
    from pathlib import Path

    from iri_alignment.provenance import machine
    from iri_alignment.timings import write_timings

    write_timings(Path(results) / "benchmarks", Path(results) / "tables", cores=cores,
                  machine=machine(threads=threads_per_job), forked=forked)
    click.echo(Path(results, "tables", "timings.md").read_text())


@cli.command("readme")
@click.option("--readme", default="README.md", show_default=True, type=click.Path(dir_okay=False, exists=True))
def readme_cmd(readme) -> None:
    """Fill the README's generated blocks from the files they name (results tables, calibration)."""
    from iri_alignment.readme import fill

    filled, missing = fill(readme)
    click.echo(f"{readme}: filled {', '.join(filled) or 'no generated block'}")
    for path in missing:
        log.warning("%s does not exist, its block is left as it was: `make demo` writes the tables, "
                    "`make calibrate` the calibration", path)


@cli.group("tracking")
def tracking_group() -> None:
    """MLflow parent runs for pipeline invocations."""


@tracking_group.command("start")
@click.option("--name", default="pipeline", show_default=True)
@params_options
def tracking_start(name, params_file, profile) -> None:
    """Open a parent run and print its id (export it as IRI_PARENT_RUN_ID)."""
    from iri_alignment.tracking import start_parent

    click.echo(start_parent(_study(params_file, profile), name))


@tracking_group.command("finish")
@click.option("--run-id", required=True)
@click.option("--status", default="FINISHED", type=click.Choice(["FINISHED", "FAILED", "KILLED"]))
@click.option("--artifacts", multiple=True, type=click.Path(), help="Files or folders to attach (missing ones are skipped).")
@params_options
def tracking_finish(run_id, status, artifacts, params_file, profile) -> None:
    """Close a parent run, attaching the report."""
    from iri_alignment.tracking import finish_parent

    finish_parent(run_id, status, artifacts)


# -- workers ----------------------------------------------------------------------------


@cli.group("workers")
def workers_group() -> None:
    """Run many short `iri` jobs with one start-up (the fork server)."""


@workers_group.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def workers_run(command: tuple[str, ...]) -> None:
    """Run COMMAND (for example `-- snakemake --cores all`) with a fork server for its `iri` jobs.

    The server imports torch, MLflow and the package once; every `iri` that COMMAND starts
    forks from it instead of starting from nothing (5.6-8.3 s against 0.4-0.6 s per job, measured on 2 cores).
    The exit status is COMMAND's.
    """
    from iri_alignment.forkserver import run_with_server

    sys.exit(run_with_server(list(command)))


def _terminate(signum, frame):
    # Snakemake and schedulers stop jobs with SIGTERM: unwind normally so that
    # temporary files are removed and the MLflow run is marked FAILED.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """The console-script entry point (``argv``: given by the fork server's children)."""
    import signal

    if argv is None:
        from iri_alignment.forkserver import delegate

        argv = sys.argv[1:]
        status = delegate(argv)
        if status is not None:
            sys.exit(status)
    signal.signal(signal.SIGTERM, _terminate)
    cli(args=argv, prog_name="iri")


if __name__ == "__main__":
    main()
