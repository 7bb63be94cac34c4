"""`diffshot methods`: every registered method with its parameters and defaults."""

from __future__ import annotations

from rich.table import Table

from diffshot.cli.common import stdout, user_errors
from diffshot.methods import REGISTRY


@user_errors
def methods() -> None:
    """List the methods, what they assume, and their parameters with defaults."""
    table = Table(show_lines=True)
    for column in ("method", "what it does", "parameters (default)"):
        table.add_column(column)
    for method in REGISTRY.values():
        params = "\n".join(f"{p.name} = {p.default!r}: {p.help}" for p in method.params) or "none"
        table.add_row(method.name, method.summary, params)
    stdout.print(table)
