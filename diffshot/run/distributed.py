"""``batch`` on Dask: each (entry, shots, method) setting runs as one task on a dask.distributed cluster.

The client validates the suite and checks the outputs as the serial run does; every setting is then
submitted as :func:`run_setting`, which reads the features file from its path on the worker (a
shared filesystem, the same path on every machine, is the assumption), runs the same
:func:`~diffshot.run.evaluate.run_evaluation` with that one method at that one shot count (same seed,
so the same episodes) and sends back the typed result, per-episode accuracies included. Each entry's
:class:`~diffshot.run.evaluate.EvaluationRun` is then assembled from its settings, so the JSON, CSV
and JUnit outputs are those of the serial run. A setting that fails (an unreadable file, a worker
lost) becomes an error of that entry's method; the others complete.

``dask[distributed]`` is the optional extra ``diffshot[dask]``, imported only here and only when used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diffshot.errors import DiffshotError, UsageError
from diffshot.features import FeatureSet, load_features
from diffshot.results import Entry, Evaluation, EvaluationRun, Outcome
from diffshot.run.batch import SuiteError
from diffshot.run.evaluate import prepare_runs, run_evaluation

EXTRA = "pip install 'diffshot[dask]'"
CONNECT_TIMEOUT = "20s"  # how long a Client waits for the scheduler at --scheduler ADDRESS
HANDSHAKE_TIMEOUT_S = 10.0  # how long the pre-flight check waits for a scheduler's first message
MAX_HANDSHAKE_BYTES = 1 << 16  # a scheduler's first message is about 60 bytes
SettingDone = Callable[[int, int, str], None]  # (settings done, settings in all, label of the one just finished)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One unit of work: entry ``entry``'s run labelled ``label`` (its position ``index``) at ``shots`` shots."""

    entry: str
    label: str
    index: int
    shots: int

    @property
    def name(self) -> str:
        return f"{self.entry} {self.label} {self.shots}-shot"


@dataclasses.dataclass(frozen=True)
class SettingResult:
    """What a worker sends back for one setting: the run, and the warnings it raised there."""

    run: EvaluationRun
    warnings: tuple[str, ...]


def require_distributed() -> Any:
    """The ``distributed`` module, or one line naming the extra that provides it."""
    try:
        import distributed
    except ImportError:
        raise DiffshotError(
            f"a Dask cluster (workers or scheduler) needs dask.distributed, which is not installed: {EXTRA}"
        ) from None
    return distributed


def settings_of(entries: list[Entry]) -> list[tuple[Entry, Setting]]:
    """Every (entry, shots, method) setting of the suite, in suite order; entries whose file is absent have none."""
    found = []
    for entry in entries:
        if not entry.features.is_file():
            continue
        _, runs = prepare_runs(entry.request)
        for shots in dict.fromkeys(entry.request.shots):
            found += [(entry, Setting(entry.name, run.label, i, shots)) for i, run in enumerate(runs)]
    return found


@functools.lru_cache(maxsize=2)
def _features(path: str, allow_external: bool, stamp: tuple[int, int]) -> FeatureSet:
    """A worker's copy of one features file, kept while the file is unchanged (``stamp``: mtime and size)."""
    return load_features(Path(path), allow_external=allow_external)


def run_setting(request: Any, index: int, shots: int, threads: int | None) -> SettingResult:
    """Run one setting on a worker: the ``index``-th method of ``request`` at ``shots`` shots, with ``threads`` threads.

    ``request`` is the entry's EvaluationRequest with an absolute features path; the file is read here.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if threads is not None:
            from diffshot.device import set_threads

            set_threads(threads)
        _, runs = prepare_runs(request)
        one = dataclasses.replace(request, methods=(runs[index],), shots=(shots,), shared={}, assignments={})
        try:
            status = os.stat(request.features)
        except OSError as exc:
            raise DiffshotError(
                f"{request.features}: cannot read the features file on this worker ({exc.strerror})"
            ) from None
        fs = _features(str(request.features), request.allow_external, (status.st_mtime_ns, status.st_size))
        run = run_evaluation(one, features=fs)
    return SettingResult(run, tuple(dict.fromkeys(str(w.message) for w in caught)))


def failure_text(exc: BaseException) -> str:
    """One line saying why a setting failed: the library's message, or the exception's kind and text."""
    if isinstance(exc, DiffshotError):
        return str(exc).replace("\n", " ")
    kind = type(exc).__name__
    if kind == "KilledWorker":
        return f"worker lost: {exc}".replace("\n", " ")
    return f"{kind}: {exc}".replace("\n", " ")


def assemble(entry: Entry, runs: list[EvaluationRun], device: str) -> EvaluationRun | None:
    """One entry's EvaluationRun from its settings' runs (results in the entry's method order, per shot count)."""
    if not runs:
        return None
    evaluations: list[Evaluation] = []
    for shots in dict.fromkeys(entry.request.shots):
        parts = [r.evaluations[0] for r in runs if r.evaluations[0].spec.shots == shots]
        if parts:
            results = tuple(result for part in parts for result in part.results)
            sampling = max(part.sampling_seconds for part in parts)
            evaluations.append(dataclasses.replace(parts[0], results=results, sampling_seconds=sampling))
    source = dataclasses.replace(runs[0].source, path=Path(entry.request.features))
    request = dataclasses.replace(entry.request, device=device)
    return EvaluationRun(request, source, tuple(evaluations), entry.request.baseline)


def check_workers(workers: int | None) -> None:
    """``--workers`` is a number of local processes: from 1 to this machine's cores (as ``--threads`` is)."""
    cores = os.cpu_count() or 1
    if workers is not None and (isinstance(workers, bool) or not 1 <= workers <= cores):
        raise UsageError(f"workers={workers}: must be an integer from 1 to the {cores} CPU cores of this machine")


def _received(sock: socket.socket, count: int, deadline: float, address: str) -> bytes:
    """Exactly ``count`` bytes from ``sock`` before ``deadline``; one line when the peer stops or goes quiet."""
    data = bytearray()
    while len(data) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(min(count - len(data), 1 << 16))
        if not chunk:
            raise DiffshotError(f"scheduler={address}: the peer closed the connection without a Dask handshake")
        data += chunk
    return bytes(data)


def check_scheduler(address: str, timeout: float = HANDSHAKE_TIMEOUT_S) -> None:
    """Refuse, in one line, a ``tcp://`` address where something other than a Dask scheduler answers.

    A scheduler speaks first: one small message (an 8-byte length, then its handshake, which names
    ``compression`` and ``pickle-protocol``). That length is checked before anything is read into
    memory, so a peer that declares exabytes, sends garbage or stays silent is refused within ``timeout``
    (Dask's own client would trust the length). Other schemes (tls://, ucx://) are left to Dask.
    """
    scheme, _, rest = address.rpartition("://")
    if scheme not in ("", "tcp"):
        return
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"scheduler={address}: expected tcp://HOST:PORT")
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            size = int.from_bytes(_received(sock, 8, deadline, address), "little")
            if not 0 < size <= MAX_HANDSHAKE_BYTES:
                raise DiffshotError(
                    f"scheduler={address}: not a Dask scheduler (its first message declares {size:,} bytes; "
                    f"a scheduler's handshake is under {MAX_HANDSHAKE_BYTES:,})"
                )
            body = _received(sock, size, deadline, address)
    except TimeoutError:
        raise DiffshotError(
            f"scheduler={address}: no Dask handshake within {timeout:g} s; not a Dask scheduler"
        ) from None
    except OSError as exc:
        raise DiffshotError(
            f"scheduler={address}: cannot connect to a Dask scheduler ({exc.strerror or type(exc).__name__})"
        ) from None
    if b"compression" not in body or b"pickle-protocol" not in body:
        raise DiffshotError(f"scheduler={address}: not a Dask scheduler (it answered with something else)")


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, threads: int | None = None) -> Iterator[Any]:
    """A Client on the cluster at ``scheduler``, or on a LocalCluster of ``workers`` processes, ``threads`` each."""
    distributed = require_distributed()
    check_workers(workers)
    if scheduler is not None:
        check_scheduler(scheduler)
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise DiffshotError(f"scheduler={scheduler}: cannot connect to a Dask scheduler ({exc})") from None
        with client:
            yield client
        return
    import logging

    import dask

    count = str(threads or 1)
    env = {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "OPENBLAS_NUM_THREADS": count}
    # Dask's default MALLOC_TRIM_THRESHOLD_=65536 hands freed tensors back to the system at once: one ptmap
    # setting ran 1.4-1.7x slower on such a worker than on one without it (measured on the loaded 2-core machine).
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {**env, "MALLOC_TRIM_THRESHOLD_": None}}):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            env=env,
        )
    with cluster, distributed.Client(cluster) as client:
        yield client


def run_suite_dask(
    entries: list[Entry],
    client: Any,
    device: str = "cpu",
    skip_missing: bool = False,
    threads: int | None = None,
    on_setting: SettingDone | None = None,
    allow_external: bool = False,
) -> list[Outcome]:
    """Run every setting of the suite on ``client``'s cluster and assemble one Outcome per entry.

    Missing files fail before anything is submitted, or are skipped when asked, as in the serial run.
    """
    distributed = require_distributed()
    for entry in entries:
        if not entry.features.is_file() and not skip_missing:
            raise SuiteError(f"entry {entry.name!r}: key 'features': {entry.features}: no such file")
    work = settings_of(entries)
    futures = {}
    for entry, setting in work:
        request = dataclasses.replace(
            entry.request, features=entry.features.resolve(), device=device, allow_external=allow_external
        )
        future = client.submit(run_setting, request, setting.index, setting.shots, threads, pure=False)
        futures[future] = (entry, setting)
    done: dict[Setting, SettingResult | str] = {}
    for count, future in enumerate(distributed.as_completed(futures), start=1):
        entry, setting = futures[future]
        try:
            done[setting] = future.result()
        except Exception as exc:
            done[setting] = failure_text(exc)
        if on_setting is not None:
            on_setting(count, len(work), setting.name)
    for result in done.values():
        if isinstance(result, SettingResult):
            for message in result.warnings:
                warnings.warn(message, stacklevel=2)
    outcomes = []
    for entry in entries:
        if not entry.features.is_file():
            outcomes.append(Outcome(entry, None, f"features file {entry.features} not found"))
            continue
        mine = [(s, done[s]) for e, s in work if e is entry]
        runs = [r.run for _, r in mine if isinstance(r, SettingResult)]
        errors = {s.label: r for s, r in mine if isinstance(r, str)}
        outcomes.append(Outcome(entry, assemble(entry, runs, device), errors=errors))
    return outcomes
