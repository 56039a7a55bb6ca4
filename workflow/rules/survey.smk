# The human study (protocol 10): the DAG builds the study folder from the IRI
# sets of survey.regularizers (final models, replicate 0); `make demo` prints how
# to serve it. Once answers are collected and survey.responses names them, the
# human tables (the paper's HUMAN / PROXY columns) join the report.

SURVEY_SETS = plan.survey_sets(PARAMS)
RESPONSES = PARAMS["survey"].get("responses")


rule survey:
    input:
        [f"{RESULTS}/iris/{m}/{r}/meta.json" for m, r in SURVEY_SETS],
    output:
        f"{RESULTS}/survey/study.json",
    benchmark:
        f"{RESULTS}/benchmarks/survey/survey.tsv",
    log:
        f"{RESULTS}/logs/survey.log",
    params:
        study=STUDY,
        hash=plan.survey_hash(PARAMS),
        iris=lambda wc, input: " ".join(f"--iris {os.path.dirname(p)}" for p in input),
        out=lambda wc, output: os.path.dirname(output[0]),
    threads: 1
    conda:
        ENV
    shell:
        "iri survey build {params.iris} --out {params.out} {params.study} > {log} 2>&1"


rule human:
    input:
        responses=RESPONSES or [],
        study=rules.survey.output,
        scores=rules.score_all.input,
        evaluation=rules.evaluate_all.input,
    output:
        f"{RESULTS}/tables/human_alignment.md",
        f"{RESULTS}/tables/human_vs_proxy.csv",
    log:
        f"{RESULTS}/logs/human.log",
    params:
        study=STUDY,
        results=RESULTS,
    threads: 1
    conda:
        ENV
    shell:
        "iri survey analyze --responses {input.responses} --study {params.results}/survey --out {params.results}/tables"
        " --scores {params.results}/scores --results {params.results} {params.study} > {log} 2>&1"
