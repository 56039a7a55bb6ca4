# Tables, figures and significance tests (protocol 7) from every score and
# evaluation; the MLflow parent run of this invocation gets them as artifacts.


rule report:
    input:
        scores=rules.score_all.input,
        evaluation=rules.evaluate_all.input,
    output:
        significance=f"{RESULTS}/tables/significance.csv",
        summary=f"{RESULTS}/tables/summary.json",
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
