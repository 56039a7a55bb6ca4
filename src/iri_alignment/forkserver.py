"""Pay the start-up of an ``iri`` process once: a fork server for the DAG's many short jobs.

Every Snakemake job is one ``iri`` process, and each imports torch, MLflow and MLflow's
SQLAlchemy store before it does any work: about 4-5 s per job on a 2-core machine, tens of
jobs per DAG (README "Speed"). The fork server imports them once; each job then costs a fork.

* ``iri workers run -- COMMAND...`` starts a server on a private socket, runs COMMAND (for
  example ``snakemake --cores all``) with ``IRI_FORKSERVER`` naming the socket, stops the server
  and exits with COMMAND's status. ``make demo`` runs the DAG this way.
* ``iri`` with ``IRI_FORKSERVER`` set sends its arguments, working directory, environment and
  its standard input, output and error (the file descriptors themselves) to the server, which
  forks a child that runs the command exactly as a new process would, with those streams; the
  client waits and exits with the child's status. SIGTERM and SIGINT sent to the client are
  passed on to the child (Snakemake stops jobs with SIGTERM), and a client that dies takes its
  child with it. With no server at that path, inside a Slurm job (a job must run in its own
  allocation), or when the server refuses, ``iri`` runs in its own process as always.

Each child is a fresh invocation in all but its imports: it resets signals and logging, takes the
client's environment and directory, and sets torch's thread count from ``--threads`` or
``OMP_NUM_THREADS`` (OpenMP reads the variable once, in the server). Results are bitwise those
of a direct run (``tests/test_forkserver.py``). The server never touches CUDA, so a child may.
Only the socket's owner can connect (mode 0600, checked again with ``SO_PEERCRED``). Jobs'
CPU time is spent in the server's children, outside the client that Snakemake's ``benchmark:``
measures, so ``iri timings`` reports wall time only for such a run.

The client side (:func:`delegate`) uses the standard library only, so it starts in ~0.1 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ENV = "IRI_FORKSERVER"
_HEADER = struct.Struct("!Q")  # request length
_PID = struct.Struct("!q")
_STATUS = struct.Struct("!i")


# -- client -------------------------------------------------------------------------------------


def delegate(argv: list[str]) -> int | None:
    """Run ``iri ARGV`` in the fork server named by ``IRI_FORKSERVER``; its exit status, or
    ``None`` when there is no server to use (the caller then runs the command itself)."""
    path = os.environ.get(ENV)
    if not path or "SLURM_JOB_ID" in os.environ:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    with sock:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        try:
            socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
            sock.sendall(request)
        except OSError:  # e.g. a closed standard stream: nothing ran, run in this process
            return None
        reply = _recv_exact(sock, _PID.size)
        if reply is None:
            return None  # the server refused before forking: nothing ran
        pid = _PID.unpack(reply)[0]

        def forward(signum, _frame):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, forward)
        status = _recv_exact(sock, _STATUS.size)
    if status is None:
        sys.stderr.write(f"iri: the fork server at {path} stopped before the job ended\n")
        return 1
    return _STATUS.unpack(status)[0]


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except InterruptedError:
            continue
        if not chunk:
            return None
        data += chunk
    return data


# -- server -------------------------------------------------------------------------------------

PRELOAD = ("torch", "torchvision", "numpy", "pandas", "scipy.stats", "PIL.Image", "click", "yaml", "jsonschema",
           "mlflow", "mlflow.store.tracking.sqlalchemy_store", "iri_alignment.cli", "iri_alignment.training",
           "iri_alignment.inversion", "iri_alignment.scoring", "iri_alignment.tracking")


def serve(path: str, preload=PRELOAD) -> None:
    """Listen on ``path`` (created with mode 0600) and fork one child per request until SIGTERM."""
    import importlib
    import selectors

    for name in preload:
        importlib.import_module(name)
    if os.path.exists(path):
        os.unlink(path)
    old_umask = os.umask(0o177)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    children: dict[int, socket.socket] = {}
    try:
        while not stopping:
            for key, _ in selector.select():
                if key.data == "accept":
                    conn, _ = listener.accept()
                    pid = _start(conn, [listener, *children.values()], [wake_r, wake_w])
                    if pid is None:
                        conn.close()
                        continue
                    children[pid] = conn
                    selector.register(conn, selectors.EVENT_READ, pid)
                elif key.data == "signal":
                    os.read(wake_r, 512)
                    _reap(children, selector)
                else:  # the client hung up (or wrote): it died, so its child goes too
                    pid = key.data
                    if pid in children:
                        selector.unregister(children[pid])
                        _kill(pid, signal.SIGTERM)
    finally:
        for pid in list(children):
            _kill(pid, signal.SIGTERM)
        listener.close()
        if os.path.exists(path):
            os.unlink(path)


def _start(conn: socket.socket, sockets: list[socket.socket], fds_to_close: list[int]) -> int | None:
    """Read one request from ``conn`` and fork its child, which closes ``sockets`` (the listener,
    the other clients' connections) and ``fds_to_close``; the child's pid (sent to the client)."""
    conn.settimeout(10)
    try:
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():
            return None
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        if len(header) != _HEADER.size or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            return None
        body = _recv_exact(conn, _HEADER.unpack(header)[0])
        request = json.loads(body) if body is not None else None
    except (OSError, ValueError):
        return None
    if request is None:
        for fd in fds:
            os.close(fd)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: become the client's `iri` process
        code = 1
        try:
            for sock in (*sockets, conn):
                sock.close()
            for fd in fds_to_close:
                os.close(fd)
            code = _child(request, fds)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.settimeout(None)
    conn.sendall(_PID.pack(pid))
    return pid


def _child(request: dict, fds: list[int]) -> int:
    import logging

    _die_with_parent()
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    logging.root.handlers.clear()
    logging.root.setLevel(logging.WARNING)
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))  # --threads, if given, overrides this in the CLI
    from iri_alignment import cli

    sys.argv = ["iri", *request["argv"]]
    try:
        cli.main(request["argv"])
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            sys.stderr.write(f"{exit_.code}\n")
            code = 1
    except BaseException:  # noqa: BLE001 -- the child reports any failure as a process would
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _die_with_parent() -> None:
    """On Linux, SIGTERM this process when its parent dies (a forked job: its server; the server:
    whoever started it)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _reap(children: dict, selector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.sendall(_STATUS.pack(code if code >= 0 else 128 - code))
        except OSError:
            pass
        conn.close()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# -- running a command with a server ------------------------------------------------------------


@contextlib.contextmanager
def running_server(startup_timeout: float = 120.0) -> Iterator[str]:
    """A server on a fresh private socket (in a 0700 folder) for the ``with`` block; yields its path."""
    folder = tempfile.mkdtemp(prefix="iri-forkserver-")
    path = os.path.join(folder, "socket")
    server = subprocess.Popen([sys.executable, "-m", "iri_alignment.forkserver", path])
    try:
        deadline = time.monotonic() + startup_timeout
        while not os.path.exists(path):
            if server.poll() is not None:
                raise RuntimeError(f"the fork server exited with status {server.returncode} before it listened")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fork server did not listen on {path} within {startup_timeout:.0f} s")
            time.sleep(0.1)
        yield path
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


def run_with_server(command: list[str]) -> int:
    """Run ``command`` with ``IRI_FORKSERVER`` naming a server started for it (or the one already
    named there, if it answers: ``dvc repro`` inside ``iri workers run`` starts no second one);
    its exit status."""
    if _answers(os.environ.get(ENV)):
        return subprocess.call(command)
    with running_server() as path:
        return subprocess.call(command, env={**os.environ, ENV: path})


def _answers(path: str | None) -> bool:
    if not path:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


if __name__ == "__main__":
    _die_with_parent()  # started by running_server: a killed `iri workers run` or test takes it along
    serve(sys.argv[1])
