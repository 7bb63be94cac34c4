"""Tuned configurations as TOML: one table per method, holding that method's parameters.

```toml
[diffusion]
step_size = 0.5
layers = 6
n_top = "auto"
```

Values must have the parameter's TOML type (bool, integer, float — an integer is accepted —,
string; ``"auto"`` where a parameter allows it) and pass the method's own checks.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from diffshot.atomic import write_text_atomic
from diffshot.errors import DiffshotError
from diffshot.methods import REGISTRY, get_method
from diffshot.methods.base import Param, ParamValue


def load_toml(path: str | os.PathLike[str]) -> dict[str, object]:
    """Parse a TOML file, with one-line errors for a missing, unreadable or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise DiffshotError(f"{p}: no such file")
    try:
        with open(p, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise DiffshotError(f"{p}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise DiffshotError(f"{p}: cannot read ({exc.strerror})") from None


def _type_ok(param: Param, value: object) -> bool:
    """Whether a TOML value has the parameter's type."""
    if param.allow_auto and value == "auto":
        return True
    kind = int if param.default == "auto" else type(param.default)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)


def _type_name(param: Param) -> str:
    """The expected TOML type of a parameter, in words."""
    kind = int if param.default == "auto" else type(param.default)
    name = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[kind]
    return name + (' or "auto"' if param.allow_auto else "")


def validate_method_params(name: str, params: object, where: str) -> dict[str, ParamValue]:
    """Check one method table: known method, known keys, right types and values; ``where`` prefixes errors."""
    if name not in REGISTRY:
        raise DiffshotError(f"{where}: unknown method {name!r} (known: {', '.join(REGISTRY)})")
    if not isinstance(params, Mapping):
        raise DiffshotError(f"{where}: {name!r} must be a table of parameters")
    method = get_method(name)
    known = {p.name: p for p in method.params}
    for key, value in params.items():
        param = known.get(key)
        if param is None:
            options = ", ".join(known) or "none"
            raise DiffshotError(f"{where}: unknown key {name}.{key} (method {name} has: {options})")
        if not _type_ok(param, value):
            raise DiffshotError(f"{where}: {name}.{key} must be {_type_name(param)}, got {value!r}")
    try:
        method.resolve(params)
    except DiffshotError as exc:
        raise DiffshotError(f"{where}: {name}: {exc}") from None
    return dict(params)


def read_config(path: str | os.PathLike[str]) -> dict[str, dict[str, object]]:
    """Method name → parameters from a tuned TOML config; one-line errors for unknown keys or wrong types."""
    data = load_toml(path)
    return {name: validate_method_params(name, table, str(path)) for name, table in data.items()}


def _toml_value(value: object) -> str:
    """A TOML literal for a bool, int, float or string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_config(config: Mapping[str, Mapping[str, object]], comments: Sequence[str] = ()) -> str:
    """The TOML text of a config (comments first, one ``# ...`` line each)."""
    lines = [f"# {c}" for c in comments]
    for name, params in config.items():
        lines += ["", f"[{name}]"] if lines else [f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def write_config(
    path: str | os.PathLike[str], config: Mapping[str, Mapping[str, object]], comments: Sequence[str] = ()
) -> Path:
    """Validate and write a config atomically; it reads back equal with :func:`read_config`."""
    for name, params in config.items():
        validate_method_params(name, params, str(path))
    return write_text_atomic(path, render_config(config, comments))
