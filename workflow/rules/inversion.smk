# IRI generation (protocol 5): one IRI set per (model, regularizer), plus the
# kept SimCLR checkpoints under reg-free. meta.json is written last, so its
# presence means the set is complete; an interrupted set resumes.


rule invert:
    input:
        checkpoint_of,
    output:
        f"{RESULTS}/iris/{{model}}/{{regularizer}}/meta.json",
    benchmark:
        f"{RESULTS}/benchmarks/invert/{{model}}-{{regularizer}}.tsv",
    log:
        f"{RESULTS}/iris/{{model}}/{{regularizer}}.log",
    params:
        study=STUDY,
        hash=lambda wc: plan.inversion_hash(PARAMS, wc.regularizer),
        out=lambda wc, output: os.path.dirname(output[0]),
    threads: THREADS
    priority: lambda wc: plan.inversion_priority(PARAMS, wc.regularizer)
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "iri --threads {threads} invert --checkpoint {input} --regularizer {wildcards.regularizer} --out {params.out}"
        " --no-progress {params.study} > {log} 2>&1"


rule invert_all:
    input:
        [f"{RESULTS}/iris/{m}/{r}/meta.json" for m, r in INVERSIONS],
