# Parameters (validated once, here), the layout of results/, and the pieces
# every rule shares. The lists of jobs come from iri_alignment.plan, which the
# package's tests cover; nothing here decides anything about the study.
import os

from iri_alignment import plan
from iri_alignment.params import load_params


PARAMS_FILE = config.get("params", "params.yaml")
PARAMS = load_params(PARAMS_FILE, config.get("profile"))  # exits with the bad key named
PROFILE = PARAMS["profile"]
RESULTS = config.get("results", "results")
THREADS = int(config.get("threads_per_job", 1))

# Every job gets the same params file and profile.
STUDY = f"--params {PARAMS_FILE} --profile {PROFILE}"

# The conda environment with the lock's pins (used with --use-conda).
ENV = "../../environment.yml"

MODELS = plan.trained_model_ids(PARAMS)
EXTERNAL = plan.external_ids(PARAMS)  # models.external: inspected, evaluated and inverted, never trained
INVERSIONS = plan.inversion_jobs(PARAMS)


wildcard_constraints:
    arch="[a-z0-9]+",
    regime="[a-z]+(-[a-z]+)*",
    model=r"[a-z0-9]+-[a-z0-9-]+?(-r[1-9]\d*)?(@\d{4})?",
    regularizer="reg-free|human-aligned|adversarial|freq|fourier",
    epoch=r"\d{4}",


def data_inputs(wildcards=None):
    marker = plan.data_marker(PARAMS)
    return [marker] if marker else []


def checkpoint_of(wildcards):
    """A trained model's checkpoint, or an external model's descriptor (rules/external.smk)."""
    return str(plan.model_file(PARAMS, RESULTS, wildcards.model))
