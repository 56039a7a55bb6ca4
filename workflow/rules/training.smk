# Training (protocol 4) and evaluation: one job per (architecture, regime,
# replicate); replicate k >= 1 of study.replicates is <arch>-<regime>-r<k>.
# A job reruns when its settings change (params.hash), and resumes from
# results/models/<model>/last.pt if it was interrupted.


from iri_alignment.training import CONTRASTIVE, SUPERVISED

KEPT = plan.kept_epochs(PARAMS, PARAMS["training"]["contrastive_regimes"][0]) if PARAMS["training"]["contrastive_regimes"] else []


def _train_args(wc):
    arch, regime, _ = plan.parse_model_id(wc.model)
    return f"--arch {arch} --regime {regime} --replicate {plan.replicate_of(wc.model)}"


def _train_hash(wc):
    arch, regime, _ = plan.parse_model_id(wc.model)
    return plan.train_hash(PARAMS, arch, regime, plan.replicate_of(wc.model))


def _train_priority(wc):
    return plan.training_priority(PARAMS, plan.parse_model_id(wc.model)[1])


rule train:
    input:
        data_inputs(),
    output:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        metrics=f"{RESULTS}/models/{{model}}/metrics.json",
    wildcard_constraints:
        model=plan.model_pattern(SUPERVISED),
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}.tsv",
    log:
        f"{RESULTS}/models/{{model}}/train.log",
    params:
        study=STUDY,
        job=_train_args,
        hash=_train_hash,
        out=lambda wc, output: os.path.dirname(output.model),
    threads: THREADS
    priority: _train_priority  # before anything downstream, longest first
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "iri --threads {threads} train {params.job} --out {params.out} --no-evaluate --replace-stale"
        " --no-progress {params.study} > {log} 2>&1"


# SimCLR also keeps a checkpoint every training.contrastive.keep_every epochs.
use rule train as train_contrastive with:
    output:
        model=f"{RESULTS}/models/{{model}}/model.pt",
        metrics=f"{RESULTS}/models/{{model}}/metrics.json",
        kept=[f"{RESULTS}/models/{{model}}/epoch-{e:04d}.pt" for e in KEPT],
    wildcard_constraints:
        model=plan.model_pattern(CONTRASTIVE),


rule evaluate:
    input:
        checkpoint_of,
    output:
        f"{RESULTS}/evaluation/{{model}}.json",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}.tsv",
    log:
        f"{RESULTS}/evaluation/{{model}}.log",
    params:
        study=STUDY,
        hash=plan.evaluation_hash(PARAMS),
    threads: THREADS
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "iri --threads {threads} evaluate --checkpoint {input} --out {output} {params.study} > {log} 2>&1"


rule train_all:  # every model ready to invert: trained, or an external one inspected
    input:
        expand(f"{RESULTS}/models/{{model}}/model.pt", model=MODELS),
        expand(f"{RESULTS}/models/{{model}}/external.json", model=EXTERNAL),


rule evaluate_all:
    input:
        expand(f"{RESULTS}/evaluation/{{model}}.json", model=MODELS + EXTERNAL),
