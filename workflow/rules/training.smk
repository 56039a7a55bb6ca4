# Training (protocol 4) and evaluation: one job per (architecture, regime).
# A job reruns when its regime's settings change (params.hash), and resumes
# from results/models/<model>/last.pt if it was interrupted.


from iri_alignment.training import CONTRASTIVE, SUPERVISED

KEPT = plan.kept_epochs(PARAMS, PARAMS["training"]["contrastive_regimes"][0]) if PARAMS["training"]["contrastive_regimes"] else []


rule train:
    input:
        data_inputs(),
    output:
        model=f"{RESULTS}/models/{{arch}}-{{regime}}/model.pt",
        metrics=f"{RESULTS}/models/{{arch}}-{{regime}}/metrics.json",
    wildcard_constraints:
        regime="|".join(SUPERVISED),
    log:
        f"{RESULTS}/models/{{arch}}-{{regime}}/train.log",
    params:
        study=STUDY,
        hash=lambda wc: plan.train_hash(PARAMS, wc.arch, wc.regime),
        out=lambda wc, output: os.path.dirname(output.model),
    threads: THREADS
    priority: lambda wc: plan.training_priority(PARAMS, wc.regime)  # before anything downstream, longest first
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "iri --threads {threads} train --arch {wildcards.arch} --regime {wildcards.regime} --out {params.out} --no-evaluate --replace-stale"
        " --no-progress {params.study} > {log} 2>&1"


# SimCLR also keeps a checkpoint every training.contrastive.keep_every epochs.
use rule train as train_contrastive with:
    output:
        model=f"{RESULTS}/models/{{arch}}-{{regime}}/model.pt",
        metrics=f"{RESULTS}/models/{{arch}}-{{regime}}/metrics.json",
        kept=[f"{RESULTS}/models/{{arch}}-{{regime}}/epoch-{e:04d}.pt" for e in KEPT],
    wildcard_constraints:
        regime="|".join(CONTRASTIVE),


rule evaluate:
    input:
        f"{RESULTS}/models/{{model}}/model.pt",
    output:
        f"{RESULTS}/evaluation/{{model}}.json",
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


rule train_all:
    input:
        expand(f"{RESULTS}/models/{{model}}/model.pt", model=MODELS),


rule evaluate_all:
    input:
        expand(f"{RESULTS}/evaluation/{{model}}.json", model=MODELS),
