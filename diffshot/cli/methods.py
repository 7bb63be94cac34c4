"""`diffshot methods`: every registered method, what it assumes, and its parameters with defaults."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from diffshot.cli.common import Quiet, stdout, user_errors
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


WIDE = 120  # from this width on, parameters get a column of their own; below, they follow the description


@user_errors
def methods(quiet: Quiet = False) -> None:
    """List the methods, what they assume, and their parameters with defaults and allowed values."""
    wide = (stdout.width or WIDE) >= WIDE
    table = Table(show_lines=True)
    table.add_column("method", no_wrap=True)
    table.add_column("what it does" if wide else "what it does; parameters (default; allowed)")
    if wide:
        table.add_column("parameters (default; allowed)")
    for method in REGISTRY.values():
        params = "\n".join(f"{p.name} = {p.default!r} ({p.describe()}): {p.help}" for p in method.declared) or "none"
        about = escape(f"{method.summary}\n{assumptions(method)}")
        cells = [about, escape(params)] if wide else [f"{about}\nparameters: {escape(params)}"]
        table.add_row(method.name, *cells)
    stdout.print(table)
