"""``make bench`` / ``python -m iri_alignment.bench``: parse the arguments, run every
measurement they ask for, print the markdown report and write its JSON."""

from __future__ import annotations

import argparse
import logging
import time

import torch

from iri_alignment.bench.race import GAIN, LEVERS, error_text, matmul_peaks
from iri_alignment.bench.report import machine, markdown, paper_cost, summary
from iri_alignment.bench.stages import bench_inversion, bench_scoring, bench_training
from iri_alignment.bench.startup import bench_startup
from iri_alignment.devices import PRECISIONS, resolve_device
from iri_alignment.params import load_params


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a thread count >= 1")
    return value


def main(argv=None) -> dict:
    from iri_alignment import bench  # the package docstring is the command's description

    parser = argparse.ArgumentParser(prog="python -m iri_alignment.bench", description=bench.__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=None, help="model width (default: the profile's)")
    parser.add_argument("--archs", default=None, help="default: the profile's models.archs")
    parser.add_argument("--regimes", default=None, help="default: the profile's supervised training.regimes")
    parser.add_argument("--proxies", default=None, help="default: the profile's scoring.proxies")
    parser.add_argument("--batches", type=int, default=2, help="training batches per timed run")
    parser.add_argument("--iterations", type=int, default=10, help="inversion steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (medians) after one warm-up")
    parser.add_argument("--threads", type=_positive, default=None,
                        help="torch threads (default: torch's); the DAG runs 1 per job")
    parser.add_argument("--precisions", default="fp32,bf16", help=f"of {','.join(PRECISIONS)}; fp32 is the reference")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"of {','.join(LEVERS)} ('' for none)")
    parser.add_argument("--compile-training", action="store_true",
                        help="also torch.compile training (minutes of compile on CPU)")
    parser.add_argument("--replicates", type=int, default=None, help="models stacked by the batch and vmap levers "
                                                                      "(default: the profile's study.replicates)")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the matmul that measures the peaks")
    parser.add_argument("--no-startup", action="store_true", help="skip the process start-up measurement")
    parser.add_argument("--startup-repeats", type=int, default=3, help="start-up: median of this many processes")
    parser.add_argument("--no-dag", action="store_true", help="skip counting the DAG's jobs (snakemake -n)")
    parser.add_argument("--out", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("iri_alignment.inversion").setLevel(logging.WARNING)  # one line per timed call otherwise

    precisions = tuple(p for p in args.precisions.split(",") if p)
    levers = tuple(lv for lv in args.levers.split(",") if lv)
    unknown = [p for p in precisions if p not in PRECISIONS] + [lv for lv in levers if lv not in LEVERS]
    if unknown:
        parser.error(f"unknown precision or lever: {', '.join(unknown)}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args, precisions, levers)
    finally:
        torch.set_num_threads(threads)  # main() is also called in-process (tests)
    print(markdown(report))  # noqa: T201 -- the report is this command's output
    if args.out:
        from iri_alignment.io import write_json

        write_json(args.out, report)
    return report


def run(args: argparse.Namespace, precisions: tuple[str, ...], levers: tuple[str, ...]) -> dict:
    """Every measurement :func:`main`'s arguments ask for, as the report dict."""
    params = load_params(args.params, args.profile)
    if args.width:
        params["models"]["width"] = args.width
    replicates = args.replicates or params["study"].get("replicates", 1)
    device = resolve_device(args.device)
    archs = args.archs.split(",") if args.archs else list(params["models"]["archs"])
    regimes = args.regimes.split(",") if args.regimes else [r for r in params["training"]["regimes"]]
    proxies = args.proxies.split(",") if args.proxies else list(params["scoring"]["proxies"])
    started = time.perf_counter()
    peaks = matmul_peaks(device, size=args.peak_size)
    training = bench_training(params, archs, regimes, batches=args.batches, repeats=args.repeats, device=device,
                              peaks=peaks, precisions=precisions, levers=levers, compile_training=args.compile_training)
    inversion = bench_inversion(params, archs, iterations=args.iterations, repeats=args.repeats, device=device,
                                peaks=peaks, precisions=precisions, levers=levers, replicates=replicates)
    scoring = bench_scoring(proxies, pairs=256, repeats=args.repeats, device=device, peaks=peaks)
    report = {"machine": machine(device), "profile": args.profile, "width": params["models"]["width"],
              "gain_threshold": GAIN, "peaks": peaks,
              "training": summary(training, ("arch", "regime"), "images_per_s"),
              "inversion": summary(inversion, ("arch",), "image_iterations_per_s"),
              "scoring": scoring,
              "variants": {"training": training, "inversion": inversion, "scoring": scoring}}
    if not args.no_startup:
        report["startup"] = bench_startup(repeats=args.startup_repeats, profile=args.profile, dag=not args.no_dag)
    speed = {(r["arch"], r["regime"]): r["images_per_s_fp32"] for r in report["training"]}
    report["adversarial_cost_ratio"] = {a: speed[(a, "standard")] / speed[(a, "adversarial")] for a in archs
                                        if (a, "standard") in speed and (a, "adversarial") in speed}
    fp32_view = {"training": [{**r, "images_per_s": r["images_per_s_fp32"]} for r in report["training"]],
                 "inversion": [{**r, "image_iterations_per_s": r["image_iterations_per_s_fp32"]}
                               for r in report["inversion"]]}
    try:
        paper = load_params(args.params, "paper")
        report["paper_cost_hours"] = paper_cost(report, paper)
        report["paper_cost_hours_fp32"] = paper_cost(fp32_view, paper)
    except Exception as err:  # noqa: BLE001 -- an add-on: the measurements stand without it
        report["paper_cost_hours"] = report["paper_cost_hours_fp32"] = None
        report["paper_cost_error"] = error_text(err)
    report["seconds"] = time.perf_counter() - started
    return report
