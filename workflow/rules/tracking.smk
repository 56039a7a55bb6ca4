# MLflow: this invocation is a parent run; every job's run nests under it
# (jobs inherit IRI_PARENT_RUN_ID from this process), and the report is
# attached to it at the end. Dry runs and lints create nothing. The calls run
# in Snakemake's own process (one import of mlflow), not in `iri tracking`
# subprocesses: `dvc repro` starts Snakemake once per stage.
from iri_alignment import tracking

PARENT_RUN = {}


onstart:
    PARENT_RUN["id"] = tracking.start_parent(PARAMS, "snakemake")
    os.environ.update({tracking.PARENT_ENV: PARENT_RUN["id"]})


onsuccess:
    if PARENT_RUN:
        tracking.finish_parent(PARENT_RUN["id"], "FINISHED", [f"{RESULTS}/tables", f"{RESULTS}/figures"])


onerror:
    if PARENT_RUN:
        tracking.finish_parent(PARENT_RUN["id"], "FAILED")
