# External models (models.external): no training job. Each is fetched if its
# file is missing and a url is pinned, then inspected (layer, eval mode,
# determinism, input gradient, top-1); the inspection writes the descriptor
# that evaluate and invert load in place of a checkpoint. A new pinned sha256
# or another dataset reruns it (params.hash).


rule inspect_external:
    output:
        f"{RESULTS}/models/{{model}}/external.json",
    wildcard_constraints:
        model="|".join(EXTERNAL) or "(?!)",  # no external model: the rule matches nothing
    benchmark:
        f"{RESULTS}/benchmarks/inspect_external/{{model}}.tsv",
    log:
        f"{RESULTS}/models/{{model}}/inspect.log",
    params:
        study=STUDY,
        hash=lambda wc: plan.external_hash(PARAMS, wc.model),
    threads: THREADS
    priority: 60  # before any training job: it fails fast on a missing file or a bad layer
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "iri --threads {threads} models inspect --id {wildcards.model} --fetch-missing --out {output}"
        " {params.study} > {log} 2>&1"
