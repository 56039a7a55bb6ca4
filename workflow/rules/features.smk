# The robust-features experiments of the source talk (protocol 11) on the models
# trained above (replicate 0): non-robust features (D_det, D_rand, their noise
# controls, and the positive-control pattern variant), saliency, representation
# distance, the counterfactual figure; then their tables.

FEATURE_MODELS = plan.feature_models(PARAMS)
NONROBUST = plan.nonrobust_jobs(PARAMS)
FEATURE_CHECKPOINTS = " ".join(f"--checkpoint {plan.checkpoint_path(RESULTS, m)}" for m in FEATURE_MODELS)
FEATURES = f"{RESULTS}/features"


def _nonrobust_source(wc):
    if wc.variant == "plain":
        return [str(plan.checkpoint_path(RESULTS, plan.model_id(PARAMS["features"]["arch"], "standard")))]
    return data_inputs()


rule features_nonrobust:
    input:
        _nonrobust_source,
    output:
        f"{FEATURES}/nonrobust/{{variant}}-{{kind}}.json",
    wildcard_constraints:
        variant="plain|pattern",
        kind="det|rand",
    benchmark:
        f"{RESULTS}/benchmarks/features/nonrobust-{{variant}}-{{kind}}.tsv",
    log:
        f"{FEATURES}/nonrobust/{{variant}}-{{kind}}.log",
    params:
        study=STUDY,
        hash=plan.features_hash(PARAMS, "nonrobust"),
        source=lambda wc, input: f"--checkpoint {input[0]}" if wc.variant == "plain" else "",
    threads: THREADS
    resources:
        gpu=1,
    conda:
        ENV
    shell:
        "iri --threads {threads} features nonrobust --kind {wildcards.kind} --variant {wildcards.variant} {params.source}"
        " --out {FEATURES}/nonrobust {params.study} > {log} 2>&1"


for _name, _outputs in (("saliency", ["saliency_compare.csv", "saliency.png"]),
                        ("repdistance", ["repdistance_compare.csv"]),
                        ("counterfactual", ["counterfactual.png"])):

    rule:
        name:
            f"features_{_name}"
        input:
            [str(plan.checkpoint_path(RESULTS, m)) for m in FEATURE_MODELS],
        output:
            [f"{FEATURES}/{o}" for o in _outputs],
        benchmark:
            f"{RESULTS}/benchmarks/features/{_name}.tsv"
        log:
            f"{FEATURES}/{_name}.log",
        params:
            study=STUDY,
            hash=plan.features_hash(PARAMS, _name),
            name=_name,
            out=f"{FEATURES}/counterfactual.png" if _name == "counterfactual" else FEATURES,
        threads: THREADS
        resources:
            gpu=1,
        conda:
            ENV
        shell:
            "iri --threads {threads} features {params.name} {FEATURE_CHECKPOINTS} --out {params.out} {params.study}"
            " > {log} 2>&1"


rule features_tables:
    input:
        [f"{FEATURES}/nonrobust/{v}-{k}.json" for v, k in NONROBUST],
        rules.features_saliency.output if FEATURE_MODELS else [],
        rules.features_repdistance.output if FEATURE_MODELS else [],
        rules.features_counterfactual.output if FEATURE_MODELS else [],
    output:
        f"{FEATURES}/tables/done.txt",
    params:
        features=FEATURES,
    threads: 1
    conda:
        ENV
    shell:
        "iri features tables --features {params.features} > {output}"
