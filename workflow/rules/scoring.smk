# Alignment scoring (protocol 6): every IRI set under every proxy of
# scoring.proxies, 2AFC and clustering, per-IRI CSV plus a JSON summary.


rule score:
    input:
        f"{RESULTS}/iris/{{model}}/{{regularizer}}/meta.json",
    output:
        csv=f"{RESULTS}/scores/{{model}}/{{regularizer}}.csv",
        summary=f"{RESULTS}/scores/{{model}}/{{regularizer}}.json",
    benchmark:
        f"{RESULTS}/benchmarks/score/{{model}}-{{regularizer}}.tsv",
    log:
        f"{RESULTS}/scores/{{model}}/{{regularizer}}.log",
    params:
        study=STUDY,
        hash=plan.scoring_hash(PARAMS),
        iris=lambda wc, input: os.path.dirname(input[0]),
    threads: THREADS
    conda:
        ENV
    shell:
        "iri --threads {threads} score --iris {params.iris} --out {output.csv} {params.study} > {log} 2>&1"


rule score_all:
    input:
        [f"{RESULTS}/scores/{m}/{r}.json" for m, r in INVERSIONS],
