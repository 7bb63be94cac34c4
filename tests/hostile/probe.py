"""Run the real ``diffshot`` CLI in a subprocess and check how it fails on hostile or careless input.

A probe asserts the exit code, exactly one ``error: ...`` line on stderr, no traceback, the input files'
bytes unchanged, and that no canary file appeared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TIMEOUT_S = 180


def run_cli(*args: object, cwd: Path | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``python -m diffshot ARGS`` with captured text output, one CPU thread, and a time limit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffshot", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


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
