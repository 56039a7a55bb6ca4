"""Training regimes of the study (protocol section 4), resumable at any epoch.

Supervised regimes (SGD, step schedule) differ only in the loss of a batch:

=====================  ===========================================================
``standard``           CE(f(aug(x)), y)
``standard-simclraug`` the same with one SimCLR view as augmentation
``adversarial``        CE(f(x*), y), x* = l2 PGD adversary of aug(x) (Madry et al.)
``adversarial-noaug``  the same without augmentation
``trades``             CE(f(x), y) + beta * KL(f(x) || f(x*))   (Zhang et al. 2019)
``mart``               boosted CE on x* + beta * KL * (1 - p_y)  (Wang et al. 2020)
=====================  ===========================================================

Contrastive regimes (``simclr``, ``simclr-nocolor``, ``simclr-adv``) train a
backbone and projection head with NT-Xent under LARS with warm-up and cosine
decay, then fit a linear probe on the frozen backbone; the probe becomes the
model's final linear layer, so every trained model is an ordinary classifier.

Determinism and resuming: every random draw of epoch ``e`` (data order,
augmentation, attack starts) comes from generators seeded by ``(seed, e)``,
and the model, optimiser and schedule are saved atomically after every epoch
(``last.pt``). A run killed at any moment restarts from the last complete
epoch and, on the CPU, ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from iri_alignment import attacks, augment, validity
from iri_alignment.checkpoints import CheckpointError, check_expected, load_checkpoint, save_checkpoint
from iri_alignment.data.loading import open_split
from iri_alignment.devices import autocast, place
from iri_alignment.io import write_json
from iri_alignment.models import build_model
from iri_alignment.params import fast_path_settings, params_hash
from iri_alignment.plan import model_id as model_name
from iri_alignment.tracking import log_metrics, set_tags, start_run

log = logging.getLogger(__name__)

SUPERVISED = ("standard", "adversarial", "adversarial-noaug", "standard-simclraug", "trades", "mart")
CONTRASTIVE = ("simclr", "simclr-nocolor", "simclr-adv")
REGIMES = SUPERVISED + CONTRASTIVE


def regime_config(params: dict, regime: str) -> dict:
    """Everything that defines how a regime trains, merged from params.

    Supervised: ``training.supervised`` overridden by ``training.regime.<regime>``.
    Contrastive: ``training.contrastive`` plus its variant under ``variant``.
    The hash of this dict (with the data and model settings) names the run.
    """
    training = params["training"]
    if regime in SUPERVISED:
        return {**training["supervised"], **training["regime"][regime]}
    if regime in CONTRASTIVE:
        contrastive = {k: v for k, v in training["contrastive"].items() if k not in ("variants", "archs")}
        return {**contrastive, "variant": training["contrastive"]["variants"][regime]}
    raise ValueError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")


def threat_eps(params: dict, regime: str) -> float:
    """The l2 radius a model is evaluated at: its own training epsilon, else
    the study's adversarial-training epsilon (so standard and AT models are
    attacked alike)."""
    cfg = regime_config(params, regime) if regime in REGIMES else {}
    attack = cfg.get("attack") or cfg.get("variant", {}).get("attack")
    return float((attack or params["training"]["regime"]["adversarial"]["attack"])["eps"])


def attack_step(attack: dict) -> float:
    """PGD step size: ``step_size`` if given, else ``step_factor * eps / steps``."""
    return attack.get("step_size") or attacks.step_size_for(attack["eps"], attack["steps"], attack.get("step_factor", 2.5))


def training_seed(params: dict, replicate: int = 0) -> int:
    """The seed of one training run: ``study.seed + training.seed_offset + replicate``
    (replicate r of ``study.replicates``)."""
    return params["study"]["seed"] + params["training"].get("seed_offset", 0) + replicate


def run_hash(params: dict, dataset: str, arch: str, regime: str, replicate: int = 0) -> str:
    """Hash of everything a trained model depends on: change any of it and
    the model is retrained rather than resumed."""
    settings = {
        "dataset": dataset, "arch": arch, "width": params["models"]["width"], "regime": regime_config(params, regime),
        "augmentation": params["data"]["augmentation"], "shapes": params["data"]["shapes"] if dataset == "shapes" else None,
        "seed": training_seed(params, replicate),
    }
    # not study.compile: it concerns the inversion, not training
    study = {k: v for k, v in fast_path_settings(params["study"]).items() if k in ("precision", "memory_format")}
    return params_hash({**settings, **study})


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for one random stream of one epoch (order, aug, attack)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


# -- one epoch -----------------------------------------------------------------------


def _clean_loss(model, x, y, cfg: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``standard`` and ``standard-simclraug``: CE(f(x), y) on the (augmented) batch itself."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def _attack_kwargs(cfg: dict, gen: torch.Generator) -> dict:
    """The l2 PGD settings of ``cfg["attack"]`` as keyword arguments of :mod:`iri_alignment.attacks`."""
    attack = cfg["attack"]
    return {"eps": attack["eps"], "steps": attack["steps"], "step_size": attack_step(attack), "generator": gen}


def _adversarial_loss(model, x, y, cfg: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``adversarial`` and ``adversarial-noaug`` (Madry et al.): CE(f(x*), y), x* the l2 PGD adversary.

    The attack runs in eval mode (BN statistics are not polluted by
    adversaries), the update in the caller's (train) mode. At radius 0 (the
    first epoch of a warm-up, :func:`warmed_up`) the adversary is the batch
    itself and no attack is run.
    """
    x_adv = x
    if cfg["attack"]["eps"] > 0:
        with attacks.eval_mode(model):
            x_adv = attacks.pgd_l2(model, x, y, random_start=cfg["attack"].get("random_start", False),
                                   **_attack_kwargs(cfg, gen))
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def _trades_loss(model, x, y, cfg: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``trades``: :func:`iri_alignment.attacks.trades_loss` with ``cfg["beta"]``; clean eval-mode logits."""
    loss = attacks.trades_loss(model, x, y, beta=cfg["beta"], **_attack_kwargs(cfg, gen))
    with torch.no_grad(), attacks.eval_mode(model):  # logits for the accuracy only
        return loss, model(x)


def _mart_loss(model, x, y, cfg: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``mart``: :func:`iri_alignment.attacks.mart_loss` with ``cfg["beta"]``; clean eval-mode logits."""
    loss = attacks.mart_loss(model, x, y, beta=cfg["beta"], **_attack_kwargs(cfg, gen))
    with torch.no_grad(), attacks.eval_mode(model):  # logits for the accuracy only
        return loss, model(x)


#: the loss of one batch for every supervised regime; the regimes differ only
#: in this (their augmentation comes from ``regime_config``'s ``augment``)
SUPERVISED_LOSSES = {
    "standard": _clean_loss,
    "standard-simclraug": _clean_loss,
    "adversarial": _adversarial_loss,
    "adversarial-noaug": _adversarial_loss,
    "trades": _trades_loss,
    "mart": _mart_loss,
}


def supervised_batch_loss(model, x, y, cfg: dict, regime: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one augmented batch and the logits it was computed from.

    Args:
        model: the classifier, in train mode.
        x: the (augmented) batch, (N, C, H, W) in [0, 1]; y: its labels, (N,).
        cfg: the regime's settings (:func:`regime_config`): ``attack`` for the
            adversarial regimes, also ``beta`` for trades and mart.
        regime: one of :data:`SUPERVISED`; chooses the loss in :data:`SUPERVISED_LOSSES`.
        gen: CPU generator of the attack's random start.

    Returns:
        ``(loss, logits)``: the scalar loss to descend and logits for the training accuracy.

    Raises:
        ValueError: ``regime`` is not a supervised regime.
    """
    try:
        loss_fn = SUPERVISED_LOSSES[regime]
    except KeyError:
        raise ValueError(f"no supervised loss for regime {regime!r}: choose one of {', '.join(SUPERVISED_LOSSES)} "
                         f"(contrastive regimes train through train_contrastive_epoch)") from None
    return loss_fn(model, x, y, cfg, gen)


def augmentation_config(params: dict, name: str) -> dict | None:
    """The settings of a named augmentation: ``standard`` reads
    ``data.augmentation``, ``simclr`` the SimCLR views."""
    return {"standard": params["data"]["augmentation"], "simclr": params["training"]["contrastive"]["views"]}.get(name)


def warmed_up(cfg: dict, epoch: int) -> dict:
    """The regime's settings for ``epoch`` (from 1) with the attack radius ramped
    up linearly over ``attack.eps_warmup_epochs = W`` epochs (0, the default: off):
    ``eps * min(1, (epoch - 1) / W)``, so epoch 1 trains on clean images and
    epoch ``W + 1`` on the full radius. The curriculum lets thin plain networks
    (VGG16 at width 0.125) learn features before the attack, instead of sitting
    at chance: a ramp that started at ``eps / W`` left the embedded AT VGG16 at
    chance for one setting out of three (docs/calibration.md)."""
    attack = cfg.get("attack")
    if not attack or not attack.get("eps_warmup_epochs"):
        return cfg
    scale = min(1.0, (epoch - 1) / attack["eps_warmup_epochs"])
    return {**cfg, "attack": {**attack, "eps": attack["eps"] * scale}}


def train_supervised_epoch(model, split, cfg, aug_cfg, regime, *, optimizer, seed, epoch, device, progress,
                           precision: str = "fp32") -> dict:
    cfg = warmed_up(cfg, epoch)
    model.train()
    order, aug_gen, attack_gen = (epoch_generator(seed, epoch, s) for s in range(3))
    total = correct = 0
    loss_sum = 0.0
    start = time.perf_counter()
    batches = split.batches(cfg["batch_size"], shuffle=True, generator=order, device=device)
    n_batches = math.ceil(len(split) / cfg["batch_size"])
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", leave=False, disable=not progress)
    for x, y in bar:
        x = augment.augment(cfg["augment"], x, aug_cfg, aug_gen)
        with autocast(device, precision):  # the attack too: its steps are normalised, so bf16 gradients do
            loss, logits = supervised_batch_loss(model, x, y, cfg, regime, attack_gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += len(y)
        correct += (logits.argmax(1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / total, "train_acc": correct / total, "images_per_s": total / seconds}


def train_contrastive_epoch(simclr_model, split, cfg, *, optimizer, scheduler, seed, epoch, device, progress,
                            precision: str = "fp32") -> dict:
    from iri_alignment import simclr

    simclr_model.train()
    order, aug_gen, attack_gen = (epoch_generator(seed, epoch, s) for s in range(3))
    variant = cfg["variant"]
    total, loss_sum = 0, 0.0
    start = time.perf_counter()
    batches = split.batches(cfg["batch_size"], shuffle=True, generator=order, device=device, drop_last=True)
    bar = tqdm(batches, total=len(split) // cfg["batch_size"], desc=f"epoch {epoch}", leave=False, disable=not progress)
    for x, _ in bar:
        v1 = augment.simclr_view(x, cfg["views"], aug_gen, color=variant.get("color", True))
        v2 = augment.simclr_view(x, cfg["views"], aug_gen, color=variant.get("color", True))
        with autocast(device, precision):
            if "attack" in variant:
                a = variant["attack"]
                v1, v2 = simclr.contrastive_adversarial_views(simclr_model, v1, v2, eps=a["eps"], steps=a["steps"],
                                                              step_size=attack_step(a), generator=attack_gen)
            z1, z2 = simclr_model(v1), simclr_model(v2)
        loss = simclr.nt_xent(z1.float(), z2.float(), cfg["temperature"])  # the loss in fp32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += len(x)
        loss_sum += loss.item() * len(x)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}")
    return {"loss": loss_sum / max(total, 1), "images_per_s": total / (time.perf_counter() - start)}


# -- evaluation ------------------------------------------------------------------------


def evaluate_classifier(model, split, *, eps: float, steps: int, step_factor: float, batch_size: int, device,
                        limit: int | None = None, progress: bool = False) -> dict:
    """Clean accuracy and robust accuracy under l2 PGD (no random start) at
    ``eps`` with ``steps`` steps of ``step_factor * eps / steps``, as fractions."""
    n = clean = robust = 0
    step_size = attacks.step_size_for(eps, steps, step_factor)
    total = len(split) if limit is None else min(limit, len(split))
    bar = tqdm(split.batches(batch_size, device=device, limit=limit), total=math.ceil(total / batch_size),
               desc="evaluate", leave=False, disable=not progress)
    for x, y in bar:
        batch = attacks.robust_accuracy(model, x, y, eps=eps, steps=steps, step_size=step_size, batch_size=len(y))
        clean += round(batch["clean_acc"] * batch["n"])
        robust += round(batch["robust_acc"] * batch["n"])
        n += batch["n"]
    return {"clean_acc": clean / n, "robust_acc": robust / n, "eps": eps, "attack_steps": steps, "n": n}


def _unmatched_classes(params: dict, model) -> str:
    """Why accuracy cannot be measured on a folder dataset (its class count is not the model's), or ""."""
    if params["data"]["dataset"] != "folder":
        return ""
    from iri_alignment.data.folder import folder_info

    n = folder_info(params)["num_classes"]
    return "" if n == model.num_classes else (f"data.folder has {n} class folders but the model has "
                                              f"{model.num_classes} classes")


def evaluate_checkpoint(params: dict, checkpoint: str | Path, *, device, attack_steps: int | None = None,
                        eps: float | None = None, limit: int | None = None, out: str | Path | None = None) -> dict:
    """``iri evaluate``: clean and robust accuracy of a checkpoint (at the
    model's own epsilon unless ``eps`` is given), as an MLflow run and JSON."""
    from iri_alignment.checkpoints import load_model

    model, ckpt = load_model(checkpoint, device=device)
    meta = ckpt.meta
    params = {**params, "data": {**params["data"], "dataset": meta["dataset"]}}
    if meta.get("external"):  # a folder dataset's images are resized to the model's input
        from iri_alignment.data.folder import with_image_size

        params = with_image_size(params, meta["resolved"]["input_size"])
    steps = attack_steps or params["evaluation"]["attack_steps"]
    replicate = meta.get("replicate", 0)
    tags = {"dataset": meta["dataset"], "arch": meta["arch"], "regime": meta["regime"], "params_hash": meta["params_hash"],
            "replicate": replicate}
    if meta.get("external"):  # where the representation was read, for comparing runs of outside models
        tags.update(external=meta["id"], source=meta["source"], layer=meta["resolved"]["layer"],
                    rep_dim=model.rep_dim)
    name = meta["id"] if meta.get("external") else model_name(meta["arch"], meta["regime"], replicate=replicate)
    with start_run(params, stage="evaluate", name=name, tags=tags,
                   log_params={"checkpoint": str(checkpoint), "attack_steps": steps, "limit": limit}):
        unmatched = _unmatched_classes(params, model)
        if unmatched:  # your own images, labelled by folder: accuracy would compare unrelated indices
            log.warning("%s; accuracy is not measured", unmatched)
            result = {"clean_acc": None, "robust_acc": None, "eps": eps or meta["eps"], "attack_steps": steps,
                      "n": 0, "note": unmatched}
        else:
            result = evaluate_classifier(model, open_split(params, "test"), eps=eps or meta["eps"], steps=steps,
                                         step_factor=params["evaluation"]["step_factor"],
                                         batch_size=params["data"]["eval_batch_size"], device=device, limit=limit,
                                         progress=True)
        log_metrics(result)
        result = {"checkpoint": str(checkpoint), "dataset": meta["dataset"], "arch": meta["arch"], "regime": meta["regime"],
                  "replicate": replicate, "width": meta["width"], **{k: v for k, v in meta["metrics"].items() if k.startswith("probe")}, **result}
        if meta.get("external"):
            result.update(external=True, id=meta["id"], source=meta["source"], norm=meta["norm"])
        result["validity"] = validity.floor_check(result, meta["regime"], params["evaluation"]["floor"])
        if unmatched:  # nothing to check against the floor; the tables say why
            result["validity"] = {**result["validity"], "passed": True, "reasons": [], "note": unmatched}
        set_tags({"validity": "passed" if result["validity"]["passed"] else "failed"})
        if not result["validity"]["passed"]:
            log.error("%s is below its accuracy floor (evaluation.floor): %s; it is not data", name,
                      ", ".join(result["validity"]["reasons"]))
    if out:
        write_json(out, result)
    return result


def fit_probe(model, cfg: dict, train_split, test_split, *, seed: int, device) -> dict:
    """Linear probe on the frozen backbone; its weights become ``model.fc``."""
    from iri_alignment import simclr

    probe = cfg["probe"]
    x_tr, y_tr = train_split.get(range(len(train_split)))
    x_te, y_te = test_split.get(range(len(test_split)))
    result = simclr.linear_probe(model, x_tr, y_tr, x_te, y_te, epochs=probe["epochs"], batch_size=probe["batch_size"],
                                 lr=probe["lr"], weight_decay=probe["weight_decay"],
                                 generator=torch.Generator().manual_seed(seed), device=device)
    with torch.no_grad():
        model.backbone.fc.weight.copy_(result["weight"])
        model.backbone.fc.bias.copy_(result["bias"])
    return {"probe_test_acc": result["test_acc"], "probe_train_acc": result["train_acc"]}


# -- the whole run --------------------------------------------------------------------


def build_optimisation(model, cfg, regime, steps_per_epoch):
    """``(trainable, optimizer, scheduler)`` of a regime: SGD with a step schedule, or LARS with
    warm-up and cosine for SimCLR (whose trainable module adds the projection head)."""
    if regime in CONTRASTIVE:
        from iri_alignment import simclr

        trainable = simclr.SimCLRModel(model, cfg["head"])
        optimizer = simclr.LARS(trainable.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        total = cfg["epochs"] * steps_per_epoch
        warm = cfg["warmup_epochs"] * steps_per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: simclr.warmup_cosine(s, total, warm))
        return trainable, optimizer, scheduler
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg["lr_step_every"], gamma=cfg["lr_gamma"])
    return model, optimizer, scheduler


def train(params: dict, *, arch: str, regime: str, out: str | Path, device: torch.device, progress: bool = True,
          restart: bool = False, evaluate: bool = True, replace_stale: bool = False, replicate: int = 0) -> dict:
    """Train one model of the study and evaluate it; return its final metrics.

    Writes into ``out``: ``last.pt`` (resumable state, every epoch),
    ``epoch-NNNN.pt`` (every ``keep_every`` epochs), ``model.pt`` (the final
    classifier) and ``metrics.json``. Rerunning the same command after an
    interruption resumes from ``last.pt``; ``restart`` discards it.
    ``evaluate`` (default True) ends with the clean and robust test accuracy;
    the pipeline turns it off and evaluates in its own stage.
    ``replace_stale`` (default False: refuse) discards a ``last.pt`` written
    under other settings; the pipeline sets it, since it reruns a job exactly
    when its settings changed. ``replicate`` r (default 0) trains with seed
    ``study.seed + training.seed_offset + r`` (:func:`training_seed`).
    ``study.precision`` chooses fp32 (the reference) or bf16 autocast for the
    training steps; evaluation always runs in fp32. ``study.memory_format``
    keeps the model contiguous (the reference) or channels_last while it trains.
    """
    dataset = params["data"]["dataset"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = regime_config(params, regime)
    seed = training_seed(params, replicate)
    precision = params["study"].get("precision", "fp32")
    memory_format = params["study"].get("memory_format", "contiguous")
    rhash = run_hash(params, dataset, arch, regime, replicate)
    meta = {"dataset": dataset, "arch": arch, "width": params["models"]["width"], "regime": regime,
            "params_hash": rhash, "profile": params["profile"], "eps": threat_eps(params, regime),
            "replicate": replicate, "seed": seed, "precision": precision}
    if memory_format != "contiguous":  # the reference's files stay as they were
        meta["memory_format"] = memory_format

    torch.manual_seed(seed)
    model = place(build_model(dataset, arch, width=params["models"]["width"]), device, memory_format, trains=True)
    train_split, test_split = open_split(params, "train"), open_split(params, "test")
    steps_per_epoch = len(train_split) // cfg["batch_size"] if regime in CONTRASTIVE else math.ceil(len(train_split) / cfg["batch_size"])
    trainable, optimizer, scheduler = build_optimisation(model, cfg, regime, max(steps_per_epoch, 1))

    start_epoch, run_id = 1, None
    last = out / "last.pt"
    if last.exists() and restart:
        last.unlink()
    ckpt = None
    if last.exists():  # read once: to replace it if stale, else to resume from it
        try:
            ckpt = load_checkpoint(last)
            if replace_stale and ckpt.meta["params_hash"] != rhash:
                log.warning("%s was trained under other settings; starting again", last)
                last.unlink()
                ckpt = None
            else:
                check_expected(ckpt.meta, last, {"params_hash": rhash, "arch": arch, "regime": regime})
        except CheckpointError as err:
            raise CheckpointError(f"cannot resume: {err}. Rerun with --restart to train from scratch.") from None
    if ckpt is not None:
        trainable.load_state_dict(ckpt.state["trainable"])
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
        start_epoch, run_id = ckpt.meta["epoch"] + 1, ckpt.state.get("mlflow_run_id")
        log.info("resuming %s from epoch %d", last, ckpt.meta["epoch"])

    eval_cfg = params["evaluation"]
    eval_kw = {"eps": meta["eps"], "steps": eval_cfg["attack_steps"], "step_factor": eval_cfg["step_factor"],
               "batch_size": params["data"]["eval_batch_size"], "device": device}
    tags = {"dataset": dataset, "arch": arch, "regime": regime, "params_hash": rhash, "replicate": replicate,
            "precision": precision, "memory_format": memory_format}
    with start_run(params, stage="train", name=model_name(arch, regime, replicate=replicate), tags=tags, run_id=run_id,
                   log_params={"dataset": dataset, "arch": arch, "width": meta["width"], "regime": regime, **cfg}) as run:
        epochs = cfg["epochs"]
        metrics = {}
        for epoch in tqdm(range(start_epoch, epochs + 1), desc=f"train {arch}-{regime}", initial=start_epoch - 1,
                          total=epochs, disable=not progress):
            torch.manual_seed(seed * 7919 + epoch)  # any layer that draws from the global RNG (dropout)
            if regime in CONTRASTIVE:
                metrics = train_contrastive_epoch(trainable, train_split, cfg, optimizer=optimizer, scheduler=scheduler,
                                                  seed=seed, epoch=epoch, device=device, progress=progress,
                                                  precision=precision)
            else:
                metrics = train_supervised_epoch(model, train_split, cfg, augmentation_config(params, cfg["augment"]), regime,
                                                 optimizer=optimizer, seed=seed, epoch=epoch, device=device, progress=progress,
                                                 precision=precision)
                scheduler.step()
                subset = eval_cfg.get("epoch_subset", 0)
                if subset:
                    quick = evaluate_classifier(model, test_split, limit=subset, **eval_kw)
                    metrics.update(clean_acc=quick["clean_acc"], robust_acc=quick["robust_acc"])
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            log_metrics(metrics, step=epoch)
            state = {"trainable": trainable.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "mlflow_run_id": run.info.run_id}
            save_checkpoint(last, model, {**meta, "epoch": epoch, "metrics": metrics}, state=state)
            if cfg.get("keep_every") and epoch % cfg["keep_every"] == 0:
                shutil.copyfile(last, out / f"epoch-{epoch:04d}.pt")
            log.info("epoch %d/%d %s", epoch, epochs, {k: round(v, 4) for k, v in metrics.items()})

        final = {}
        if regime in CONTRASTIVE:
            final.update(fit_probe(model, cfg, train_split, test_split, seed=seed, device=device))
        if evaluate:
            final.update(evaluate_classifier(model, test_split, progress=progress, **eval_kw))
        final["epochs"] = epochs
        log_metrics({f"final_{k}": v for k, v in final.items()})
        save_checkpoint(out / "model.pt", model, {**meta, "epoch": epochs, "metrics": final})
        write_json(out / "metrics.json", {**meta, **final, "mlflow_run_id": run.info.run_id})
    return final
