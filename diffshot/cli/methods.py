"""`diffshot methods`: every registered method, what it assumes, and its parameters with defaults."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from diffshot.cli.common import stdout, user_errors
from diffshot.methods import REGISTRY


def assumptions(method: object) -> str:
    """What a method declares: inductive or transductive, balance, and whether ``predict`` can run it."""
    words = ["transductive" if method.transductive else "inductive"]  # type: ignore[attr-defined]
    balance = method.assumes_balance  # type: ignore[attr-defined]
    if balance is True:
        words.append("assumes balanced query classes")
    elif callable(balance):
        words.append("some settings assume balanced query classes")
    words.append("predict: yes" if method.labels_large_tasks else "predict: no")  # type: ignore[attr-defined]
    return "; ".join(words)


@user_errors
def methods() -> None:
    """List the methods, what they assume, and their parameters with defaults and allowed values."""
    table = Table(show_lines=True)
    for column in ("method", "what it does", "parameters (default; allowed)"):
        table.add_column(column)
    for method in REGISTRY.values():
        params = "\n".join(f"{p.name} = {p.default!r} ({p.describe()}): {p.help}" for p in method.declared) or "none"
        table.add_row(method.name, escape(f"{method.summary}\n{assumptions(method)}"), escape(params))
    stdout.print(table)
