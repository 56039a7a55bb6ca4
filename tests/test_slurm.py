"""The SLURM profile on a real, single-node Slurm cluster (opt-in).

The module starts a private cluster from Debian's packages under a temporary
folder: munged (its own key and socket), MariaDB + slurmdbd (so that `sacct`
answers from real accounting, as on a production cluster; Slurm 22.05 has no
file-based accounting storage any more), slurmctld and slurmd with two
partitions named as in workflow/profiles/slurm (`cpu`, `gpu`) on this one node.
The node has two count-only GPU GRES (bound to /dev/null and /dev/zero; no
device is ever opened, the smoke profile computes on the CPU) so that the rules'
`gpu=1` goes through Slurm unchanged: the plugin turns it into `--gpus=1` and
`sacct` shows `gres/gpu=1` for exactly those jobs.

It then runs the smoke DAG (by default the slice of it in SLICE: one job per
partition and resource kind, which fits the 12-minute budget of `make test`;
IRI_SLURM_TEST=full runs the DAG up to validity, 29 jobs when measured) with `--profile` set to the repository's SLURM
profile with only what this node cannot give replaced (see `_test_profile`):
account `iri` (created here), one CPU and one thread per job, the profile's
memory divided by 16, no retries, and fast status polling. Every other value
(partitions, runtimes, gpu) is the profile's. Afterwards `sacct` must list every
job of the DAG as a COMPLETED Slurm job with those resources.

Opt-in: runs with IRI_SLURM_TEST=1 (as `.ci/run` sets) or `pytest -m slurm`;
needs root and the packages slurmctld slurmd slurm-client slurmdbd munge
mariadb-server, else it skips saying which is missing. The `sacct` table of the
run is printed (`-s`) and written to sacct.txt next to the cluster's files.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = REPO / "workflow" / "profiles" / "slurm" / "config.yaml"
ACCOUNT = "iri"
MEM_DIVISOR = 16  # the profile's mem_mb / 16: 8000 -> 500, 16000 -> 1000, 32000 -> 2000
BINARIES = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
            "sacctmgr", "sbatch", "srun", "squeue", "sinfo", "sacct", "scancel")
PACKAGES = "slurmctld slurmd slurm-client slurmdbd munge mariadb-server"


# IRI_SLURM_TEST=1 (or -m slurm): a slice of the smoke DAG, three jobs of three rules in two stages, both
# partitions, gpu=1 (2.5 min on 2 busy cores). IRI_SLURM_TEST=full: the DAG up to validity (29 jobs, 12 min there).
SLICE = ("data/shapes/meta.json", "results/models/resnet18-standard/model.pt", "results/models/resnet18-simclr/model.pt")


def _mode(config) -> str | None:
    value = os.environ.get("IRI_SLURM_TEST", "")
    if value == "full":
        return "full"
    if value == "1" or "slurm" in (config.option.markexpr or ""):
        return "slice"
    return None


def _without_slurm(environ) -> dict:
    return {k: v for k, v in environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_", "SACCT_"))}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait(what: str, ready, timeout: float, procs=()) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return
        for name, p, log in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _listening(port: int):
    def ready():
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0
    return ready


class Cluster:
    """A single-node Slurm cluster whose every file lives under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.env = _without_slurm(os.environ)
        self.env["SLURM_CONF"] = str(root / "slurm.conf")
        self.started_in = 0.0
        self.name = "iritest"
        self.node = ""

    def run(self, *cmd, check=True, timeout=60) -> str:
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def _daemon(self, name: str, *cmd) -> subprocess.Popen:
        log = self.root / "log" / f"{name}.out"
        p = subprocess.Popen(cmd, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=self.root,
                             start_new_session=True)
        self.procs.append((name, p, log))
        return p

    def start(self) -> None:
        t0 = time.monotonic()
        r = self.root
        for d in ("log", "munge", "db", "state", "spool"):
            (r / d).mkdir(mode=0o700)
        ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)

        # munge: a private key and socket
        sock = r / "munge" / "munge.sock"
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._daemon("munged", "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                     f"--pid-file={r / 'munge' / 'munged.pid'}", f"--seed-file={r / 'munge' / 'munged.seed'}",
                     f"--log-file={r / 'log' / 'munged.log'}")

        # MariaDB for slurmdbd, TCP on 127.0.0.1 only, a user created at start-up
        db = r / "db"
        speed = ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=0",
                 "--innodb-doublewrite=0", "--skip-log-bin"]
        self.run("mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={db / 'data'}",
                 "--auth-root-authentication-method=normal", "--skip-test-db", *speed, timeout=120)
        (db / "init.sql").write_text("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';\n"
                                     "GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';\n")
        self._daemon("mariadbd", "mariadbd", "--no-defaults", "--user=root", f"--datadir={db / 'data'}",
                     f"--socket={db / 'mysqld.sock'}", f"--port={db_port}", "--bind-address=127.0.0.1",
                     "--skip-name-resolve", f"--pid-file={db / 'mysqld.pid'}", f"--init-file={db / 'init.sql'}", *speed)

        self.node = self.run("slurmd", "-C").splitlines()[0]  # NodeName=<host> CPUs=.. ... RealMemory=..
        host = re.match(r"NodeName=(\S+)", self.node).group(1)
        (r / "slurmdbd.conf").write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={sock}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={r / 'slurmdbd.pid'}
LogFile={r / 'log' / 'slurmdbd.log'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
""")
        (r / "slurmdbd.conf").chmod(0o600)
        (r / "slurm.conf").write_text(f"""\
ClusterName={self.name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={dbd_port}
AccountingStoragePass={sock}
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
KillWait=5
GresTypes=gpu
{self.node} NodeAddr=127.0.0.1 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP
""")
        # count-only GPUs: Slurm drops file-less GPUs, so each is bound to a harmless device file
        (r / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null\nNodeName={host} Name=gpu File=/dev/zero\n")

        # The jobstep plugin (snakemake-executor-plugin-slurm-jobstep 0.6) drops every SLURM_* variable but
        # the job's ids before its inner `srun`, SLURM_CONF included. A real cluster has its slurm.conf at
        # the default path (or runs configless); this private one is found through an `srun` on PATH.
        shim = r / "bin" / "srun"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={r / "slurm.conf"} exec {shutil.which("srun")} "$@"\n')
        shim.chmod(0o755)
        self.env["PATH"] = f"{shim.parent}{os.pathsep}{self.env.get('PATH', '')}"

        _wait("munged", sock.exists, 10, self.procs)
        _wait("MariaDB", _listening(db_port), 30, self.procs)
        self._daemon("slurmdbd", "slurmdbd", "-D")  # reads slurmdbd.conf next to $SLURM_CONF
        _wait("slurmdbd", _listening(dbd_port), 30, self.procs)
        self.run("sacctmgr", "-i", "add", "cluster", self.name)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, f"cluster={self.name}", "Description=iri test",
                 "Organization=iri")
        self.run("sacctmgr", "-i", "add", "user", "root", f"account={ACCOUNT}", f"cluster={self.name}")
        self._daemon("slurmctld", "slurmctld", "-D", "-i")
        self._daemon("slurmd", "slurmd", "-D")
        _wait("the node to be idle", lambda: self.run("sinfo", "-h", "-N", "-o", "%t", check=False).split() == ["idle"] * 2,
              60, self.procs)  # one line per partition
        self.started_in = time.monotonic() - t0

    def stop(self) -> None:
        if any(name == "slurmctld" and p.poll() is None for name, p, _ in self.procs):
            self.run("scancel", "--full", "--user=root", check=False, timeout=20)
            end = time.monotonic() + 15
            while time.monotonic() < end and self.run("squeue", "-h", check=False, timeout=20).strip():
                time.sleep(0.5)
        for name, p, _ in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, 15)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait(timeout=10)
        shutil.rmtree(self.root / "db" / "data", ignore_errors=True)  # ~30 MB of InnoDB files

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-2500:]}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    if _mode(request.config) is None:
        pytest.skip("opt-in: set IRI_SLURM_TEST=1 (as .ci/run does; =full for the whole smoke DAG) or run `pytest -m slurm`")
    if os.geteuid() != 0:
        pytest.skip("needs root: slurmd launches the jobs")
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install {PACKAGES})")
    root = tmp_path_factory.mktemp("slurm")
    c = Cluster(root)
    request.addfinalizer(c.stop)
    try:
        c.start()
    except Exception as e:
        raise RuntimeError(f"the test cluster did not start: {e}\n{c.logs()}") from e
    return c


def _test_profile(profile: dict) -> dict:
    """The repository's profile with only what this 2-core node cannot give
    replaced; partitions, runtimes and the rules' gpu=1 stay as they are."""
    test = dict(profile)
    default = dict(profile["default-resources"], slurm_account=ACCOUNT, cpus_per_task=1)
    default["mem_mb"] = profile["default-resources"]["mem_mb"] // MEM_DIVISOR
    test["default-resources"] = default
    test["set-threads"] = {rule: 1 for rule in profile.get("set-threads", {})}
    test["set-resources"] = {
        rule: dict(res, cpus_per_task=1, mem_mb=res.get("mem_mb", profile["default-resources"]["mem_mb"]) // MEM_DIVISOR)
        for rule, res in profile.get("set-resources", {}).items()
    }
    test.update({
        "retries": 0,                                    # a failure shows at once
        "latency-wait": 5,                               # one local file system
        "seconds-between-status-checks": 1,
        "slurm-init-seconds-before-status-checks": 1,    # the plugin's default 40 s would dominate
        "slurm-keep-successful-logs": True,
    })
    return test


def _expected(profile: dict, rule: str) -> dict:
    res = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
    return {"partition": res["slurm_partition"], "cpus": res["cpus_per_task"], "mem": f"{res['mem_mb']}M",
            "minutes": res["runtime"], "account": res["slurm_account"]}


def _gpu_rules() -> set[str]:
    """Rules that declare `gpu=1` in workflow/rules/*.smk, or inherit it with `use rule`."""
    rules, uses = set(), []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        uses += re.findall(r"^use rule (\w+) as (\w+)", text, flags=re.M)
        for block in re.split(r"^(?=rule |checkpoint |use rule )", text, flags=re.M):
            m = re.match(r"(?:rule|checkpoint|use rule \w+ as) (\w+)", block)
            if m and re.search(r"^\s+gpu\s*=\s*1\s*,?\s*$", block, flags=re.M):
                rules.add(m.group(1))
    rules |= {new for old, new in uses if old in rules}
    return rules


def _job_stats(output: str) -> Counter:
    """Snakemake's 'Job stats' table: rule -> number of jobs of the DAG."""
    block = output.split("Job stats:", 1)[1]
    counts = Counter()
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _seconds(t: str) -> float:
    """sacct's [D-][HH:]MM:SS[.mmm] as seconds."""
    days, _, rest = t.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


SACCT = "JobIDRaw,Comment%60,State,ExitCode,Partition,Account,AllocCPUS,ReqMem,TimelimitRaw,AllocTRES%60,Elapsed"


def test_the_smoke_dag_runs_as_slurm_jobs_with_the_profiles_resources(cluster, tmp_path, request):
    profile = _test_profile(yaml.safe_load(PROFILE.read_text()))
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    # this test's environment (its MLflow store), the private cluster, the venv's `iri` first on PATH;
    # the jobs inherit it (the plugin submits with --export=ALL)
    env = {k: v for k, v in _without_slurm(os.environ).items() if not k.startswith("IRI_")}
    env.update(SLURM_CONF=cluster.env["SLURM_CONF"], PATH=f"{BIN}{os.pathsep}{cluster.env['PATH']}")
    ws = tmp_path / "ws"
    ws.mkdir()
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(ws),
           "--profile", str(tmp_path / "profile"),
           "--config", "profile=smoke", f"params={REPO / 'params.yaml'}", "results=results"]
    if _mode(request.config) == "slice":
        cmd += ["--", *SLICE]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True,
                              timeout=300 if _mode(request.config) == "slice" else 1800)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"snakemake timed out:\n{(e.stderr or b'')[-4000:]}\n{cluster.logs()}") from e
    wall = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    (cluster.root / "snakemake.log").write_text(out)
    if proc.returncode:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in sorted(ws.rglob("*.log")))
        raise AssertionError(f"snakemake failed:\n{out[-6000:]}\n{logs}\n{cluster.logs()}")
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)

    table = cluster.run("sacct", "-X", "--parsable2", f"--name={run_id}", "--starttime=now-1days", f"--format={SACCT}")
    header, *rows = [line.split("|") for line in table.strip().splitlines()]
    jobs = [dict(zip(header, row)) for row in rows]
    (cluster.root / "sacct.txt").write_text(table)
    steps = cluster.run("sacct", "-n", "-P", "-j", ",".join(j["JobIDRaw"] for j in jobs), "-o", "TotalCPU")
    cpu = sum(_seconds(t) for t in steps.split())
    print(f"\ncluster up in {cluster.started_in:.0f} s; snakemake on Slurm: {len(jobs)} jobs in {wall:.0f} s "
          f"({cpu:.0f} CPU-s inside the jobs); sacct ({cluster.root / 'sacct.txt'}):\n{table}")

    # every job of the DAG (but the target rule `all`, which runs nothing) is one Slurm job
    expected = _job_stats(out)
    expected.pop("all", None)
    by_rule = Counter(re.match(r"rule_(\w+?)(_wildcards_|$)", j["Comment"]).group(1) for j in jobs)
    assert by_rule == expected
    gpu_rules = _gpu_rules()
    assert {"train", "train_contrastive", "invert"} <= gpu_rules, gpu_rules  # the parser found them
    for j in jobs:
        rule = re.match(r"rule_(\w+?)(_wildcards_|$)", j["Comment"]).group(1)
        want = _expected(profile, rule)
        assert (j["State"], j["ExitCode"]) == ("COMPLETED", "0:0"), j
        assert j["Partition"] == want["partition"], j
        assert j["Account"] == want["account"], j
        assert int(j["AllocCPUS"]) == want["cpus"], j
        assert j["ReqMem"] == want["mem"], j
        assert int(j["TimelimitRaw"]) == want["minutes"], j
        assert ("gres/gpu=1" in j["AllocTRES"]) == (rule in gpu_rules), j
    targets = SLICE if _mode(request.config) == "slice" else ("results/logs/validity.txt",)
    assert all((ws / t).is_file() for t in targets)
