"""Run the real diffshot CLI on a hostile input in a subprocess and check it failed the way the contract promises.

A probe asserts: the exit code; stderr is exactly one ``error: ...`` line (warnings allowed only when asked);
no Python traceback, and no "internal error" line from the last-resort handler (a probe never leans on it);
every input file's bytes are unchanged; and no canary file appeared (a payload that runs code creates one).
Shared by every hostile test module; one runner, ``run_cli``, for all of them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
TIMEOUT_S = 300


def _env() -> dict[str, str]:
    """The environment for a CLI run: one thread, no colour, wide lines, the checkout importable."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        NO_COLOR="1",
        TERM="dumb",
        COLUMNS="400",
        PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
    )
    return env


def run_cli(
    *args: object, cwd: Path | None = None, user: int | None = None, timeout: float = TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """``python -m diffshot ARGS`` with captured text output (as uid/gid ``user`` when given: only root can do that)."""
    return subprocess.run(
        [*_as_user(user), sys.executable, "-m", "diffshot", *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )


def _as_user(user: int | None) -> list[str]:
    """The command prefix that runs a child as uid/gid ``user`` with no supplementary groups (util-linux setpriv)."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]


def _fingerprint(paths: Iterable[Path]) -> dict[Path, str | None]:
    """SHA-256 of each path's bytes (through symlinks); None for what cannot be read (links to nothing, folders)."""
    prints: dict[Path, str | None] = {}
    for path in paths:
        try:
            prints[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            prints[path] = None
    return prints


def probe(
    args: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path,
    inputs: Iterable[Path] = (),
    canaries: Iterable[Path] = (),
    code: int = 1,
    contains: Iterable[str] = (),
    allow_warnings: bool = False,
    user: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI and assert the contract for a refused input; return the result for further checks.

    ``contains`` are substrings the error line must hold (the file name, the reason).
    """
    inputs, canaries = list(inputs), list(canaries)
    before = _fingerprint(inputs)
    result = run_cli(*args, cwd=cwd, user=user)
    detail = f"args={list(map(str, args))}\nexit={result.returncode}\nstderr:\n{result.stderr}"
    detail += f"\nstdout:\n{result.stdout[-2000:]}"
    assert result.returncode == code, detail
    assert "Traceback" not in result.stderr + result.stdout, detail
    assert "internal error in" not in result.stderr, f"a bug reached the last-resort handler\n{detail}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if allow_warnings:
        lines = [line for line in lines if not line.startswith("warning: ")]
    if code != 0:
        assert len(lines) == 1 and lines[0].startswith("error: "), detail
        for text in contains:
            assert text in lines[0], f"{text!r} not in the error line\n{detail}"
    else:
        assert not lines, detail
    assert _fingerprint(inputs) == before, f"an input changed\n{detail}"
    for canary in canaries:
        assert not Path(canary).exists(), f"canary {canary} was created\n{detail}"
    return result


@functools.cache
def can_drop_to(uid: int = NOBODY) -> bool:
    """Whether this process may run a child as ``uid`` (it is root, and the child can import diffshot there)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    try:
        done = subprocess.run(
            [*_as_user(uid), sys.executable, "-c", "import diffshot"],
            cwd="/",
            env=_env(),
            capture_output=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def snapshot(*paths: Path) -> dict[Path, bytes]:
    """The bytes of each file, to compare after a probe."""
    return {path: path.read_bytes() for path in paths}


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """The command succeeded without a traceback."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def assert_refused(
    result: subprocess.CompletedProcess[str],
    *needles: str,
    code: int = 1,
    unchanged: dict[Path, bytes] | None = None,
    canary: Path | None = None,
) -> str:
    """Exit ``code``, stderr exactly one ``error:`` line holding every needle, inputs intact, no canary; the line."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert "internal error in" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    for path, data in (unchanged or {}).items():
        assert path.read_bytes() == data, f"{path} was changed"
    if canary is not None:
        assert not canary.exists(), f"canary {canary} was created"
    return lines[0]


__all__ = ["NOBODY", "assert_ok", "assert_refused", "can_drop_to", "probe", "run_cli", "snapshot"]
