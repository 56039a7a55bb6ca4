"""Throughput benchmarks (``make bench``): what the study costs on this machine.

Measures, on synthetic 32 px batches with the embedded profile's model width
(override with ``--width``):

- training images/s per architecture and regime (one optimiser step per
  batch, augmentation and attack included), and the cost ratio of
  adversarial to standard training;
- inversion image-iterations/s per architecture (reg-free objective, the
  profile's inversion batch size);
- scoring pairs/s per proxy (LPIPS with a random trunk costs the same as
  with the ImageNet one).

Each number is the median of ``--repeats`` timed runs after one warm-up. The
report names the machine (CPU count, torch threads, device, versions) since
the numbers mean nothing without it. Results go to stdout and, with
``--out``, to a JSON file.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time

import torch

from iri_alignment import augment
from iri_alignment.devices import resolve_device
from iri_alignment.inversion import invert, make_seed
from iri_alignment.models import build_model
from iri_alignment.params import inversion_iterations, load_params
from iri_alignment.proxies import get_proxy, paired
from iri_alignment.regularizers import make_objective
from iri_alignment.training import augmentation_config, regime_config, supervised_batch_loss

log = logging.getLogger(__name__)


def _timed(fn, repeats: int, device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_training(params, archs, regimes, *, batches: int, repeats: int, device) -> list[dict]:
    rows = []
    bs = params["training"]["supervised"]["batch_size"]
    for arch in archs:
        for regime in regimes:
            cfg = regime_config(params, regime)
            model = build_model("shapes", arch, width=params["models"]["width"]).to(device).train()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(bs, 3, 32, 32, device=device)
            y = torch.randint(0, 10, (bs,), device=device)
            aug = augmentation_config(params, cfg["augment"])

            def step():
                for _ in range(batches):
                    xb = augment.augment(cfg["augment"], x, aug, gen)
                    loss, _ = supervised_batch_loss(model, xb, y, cfg, regime, gen)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

            seconds = _timed(step, repeats, device)
            rows.append({"arch": arch, "regime": regime, "batch_size": bs, "images_per_s": batches * bs / seconds})
            log.info("train %s %s: %.0f images/s", arch, regime, rows[-1]["images_per_s"])
    return rows


def bench_inversion(params, archs, *, iterations: int, repeats: int, device) -> list[dict]:
    rows = []
    bs = params["inversion"]["batch_size"]
    for arch in archs:
        model = build_model("shapes", arch, width=params["models"]["width"]).to(device).eval()
        targets = torch.rand(bs, 3, 32, 32, device=device)
        seed = make_seed("noise", (3, 32, 32), 0, device=device)
        objective = make_objective("reg-free", None)
        seconds = _timed(lambda: invert(model, targets, seed, objective, iterations=iterations, progress=False), repeats, device)
        rows.append({"arch": arch, "batch_size": bs, "image_iterations_per_s": bs * iterations / seconds})
        log.info("invert %s: %.0f image-iterations/s", arch, rows[-1]["image_iterations_per_s"])
    return rows


def bench_scoring(proxies, *, pairs: int, repeats: int, device) -> list[dict]:
    rows = []
    x, y = torch.rand(pairs, 3, 32, 32, device=device), torch.rand(pairs, 3, 32, 32, device=device)
    for name in proxies:
        proxy = get_proxy(name, device=device, pretrained=False)
        seconds = _timed(lambda: paired(proxy, x, y), repeats, device)
        rows.append({"proxy": name, "pairs_per_s": pairs / seconds})
        log.info("score %s: %.0f pairs/s", name, rows[-1]["pairs_per_s"])
    return rows


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
    reg_free = inversion_iterations(paper, "reg-free")  # kept SimCLR checkpoints: reg-free only
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
            for _ in t["contrastive_regimes"]:
                hours["train"] += c["epochs"] * n_train * 2 / train_speed[(arch, "standard")] / 3600
                kept = c["epochs"] // c["keep_every"] if c.get("keep_every") else 1
                hours["invert"] += (steps_all + kept * reg_free) * n_targets / inv_speed[arch] / 3600
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
            "torchvision": torchvision.__version__}


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']['cpu_count']} CPUs, {report['machine']['torch_threads']} torch threads, "
             f"device {report['machine']['device']} {report['machine']['gpu'] or ''}, torch {report['machine']['torch']}", ""]
    lines += ["| arch | regime | batch | train images/s |", "|---|---|---|---|"]
    lines += [f"| {r['arch']} | {r['regime']} | {r['batch_size']} | {r['images_per_s']:.0f} |" for r in report["training"]]
    lines += ["", "| arch | AT / standard cost |", "|---|---|"]
    lines += [f"| {a} | {v:.2f}x |" for a, v in report["adversarial_cost_ratio"].items()]
    lines += ["", "| arch | inversion batch | image-iterations/s |", "|---|---|---|"]
    lines += [f"| {r['arch']} | {r['batch_size']} | {r['image_iterations_per_s']:.0f} |" for r in report["inversion"]]
    lines += ["", "| proxy | pairs/s |", "|---|---|"]
    lines += [f"| {r['proxy']} | {r['pairs_per_s']:.0f} |" for r in report["scoring"]]
    cost = report["paper_cost_hours"]
    lines += ["", f"Paper study at these speeds (width {report['width']}, {report['machine']['device']}): "
              f"{cost['total']} device-hours (train {cost['train']}, evaluate {cost['evaluate']}, invert {cost['invert']})."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=None, help="model width (default: the profile's)")
    parser.add_argument("--archs", default="resnet18,vgg16,densenet121,inceptionv3")
    parser.add_argument("--regimes", default="standard,adversarial,trades")
    parser.add_argument("--proxies", default="l2,ssim,ms-ssim,lpips-alex,lpips-vgg")
    parser.add_argument("--batches", type=int, default=3, help="training batches per timed run")
    parser.add_argument("--iterations", type=int, default=20, help="inversion steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    params = load_params(args.params, args.profile)
    if args.width:
        params["models"]["width"] = args.width
    device = resolve_device(args.device)
    archs, regimes = args.archs.split(","), args.regimes.split(",")
    report = {"machine": machine(device), "profile": args.profile, "width": params["models"]["width"],
              "training": bench_training(params, archs, regimes, batches=args.batches, repeats=args.repeats, device=device),
              "inversion": bench_inversion(params, archs, iterations=args.iterations, repeats=args.repeats, device=device),
              "scoring": bench_scoring(args.proxies.split(","), pairs=256, repeats=args.repeats, device=device)}
    speed = {(r["arch"], r["regime"]): r["images_per_s"] for r in report["training"]}
    report["adversarial_cost_ratio"] = {a: speed[(a, "standard")] / speed[(a, "adversarial")] for a in archs
                                        if (a, "standard") in speed and (a, "adversarial") in speed}
    report["paper_cost_hours"] = paper_cost(report, load_params(args.params, "paper"))
    print(markdown(report))  # noqa: T201 -- the report is this command's output
    if args.out:
        from iri_alignment.io import write_json

        write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
