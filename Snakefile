"""The iri-alignment study as one DAG (protocol sections 2-7).

    data -> train -> evaluate -> invert -> score -> report
                  \-> features (non-robust features, saliency, representation distance, counterfactuals)
                                      \-> survey (the human study's page)

Every rule calls the `iri` command line; the study's parameters come from
params.yaml (validated in workflow/rules/common.smk). Choose a profile with
`--config profile=embedded`; results go to results/<stage>/...

    snakemake --cores all                                   # the paper study (GPU box)
    snakemake --cores 2 --config profile=embedded           # the CPU demo (`make demo`)
    snakemake --profile workflow/profiles/slurm             # a SLURM cluster
"""

from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/inversion.smk"
include: "workflow/rules/scoring.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/survey.smk"
include: "workflow/rules/features.smk"


rule all:
    default_target: True
    input:
        rules.validity.output,
        rules.diagnostics.output,
        rules.survey.output,
        rules.human.output if RESPONSES else [],
        rules.features_tables.output if FEATURE_MODELS or NONROBUST else [],
