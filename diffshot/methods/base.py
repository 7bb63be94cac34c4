"""What a method is: a name, its documented parameters with defaults, and a batched scoring function."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import torch

from diffshot.episodes import Episodes
from diffshot.errors import DiffshotError

Scores = torch.Tensor  # [E, nq, ways], higher means more likely
ParamValue = bool | int | float | str


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyper-parameter: its default (which fixes its type), what it does, and allowed values."""

    name: str
    default: ParamValue
    help: str
    choices: tuple[str, ...] = ()
    allow_auto: bool = False
    minimum: float | None = None

    def parse(self, value: object) -> ParamValue:
        """Convert a user value (from the CLI or a TOML file) to this parameter's type, or fail clearly."""
        if self.allow_auto and value == "auto":
            return "auto"
        kind = type(self.default) if self.default != "auto" else int
        try:
            if kind is bool:
                return _parse_bool(value)
            if kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                parsed: ParamValue = int(value)  # type: ignore[arg-type]
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError
                parsed = float(value)  # type: ignore[arg-type]
            else:
                parsed = str(value)
        except (TypeError, ValueError):
            expected = kind.__name__ + (" or 'auto'" if self.allow_auto else "")
            raise DiffshotError(f"parameter {self.name}: expected {expected}, got {value!r}") from None
        if self.choices and parsed not in self.choices:
            raise DiffshotError(f"parameter {self.name}: {parsed!r} is not one of {', '.join(self.choices)}")
        if self.minimum is not None and isinstance(parsed, int | float) and parsed < self.minimum:
            raise DiffshotError(f"parameter {self.name}: must be at least {self.minimum:g}, got {parsed}")
        return parsed


def _parse_bool(value: object) -> bool:
    """true/false, yes/no, on/off, 1/0 (case-insensitive) or a real bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(value)


@dataclasses.dataclass(frozen=True)
class Method:
    """A few-shot classifier: ``score(episodes, params)`` returns query scores [E, nq, ways]."""

    name: str
    summary: str
    params: tuple[Param, ...]
    score: Callable[[Episodes, Mapping[str, ParamValue]], Scores]
    transductive: bool = False

    def resolve(self, overrides: Mapping[str, object] | None = None) -> dict[str, ParamValue]:
        """Defaults updated with ``overrides``; unknown names are an error naming the method."""
        known = {p.name: p for p in self.params}
        values: dict[str, ParamValue] = {p.name: p.default for p in self.params}
        for key, value in (overrides or {}).items():
            name = key.replace("-", "_")
            if name not in known:
                options = ", ".join(known) or "none"
                raise DiffshotError(f"method {self.name} has no parameter {key!r} (it has: {options})")
            values[name] = known[name].parse(value)
        return values
