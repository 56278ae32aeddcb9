"""MLflow tracking in a side process, so that a stage command does not wait for MLflow to load.

Importing MLflow and opening its store costs a command 1.5–2.5 s of CPU before the first call, about as much
as the work of a merge of two 0.4B models. The ``finmerge`` executable therefore starts this side process
first thing (:func:`start`): it imports MLflow on the second core while the command imports torch and does
its work, and then carries out the command's tracking calls (:class:`finmerge.core.tracking.Run`'s, with its
retries and buffering unchanged) on request. A thread would not do: an import holds the GIL that the work
needs (measured slower, see ``finmerge/merge/model_files.py``).

The protocol is pickled ``(op, args)`` frames over the process's stdin/stdout; an exception raised in the
side process is raised again in the command, with its own type and message. If the side process cannot be
started or dies, the command tracks in its own process as before. ``FINMERGE_TRACKING_SIDECAR=0`` turns it
off.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import Any

from finmerge.core import storage

_HEADER = struct.Struct("!Q")


def _send(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _recv(stream) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("tracking side process closed its pipe")
    (n,) = _HEADER.unpack(head)
    return pickle.loads(stream.read(n))


class SidecarDied(RuntimeError):
    """The side process is gone (killed, out of memory): the command falls back to tracking itself."""


class Sidecar:
    """The command's end of the side process (thread-safe: one request at a time)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self._lock = threading.Lock()
        self._endpoint: object = object()  # the S3 endpoint last sent (MLflow's artifact store uses it)
        self._unanswered = 0  # warm-up requests whose answers are not read yet
        self._broken = False

    def warm(self, uri: str, experiment: str) -> None:
        """Open a SQLite store and look the experiment up now, while the command works (read-only; answered
        later): opening it alone takes ~0.7 s."""
        with self._lock:
            try:
                _send(self.proc.stdin, ("warm", (uri, experiment)))
                self._unanswered += 1
            except OSError:
                pass

    def call(self, op: str, *args: Any) -> Any:
        with self._lock:
            if self._broken:
                raise SidecarDied("tracking side process stopped earlier")
            endpoint = storage.endpoint_url()
            try:
                while self._unanswered:
                    _recv(self.proc.stdout)  # a warm-up's answer; a failed warm-up fails again below
                    self._unanswered -= 1
                if endpoint != self._endpoint:
                    _send(self.proc.stdin, ("endpoint", (endpoint,)))
                    _recv(self.proc.stdout)
                    self._endpoint = endpoint
                _send(self.proc.stdin, (op, args))
                kind, value = _recv(self.proc.stdout)
            except (BrokenPipeError, EOFError, OSError) as exc:
                self._broken = True
                raise SidecarDied(f"tracking side process ended ({exc})") from exc
            except BaseException:
                # interrupted between a request and its answer (Ctrl-C): the pipe is out of step from here
                # on, so the command tracks on its own
                self._broken = True
                self.proc.kill()
                raise
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            try:
                _send(self.proc.stdin, ("close", ()))
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class RemoteRun:
    """A :class:`~finmerge.core.tracking.Run` living in the side process, with the same methods."""

    def __init__(self, sidecar: Sidecar, uri: str, run_id: str):
        self.sidecar, self.uri, self.run_id = sidecar, uri, run_id
        self.local = None  # the run tracked here after the side process died

    def _do(self, method: str, *args: Any) -> Any:
        if self.local is None:
            try:
                return self.sidecar.call("run", self.run_id, method, args)
            except SidecarDied:
                self._go_local()
        return getattr(self.local, method)(*args)

    def _go_local(self) -> None:
        from finmerge.core import tracking

        tracking.use_sidecar(None)
        self.local = tracking.Run(self.uri, self.run_id)

    def params(self, params: dict) -> None:
        self._do("params", params)

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._do("metrics", metrics, step)

    def tags(self, tags: dict[str, str]) -> None:
        self._do("tags", tags)

    def artifact_files(self, folder_uri: str, names: list[str], subdir: str | None = None) -> None:
        from finmerge.core.tracking import read_files

        # read here: the command holds the storage configuration of its run
        self._do("artifact_data", read_files(folder_uri, names), subdir)

    def datasets(self, described: list[dict], context: str) -> None:
        self._do("datasets", described, context)

    def text(self, text: str, name: str) -> None:
        self._do("text", text, name)

    def flush(self, budget_s: float | None = None) -> None:
        self._do("flush", budget_s)

    def unsent(self) -> list[list]:
        return self._do("unsent")

    def resend(self, entries: list[list]) -> None:
        self._do("resend", entries)

    def fail(self, budget_s: float = 60.0) -> None:
        self._do("fail", budget_s)

    def end(self, status: str = "FINISHED") -> None:
        self._do("end", status)


def start(force: bool = False) -> Sidecar | None:
    """Start the side process and install it for this process's tracking calls; None when turned off, or
    when MLflow is loaded here already (nothing to gain) unless ``force``."""
    from finmerge.core import tracking

    if os.environ.get("FINMERGE_TRACKING_SIDECAR", "1") == "0" or ("mlflow" in sys.modules and not force):
        return None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "finmerge.core.tracking_sidecar"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # its retry warnings are the command's
            cwd=os.getcwd(),
            # it only makes tracking calls: no thread per core for numpy's BLAS, spinning at its import
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        )
    except OSError:
        return None
    sidecar = Sidecar(proc)
    tracking.use_sidecar(sidecar)
    return sidecar


# -- the side process ----------------------------------------------------------------------------------------


# MLflow imports these when they are installed, for dataframes and model flavours; the tracking calls made here
# never need them, and MLflow loads without them as its skinny install does. Hidden, `import mlflow` takes
# ~0.5 s less CPU, which on a two-core machine goes to the command.
OPTIONAL_IMPORTS = ("pandas", "scipy")


def _serve(inp, out) -> None:
    import gc
    import logging

    # Loading MLflow and opening its store allocate ~10^5 objects that live as long as we do; the collector
    # would walk them again and again on the way (a sixth of this process's CPU): off until the first
    # request is answered (the command's warm-up opens the store), then those objects are frozen out of its
    # reach.
    gc.disable()

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    for name in OPTIONAL_IMPORTS:
        sys.modules.setdefault(name, None)  # `import pandas` now raises ImportError, as where it is absent
    import mlflow  # noqa: F401 (the point of this process: loaded while the command works)

    from finmerge.core import tracking

    runs: dict[str, tracking.Run] = {}  # every run the command started or resumed
    while True:
        try:
            op, args = _recv(inp)
        except EOFError:
            return
        try:
            if op == "close":
                tracking._flush_at_exit()  # what a run still buffers (its server was down): exit hooks do not run
                _send(out, ("ok", None))
                os._exit(0)  # tearing down MLflow's modules would cost the command ~0.5 s
            if op == "warm":
                uri, experiment = args
                # An existing SQLite store only: never create one (a command refused at its preflight must
                # leave no store behind), and never wait on a server (one that is down would hold the
                # command's first real call for a second round of MLflow's HTTP retries).
                if (db := tracking.sqlite_path(uri)) and db.exists():
                    tracking.client(uri).get_experiment_by_name(experiment)
                value = None
            elif op == "endpoint":
                storage.configure(args[0], storage.retry_policy())
                value = None
            elif op == "ensure_experiment":
                value = tracking.ensure_experiment(args[0])
            elif op in ("start", "resume"):
                run = getattr(tracking.Run, op)(*args)
                value = None
                if run is not None:
                    runs[run.run_id] = run
                    value = run.run_id
            elif op == "run":
                run_id, method, margs = args
                value = getattr(runs[run_id], method)(*margs)
            else:
                raise ValueError(f"unknown tracking request {op!r}")
            _send(out, ("ok", value))
        except Exception as exc:
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            _send(out, ("error", exc))
        if not gc.isenabled():  # the first request (the command's warm-up: the store opened) is answered
            gc.freeze()
            gc.enable()


if __name__ == "__main__":
    import signal

    # Ctrl-C reaches the whole process group: the command handles it (marks its run FAILED through us),
    # and we end when it closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the frames own stdout: anything a library prints goes to stderr instead
    frames_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin.buffer, frames_out)
