# MLflow: this invocation is a parent run; every job's run nests under it
# (jobs inherit IRI_PARENT_RUN_ID from this process), and the report is
# attached to it at the end. Dry runs and lints create nothing.
import subprocess

PARENT_RUN = {}


def _tracking(*args):
    cmd = ["iri", "tracking", *args, "--params", PARAMS_FILE, "--profile", PROFILE]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


onstart:
    PARENT_RUN["id"] = _tracking("start", "--name", "snakemake")
    os.environ.update(IRI_PARENT_RUN_ID=PARENT_RUN["id"])


onsuccess:
    if PARENT_RUN:
        _tracking("finish", "--run-id", PARENT_RUN["id"], "--status", "FINISHED",
                  "--artifacts", f"{RESULTS}/tables", "--artifacts", f"{RESULTS}/figures")


onerror:
    if PARENT_RUN:
        _tracking("finish", "--run-id", PARENT_RUN["id"], "--status", "FAILED")
