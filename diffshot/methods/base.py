"""What a method is: a typed, frozen parameter dataclass with declared constraints, and batched scoring functions.

A method's parameters are a frozen dataclass whose fields are made with :func:`param`; every value
from the CLI flags, ``--set``, a TOML config or Python goes through :meth:`Method.parse`, which
checks types, ranges, choices and ``auto`` before any work starts, with errors that name the
parameter (``diffusion.step_size``), never a command-line flag.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from diffshot.errors import UsageError

if TYPE_CHECKING:
    import torch

    from diffshot.episodes import Episodes
    from diffshot.task import Task

ParamValue = bool | int | float | str
AUTO = "auto"
_SPEC = "diffshot_param"


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyper-parameter as users see it: name, default, type, what it does, and its allowed values."""

    name: str
    default: ParamValue
    help: str
    kind: type
    choices: tuple[str, ...] = ()
    allow_auto: bool = False
    minimum: float | None = None
    maximum: float | None = None
    below: float | None = None

    def describe(self) -> str:
        """The constraint in words, e.g. ``int ≥ 2 or 'auto'``."""
        if self.choices:
            return " | ".join(self.choices)
        words = {bool: "true/false", int: "integer", float: "number", str: "text"}[self.kind]
        bounds = []
        if self.minimum is not None:
            bounds.append(f"≥ {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"≤ {self.maximum:g}")
        if self.below is not None:
            bounds.append(f"< {self.below:g}")
        return " ".join([words, *bounds]) + (" or auto" if self.allow_auto else "")

    def parse(self, value: object, owner: str = "", from_text: bool = True) -> ParamValue:
        """Convert a user value to this parameter's type and check it, or raise one line naming the parameter.

        ``from_text`` accepts strings for numbers and booleans (CLI flags, ``--set``); a TOML config
        passes ``False`` so that its values must already have the parameter's TOML type.
        """
        where = f"{owner}.{self.name}" if owner else self.name
        if self.allow_auto and value == AUTO:
            return AUTO
        parsed = _convert(self.kind, value, from_text)
        if parsed is None:
            expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.kind]
            expected += " or 'auto'" if self.allow_auto else ""
            raise UsageError(f"parameter {where}: expected {expected}, got {value!r}")
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise UsageError(f"parameter {where}: must be a finite number, got {value!r}")
        if self.choices and parsed not in self.choices:
            raise UsageError(f"parameter {where}: {parsed!r} is not one of {', '.join(self.choices)}")
        if isinstance(parsed, int | float) and not isinstance(parsed, bool):
            if self.minimum is not None and parsed < self.minimum:
                raise UsageError(f"parameter {where}: must be at least {self.minimum:g}, got {parsed}")
            if self.maximum is not None and parsed > self.maximum:
                raise UsageError(f"parameter {where}: must be at most {self.maximum:g}, got {parsed}")
            if self.below is not None and not parsed < self.below:
                raise UsageError(f"parameter {where}: must be below {self.below:g}, got {parsed}")
        return parsed


def _convert(kind: type, value: object, from_text: bool) -> ParamValue | None:
    """``value`` as ``kind`` (None when it cannot be): exact types always, strings only ``from_text``."""
    if isinstance(value, str) and kind is not str:
        if not from_text:
            return None
        return _from_text(kind, value.strip())
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, int):
            return value
        return int(value) if from_text and isinstance(value, float) and value.is_integer() else None
    if kind is float:
        return float(value) if isinstance(value, int | float) else None
    return value if isinstance(value, str) else None


def _from_text(kind: type, text: str) -> ParamValue | None:
    """A bool, int or float written as text (true/false, yes/no, on/off, 1/0 for booleans)."""
    if kind is bool:
        return {
            "true": True,
            "yes": True,
            "on": True,
            "1": True,
            "false": False,
            "no": False,
            "off": False,
            "0": False,
        }.get(text.lower())
    try:
        number = float(text)
    except ValueError:
        return None
    if kind is int:
        return int(number) if number.is_integer() and abs(number) < 2**63 else None
    return number


def param(
    default: ParamValue,
    help: str,
    *,
    kind: type | None = None,
    choices: tuple[str, ...] = (),
    auto: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> Any:
    """A parameter field for a method's frozen dataclass; ``kind`` defaults to the default's type (int for 'auto')."""
    spec = {
        "help": help,
        "kind": kind or (int if default == AUTO and not choices else type(default)),
        "choices": choices,
        "allow_auto": auto,
        "minimum": minimum,
        "maximum": maximum,
        "below": below,
    }
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def declared_params(params_type: type) -> tuple[Param, ...]:
    """The :class:`Param` of every field of a parameter dataclass, in declaration order."""
    return tuple(
        Param(field.name, field.default, **field.metadata[_SPEC])  # type: ignore[arg-type]
        for field in dataclasses.fields(params_type)
    )


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The parameters of a method that has none."""


P = TypeVar("P")


@dataclasses.dataclass(frozen=True)
class Method(Generic[P]):
    """A few-shot classifier and what it declares about itself: each command runs the hooks it declares.

    ``score(episodes, params)`` returns query scores [E, nq, ways] (higher = more likely): ``evaluate``,
    ``tune``, ``batch``. ``large_task(task, params)`` labels one large task (thousands to millions of
    queries, unequal shots; in memory or streamed from a file, see :mod:`diffshot.task`), returning a
    scorer over query row blocks: ``predict``; methods without it are refused there.
    ``layerwise(episodes, params)`` yields the points [E, n, d] the method decides on after layer 0, 1,
    2, … (a generator the caller stops): ``separability``, whose parameters are ``layer_params``.
    ``open_set(episodes, params)`` scores episodes whose queries may come from no support class
    (``evaluate --open-set``); methods without it are refused there.
    ``resolve_auto(episodes, params)`` says what ``auto`` parameters become on those episodes.
    ``grid``: ``tune``'s default grid, (parameter, values) pairs (none: the defaults alone).
    ``transductive``: uses the unlabelled queries; ``assumes_balance``: assumes equal query counts per
    class (a bool, or a function of the parameters when only some settings do).
    """

    name: str
    summary: str
    params: type[P]
    score: Callable[[Episodes, P], torch.Tensor]
    transductive: bool
    assumes_balance: bool | Callable[[P], bool] = False
    large_task: Callable[[Task, P], TaskScores] | None = None
    resolve_auto: Callable[[Episodes, P], dict[str, object]] | None = None
    open_set: Callable[[Episodes, P], OpenSetScores] | None = None
    layerwise: Callable[[Episodes, P], Iterator[torch.Tensor]] | None = None
    layer_params: tuple[str, ...] = ()
    grid: tuple[tuple[str, tuple[ParamValue, ...]], ...] = ()

    @property
    def declared(self) -> tuple[Param, ...]:
        """The method's parameters as users see them."""
        return declared_params(self.params)

    def parse(self, overrides: Mapping[str, object] | P | None = None, from_text: bool = True) -> P:
        """Defaults updated with ``overrides``, each checked; unknown names are an error naming the method."""
        if isinstance(overrides, self.params):
            return overrides
        known = {p.name: p for p in self.declared}
        values: dict[str, ParamValue] = {}
        for key, value in dict(overrides or {}).items():
            name = str(key).replace("-", "_")
            if name not in known:
                options = ", ".join(known) or "none"
                raise UsageError(f"method {self.name} has no parameter {key!r} (it has: {options})")
            values[name] = known[name].parse(value, self.name, from_text)
        params = self.params(**values)
        check = getattr(params, "check", None)
        if check is not None:
            check()
        return params

    def balance_assumed(self, params: P) -> bool:
        """Whether these parameters make the method assume balanced query classes."""
        return self.assumes_balance(params) if callable(self.assumes_balance) else self.assumes_balance

    @property
    def labels_large_tasks(self) -> bool:
        """Whether ``predict`` can run this method on one large task."""
        return self.large_task is not None

    def as_dict(self, params: P) -> dict[str, ParamValue]:
        """The parameter values by name, as the JSON, CSV and TOML outputs record them."""
        return dataclasses.asdict(params)  # type: ignore[call-overload]


@dataclasses.dataclass(frozen=True)
class TaskScores:
    """What a method gives back for one large task: query scores by row block, and how it built them."""

    block: Callable[[int, int], torch.Tensor]  # (start, stop) -> scores [stop - start, ways]
    details: dict[str, object]
    unknown: Callable[[int, int], torch.Tensor] | None = None  # (start, stop) -> unknown score [stop - start]
    support: Callable[[], torch.Tensor] | None = None  # the support rows [ns, d] where ``unknown`` is measured


@dataclasses.dataclass(frozen=True)
class OpenSetScores:
    """A method's answer on episodes whose queries may belong to no support class.

    ``unknown`` is higher for queries more likely from no support class (AUROC is computed on it);
    ``rejected`` is the method's own decision, taken without query labels.
    """

    scores: torch.Tensor  # [E, nq, ways], higher means more likely
    unknown: torch.Tensor  # [E, nq]
    rejected: torch.Tensor  # [E, nq] bool


__all__ = [
    "AUTO",
    "Method",
    "NoParams",
    "OpenSetScores",
    "Param",
    "ParamValue",
    "TaskScores",
    "declared_params",
    "param",
]
