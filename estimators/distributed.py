"""Where independent tasks run: in this process (`local`, the default) or on a Ray cluster (`ray`).

A *task* is a top-level function of this package applied to one JSON-like payload (numbers,
strings, lists, dicts, numpy arrays); it returns the same kind of value. Sampled ground truth,
exact enumeration, benchmark sweeps and Monte Carlo truths split their work into such tasks and
combine the results on the driver, in a fixed order, so that a result never depends on the
backend or on the number of workers.

    with open_backend("ray", address=None, workers=2) as backend:   # local Ray on 127.0.0.1
        for index, result in backend.run(task_fn, payloads):          # as tasks finish
            ...

Ray is optional (`requirements-ray.txt`); without it, asking for `ray` raises `BackendError`
(a ValueError: one line saying how to install it). With `address=None` a Ray cluster is started
on 127.0.0.1 only (every Ray process binds the loopback interface) with `workers` CPUs, and shut
down on close; with an address the driver connects to that running cluster (`ray start --head`)
and leaves it running. A process already connected to Ray (`ray.init` called before) is reused
and left connected. Where the cluster has GPUs, each task asks for `num_gpus` = 1 and runs its
model on "cuda"; otherwise each task asks for one CPU.

Models travel to workers by reference (`ModelRef`: a zoo name or folder each machine can load,
plus the driver's `conformance.model_fingerprint`); a worker whose copy differs in config,
weights or code version refuses with one line. Nothing is unpickled from user files; Ray's own
transport carries the payloads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

BACKENDS = ("local", "ray")
INSTALL_HINT = ("--backend ray needs Ray, which is not installed: run "
                "`.venv/bin/python -m pip install -r requirements-ray.txt`")
# Ray reads this at import and at node start: "0" makes a node use 127.0.0.1, never a routable
# address (it is how Ray behaves on laptops); we set it only while starting our own local node
# or joining a cluster at a loopback address (`_loopback`; relies on ray==2.60's internals).
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
REPO_ROOT = Path(__file__).resolve().parents[1]


class BackendError(ValueError):
    """The backend cannot run (Ray missing, cluster unreachable, bad worker count): one line."""


def shard_seed(run_seed: int, index: int) -> int:
    """The seed of shard `index` of a run seeded `run_seed`: the first 63 bits of
    sha256("hew-shard:<run_seed>:<index>"). A fixed function of the two, so a sharded result
    does not depend on how many workers ran the shards or in which order they finished."""
    raw = hashlib.sha256(f"hew-shard:{int(run_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(raw[:8], "big") >> 1


def shard_sizes(total: int, shard: int) -> list[int]:
    """Sizes of the shards covering `total` items with `shard` items each (the last smaller)."""
    if shard < 1:
        raise ValueError(f"shard size must be a positive integer, got {shard}")
    return [min(shard, total - s) for s in range(0, total, shard)]


# ---------------------------------------------------------------------------- model references

@dataclass(frozen=True)
class ModelRef:
    """How a worker gets the driver's model: `source` (zoo name or folder, as for
    `loading.load_model`), the driver's device, and the driver's model fingerprint."""

    source: str
    device: str
    fingerprint: str

    def to_dict(self) -> dict:
        return {"source": self.source, "device": self.device, "fingerprint": self.fingerprint}


def model_ref(source: str, model, device: str = "cpu") -> ModelRef:
    from estimators.conformance import model_fingerprint

    return ModelRef(str(source), str(device), model_fingerprint(model))


_WORKER_MODELS: dict[tuple[str, str], Any] = {}


def task_device(default: str) -> str:
    """"cuda" when Ray gave this task a GPU, else `default` (the driver's device)."""
    try:
        import ray
        if ray.is_initialized() and ray.get_gpu_ids():
            return "cuda"
    except ImportError:
        pass
    return default


def worker_model(ref: dict, preloaded=None):
    """The model a task computes with: `preloaded` (the local backend passes the driver's own
    object) or the worker's copy of `ref["source"]`, loaded once per worker process and checked
    against the driver's fingerprint (ValueError, one line, when it differs)."""
    if preloaded is not None:
        return preloaded
    from estimators.conformance import model_fingerprint
    from estimators.loading import load_model

    device = task_device(ref["device"])
    key = (ref["source"], device)
    model = _WORKER_MODELS.get(key)
    if model is None:
        model = load_model(ref["source"], device).model
        model.eval()
        _WORKER_MODELS[key] = model
    fp = model_fingerprint(model)
    if fp != ref["fingerprint"]:
        raise ValueError(f"the worker's copy of {ref['source']} differs from the driver's "
                         f"(fingerprint {fp} vs {ref['fingerprint']}): install the same code "
                         f"version and weights on every machine")
    return model


# ------------------------------------------------------------------------------------ backends

class LocalBackend:
    """Runs tasks one after another in this process, in submission order."""

    name = "local"

    def __init__(self):
        self.workers = 1
        self.gpus_per_task = 0.0

    def run(self, fn: Callable[[Any], Any], payloads: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """Yield (index, fn(payload)) for each payload."""
        for i, p in enumerate(payloads):
            yield i, fn(p)

    def describe(self) -> dict:
        return {"backend": "local", "workers": 1}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BackendError(INSTALL_HINT) from None
    return ray


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@contextlib.contextmanager
def _loopback():
    """While starting or joining a node on this machine: make Ray use 127.0.0.1 (it otherwise
    swaps a loopback address for the machine's routable one)."""
    import ray._private.ray_constants as rc

    old_env, old_const = os.environ.get(_LOOPBACK_ENV), rc.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV], rc.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        rc.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = old_env


def _check_reachable(address: str, timeout: float = 5.0) -> str | None:
    """For a host:port address, open (and close) one TCP connection first, so that a wrong
    address is one line at once rather than Ray's minutes of retries. Returns the host."""
    if "://" in address or ":" not in address:
        return None  # "auto", "ray://…": left to Ray
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise BackendError(f"--ray-address {address!r} is not host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise BackendError(f"cannot reach the Ray cluster at {address} "
                           f"({e.strerror or type(e).__name__}); start it with "
                           f"`ray start --head --port {port}`") from None
    return host


class RayBackend:
    """Runs tasks on a Ray cluster, at most `workers` in flight at a time (results are yielded
    as they finish; callers combine them by index, so order never matters)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        if workers is not None and workers < 1:
            raise BackendError(f"--workers must be a positive integer, got {workers}")
        ray = _import_ray()
        self._ray = ray
        self.owned = False
        self.address = address
        if not ray.is_initialized():
            if address is None:
                self._start_local(ray, workers or os.cpu_count() or 1)
            else:
                self._connect(ray, address)
            self.owned = True
        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
        self.gpus_per_task = 1.0 if gpus >= 1 else 0.0
        slots = int(gpus) if self.gpus_per_task else int(cpus)
        self.workers = max(1, min(workers, slots) if workers else slots)
        self._remote: dict[Callable, Any] = {}

    @staticmethod
    def _start_local(ray, workers: int) -> None:
        path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        with _loopback():
            ray.init(address="local", num_cpus=workers, include_dashboard=False,
                     _node_ip_address="127.0.0.1",
                     log_to_driver=False, logging_level="ERROR",
                     runtime_env={"env_vars": {"PYTHONPATH": path, _LOOPBACK_ENV: "0"}})

    @staticmethod
    def _connect(ray, address: str) -> None:
        host = _check_reachable(address)
        # the package travels with the job, so workers run the driver's code version
        env = {"py_modules": [str(REPO_ROOT / "estimators")]}
        try:
            if host in _LOOPBACK_HOSTS:  # a cluster on this machine's loopback: stay on it
                with _loopback():
                    ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                             runtime_env=env, _node_ip_address="127.0.0.1")
            else:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR",
                         runtime_env=env)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            auth = "" if os.environ.get("RAY_AUTH_MODE") else \
                " (a cluster with token authentication also needs RAY_AUTH_MODE=token here)"
            raise BackendError(f"cannot connect to the Ray cluster at {address}: "
                               f"{first}{auth}") from None

    def _remote_fn(self, fn):
        r = self._remote.get(fn)
        if r is None:
            r = self._ray.remote(fn).options(num_cpus=1, num_gpus=self.gpus_per_task,
                                             max_retries=2)
            self._remote[fn] = r
        return r

    def run(self, fn: Callable[[Any], Any], payloads: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """Yield (index, fn(payload)) as tasks finish; a task's error is re-raised here with
        its own message."""
        ray = self._ray
        remote = self._remote_fn(fn)
        pending: dict[Any, int] = {}
        todo = iter(enumerate(payloads))
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.workers:
                    nxt = next(todo, None)
                    if nxt is None:
                        exhausted = True
                        break
                    pending[remote.remote(nxt[1])] = nxt[0]
                if not pending:
                    return
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    yield i, self._get(ref)
        finally:  # the caller stopped early (a limit, an error): drop the tasks still queued
            for ref in pending:
                ray.cancel(ref)

    def _get(self, ref):
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def describe(self) -> dict:
        return {"backend": "ray", "workers": self.workers, "gpus_per_task": self.gpus_per_task,
                "address": self.address or "local (127.0.0.1)"}

    def with_workers(self, workers: int) -> "RayBackend":
        """A view of the same cluster with at most `workers` tasks in flight (not owning it)."""
        view = object.__new__(RayBackend)
        view.__dict__.update(self.__dict__)
        view.workers, view.owned, view._remote = max(1, int(workers)), False, {}
        return view

    def close(self) -> None:
        if self.owned and self._ray.is_initialized():
            self._ray.shutdown()
        self.owned = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_backend(name: str = "local", address: str | None = None,
                 workers: int | None = None) -> LocalBackend | RayBackend:
    """A backend by name ("local" or "ray"); BackendError (one line) when it cannot run.
    `address`/`workers` apply to Ray only (a local backend given either refuses)."""
    if name == "local":
        if address is not None:
            raise BackendError("--ray-address needs --backend ray")
        if workers not in (None, 1):
            raise BackendError("--workers > 1 needs --backend ray (the local backend runs "
                               "tasks one after another in this process)")
        return LocalBackend()
    if name == "ray":
        return RayBackend(address, workers)
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def add_backend_args(p) -> None:
    """--backend, --ray-address, --workers on an argparse parser."""
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="where tasks run: this process (local, default) or a Ray cluster")
    p.add_argument("--ray-address", default=None,
                   help="address of a running Ray cluster (host:port of `ray start --head`); "
                        "default with --backend ray: start one on 127.0.0.1 and stop it after")
    p.add_argument("--workers", type=int, default=None,
                   help="tasks in flight at once (ray; default: the cluster's GPUs, else CPUs)")


def backend_from_args(args) -> LocalBackend | RayBackend:
    return open_backend(args.backend, args.ray_address, args.workers)
