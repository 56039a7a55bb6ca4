# Tables, figures and significance tests (protocol 7) from every score and
# evaluation; the MLflow parent run of this invocation gets them as artifacts.


rule report:
    input:
        scores=rules.score_all.input,
        evaluation=rules.evaluate_all.input,
    output:
        significance=f"{RESULTS}/tables/significance.csv",
        summary=f"{RESULTS}/tables/summary.json",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv",
    log:
        f"{RESULTS}/logs/report.log",
    params:
        study=STUDY,
        results=lambda wc, output: os.path.dirname(os.path.dirname(output.significance)),
        hash=plan.report_hash(PARAMS),
    threads: 1
    conda:
        ENV
    shell:
        "iri --threads {threads} report --results {params.results} {params.study} > {log} 2>&1"


# The run's verdict (protocol 9): fails, naming each model below its accuracy
# floor, unless report.allow_failed. Its own rule, so the report's tables stay.
rule validity:
    input:
        rules.report.output.summary,
    output:
        f"{RESULTS}/logs/validity.txt",
    benchmark:
        f"{RESULTS}/benchmarks/validity/validity.tsv",
    params:
        study=STUDY,
        results=lambda wc, input: os.path.dirname(os.path.dirname(input[0])),
        allow=PARAMS["report"].get("allow_failed", False),
    threads: 1
    conda:
        ENV
    shell:
        "iri validity --results {params.results} {params.study} > {output}"


# Why clustering is what it is (iri_alignment.diagnostics): seed-as-query,
# mean-colour and edge clustering, and contrast polarity of every scored set.
# A diagnosis beside the report: no table or test of the study reads it.
rule diagnostics:
    input:
        rules.score_all.input,
    output:
        f"{RESULTS}/diagnostics/clustering.md",
    benchmark:
        f"{RESULTS}/benchmarks/diagnostics/diagnostics.tsv",
    log:
        f"{RESULTS}/logs/diagnostics.log",
    params:
        study=STUDY,
        results=lambda wc, output: os.path.dirname(os.path.dirname(output[0])),
    threads: 1
    conda:
        ENV
    shell:
        "iri --threads {threads} diagnose --results {params.results} {params.study} > {log} 2>&1"
