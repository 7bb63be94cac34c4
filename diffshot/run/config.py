"""Method parameters from every source — defaults, a tuned TOML config, shared flags, ``--set``, named variants.

One parse path: every value goes through :meth:`diffshot.methods.base.Param.parse`. A TOML config
holds one table per method::

    [diffusion]
    step_size = 0.5
    layers = 6
    n_top = "auto"

Its values must have the parameter's TOML type (bool, integer, float — an integer is accepted —,
string; ``"auto"`` where a parameter allows it). An optional ``[calibration]`` table (written by
``diffshot tune``) maps a method name or variant label to its confidence temperature
(``diffusion = 0.1436``), used by ``predict`` and by ``evaluate``'s ECE. A named variant
``diffusion:assign=balanced,lam=5`` is its own row in every table and JSON document.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from diffshot.atomic import write_text_atomic
from diffshot.errors import DiffshotError, UsageError
from diffshot.methods import get_method
from diffshot.methods.base import Method

MAX_TOML_BYTES = 1 << 20
CALIBRATION_TABLE = "calibration"


@dataclasses.dataclass(frozen=True)
class MethodRun:
    """A method with checked parameters, under the label its results carry (``diffusion:assign=balanced``)."""

    label: str
    method: Method
    params: object

    def as_dict(self) -> dict[str, object]:
        """The parameter values by name."""
        return self.method.as_dict(self.params)

    def resolved(self, episodes: object) -> dict[str, object]:
        """Values that ``auto`` parameters take on these episodes (e.g. ``n_top``), for the record."""
        resolve = self.method.resolve_auto
        return {} if resolve is None else dict(resolve(episodes, self.params))  # type: ignore[arg-type]


def parse_label(text: str) -> tuple[str, dict[str, str]]:
    """``name`` or ``name:key=value,key=value`` as (method name, overrides as text)."""
    name, _, rest = text.partition(":")
    overrides: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"method {text!r}: expected NAME:PARAM=VALUE[,PARAM=VALUE], e.g. diffusion:layers=8")
        overrides[key.strip().replace("-", "_")] = value.strip()
    return name.strip(), overrides


def parse_assignments(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``METHOD.PARAM=VALUE`` strings (``--set``) as {method or variant label: {param: value}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.rpartition(".")
        if not sep or not dot or not method or not name:
            raise UsageError(f"assignment {item!r}: expected METHOD.PARAM=VALUE, e.g. diffusion.layers=8")
        get_method(parse_label(method)[0])
        out.setdefault(method, {})[name.replace("-", "_")] = value
    return out


def method_runs(
    methods: Sequence[object],
    config: Mapping[str, Mapping[str, object]] | None = None,
    shared: Mapping[str, object] | None = None,
    assignments: Mapping[str, Mapping[str, object]] | None = None,
) -> list[MethodRun]:
    """Checked runs for ``methods``: defaults < config table < shared values < variant < assignments.

    A shared value goes to every method that has the parameter; one that no method has is an
    error, and so is an assignment to a method that is not run. A repeated label runs once.
    """
    if not methods:
        raise UsageError("no method given")
    given = {k: v for k, v in (shared or {}).items() if v is not None}
    runs: dict[str, MethodRun] = {}
    used: set[str] = set()
    for entry in methods:
        if isinstance(entry, MethodRun):
            run = entry
        else:
            run = _run_of(entry, config or {}, given, assignments or {})
            used |= {p.name for p in run.method.declared} & given.keys()
        if run.label in runs:
            warnings.warn(f"method {run.label} is listed twice; it runs once", stacklevel=3)
            continue
        runs[run.label] = run
    unused = sorted(set(given) - used)
    if unused and not all(isinstance(m, MethodRun) for m in methods):
        raise UsageError(f"parameter {', '.join(unused)} is given, but none of the methods {', '.join(runs)} has it")
    stray = sorted(set(assignments or {}) - set(runs) - {run.method.name for run in runs.values()})
    if stray:
        raise UsageError(f"parameters are set for {stray[0]}, which is not among the methods run ({', '.join(runs)})")
    return list(runs.values())


def _run_of(
    entry: object,
    config: Mapping[str, Mapping[str, object]],
    shared: Mapping[str, object],
    assignments: Mapping[str, Mapping[str, object]],
) -> MethodRun:
    """One MethodRun from a label or a (name, overrides) pair, with the layered overrides."""
    if isinstance(entry, str):
        name, variant = parse_label(entry)
        label = entry if variant else name
    elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
        name, variant = entry[0], dict(entry[1])
        label = name + (":" + ",".join(f"{k}={v}" for k, v in variant.items()) if variant else "")
    else:
        raise UsageError(f"method {entry!r}: expected a name or a (name, parameters) pair")
    method = get_method(name)
    names = {p.name for p in method.declared}
    overrides: dict[str, object] = dict(config.get(name, {}))
    overrides |= {k: v for k, v in shared.items() if k in names}
    overrides |= variant
    overrides |= dict(assignments.get(name, {})) | dict(assignments.get(label, {}) if label != name else {})
    return MethodRun(label, method, method.parse(overrides))


def load_toml(path: str | os.PathLike[str]) -> dict[str, object]:
    """Parse a TOML file, with one-line errors for a missing, unreadable, oversized, non-UTF-8 or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise DiffshotError(f"{p}: no such file")
    try:
        if p.stat().st_size > MAX_TOML_BYTES:
            raise DiffshotError(f"{p}: larger than {MAX_TOML_BYTES >> 20} MiB, not a config or suite")
        text = p.read_bytes().decode("utf-8")
        return tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise DiffshotError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DiffshotError(f"{p}: not valid TOML ({exc})") from None
    except RecursionError:
        raise DiffshotError(f"{p}: nested too deeply to be a config or suite") from None
    except OSError as exc:
        raise DiffshotError(f"{p}: cannot read ({exc.strerror})") from None


def validate_method_params(name: str, params: object, where: str) -> dict[str, object]:
    """Check one method table (known method, known keys, TOML types, constraints); ``where`` prefixes errors."""
    try:
        method = get_method(name)
        if not isinstance(params, Mapping):
            raise DiffshotError(f"{name!r} must be a table of parameters")
        method.parse(params, from_text=False)
    except DiffshotError as exc:
        raise DiffshotError(f"{where}: {exc}") from None
    return dict(params)


def read_config(path: str | os.PathLike[str]) -> dict[str, dict[str, object]]:
    """Method name → parameters from a tuned TOML config; one-line errors for unknown keys or wrong types."""
    data = load_toml(path)
    calibration_table(data, str(path))
    return {
        name: validate_method_params(name, table, str(path))
        for name, table in data.items()
        if name != CALIBRATION_TABLE
    }


def calibration_table(data: Mapping[str, object], where: str) -> dict[str, float]:
    """The ``[calibration]`` table of a parsed config: method label → confidence temperature (checked)."""
    table = data.get(CALIBRATION_TABLE, {})
    if not isinstance(table, Mapping):
        raise DiffshotError(f"{where}: [{CALIBRATION_TABLE}] must be a table of method = temperature")
    out: dict[str, float] = {}
    for label, value in table.items():
        try:
            get_method(parse_label(str(label))[0])
        except DiffshotError as exc:
            raise DiffshotError(f"{where}: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise DiffshotError(f"{where}: {CALIBRATION_TABLE}.{label} must be a positive temperature, got {value!r}")
        out[str(label)] = float(value)
    return out


def read_calibration(path: str | os.PathLike[str]) -> dict[str, float]:
    """The confidence temperatures of a tuned config's ``[calibration]`` table (empty when it has none)."""
    return calibration_table(load_toml(path), str(path))


def _toml_value(value: object) -> str:
    """A TOML literal for a bool, int, float or string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _toml_key(key: str) -> str:
    """A TOML key: bare when it is letters, digits, ``_`` and ``-``, else quoted (variant labels)."""
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_value(key)


def render_config(
    config: Mapping[str, Mapping[str, object]],
    comments: Sequence[str] = (),
    calibration: Mapping[str, float] | None = None,
) -> str:
    """The TOML text of a config (comments first, one ``# ...`` line each; then ``[calibration]`` if given)."""
    lines = [f"# {c}" for c in comments]
    for name, params in config.items():
        lines += ["", f"[{name}]"] if lines else [f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in params.items()]
    if calibration:
        lines += ["", f"[{CALIBRATION_TABLE}]"] if lines else [f"[{CALIBRATION_TABLE}]"]
        lines += [f"{_toml_key(label)} = {_toml_value(float(t))}" for label, t in calibration.items()]
    return "\n".join(lines) + "\n"


def write_config(
    path: str | os.PathLike[str],
    config: Mapping[str, Mapping[str, object]],
    comments: Sequence[str] = (),
    calibration: Mapping[str, float] | None = None,
) -> Path:
    """Validate and write a config atomically; it reads back with :func:`read_config` and :func:`read_calibration`."""
    for name, params in config.items():
        validate_method_params(name, params, str(path))
    calibration_table({CALIBRATION_TABLE: dict(calibration or {})}, str(path))
    return write_text_atomic(path, render_config(config, comments, calibration))
