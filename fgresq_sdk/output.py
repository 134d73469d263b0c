"""Rendering results for people (rich tables on stdout) and machines (JSON, CSV on stdout).

Messages and progress go to stderr so stdout stays parseable.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=True) + "\n")
    sys.stdout.flush()


def emit_csv(header: list[str], rows: Iterable[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])
    sys.stdout.write(buf.getvalue())
    sys.stdout.flush()


def emit_table(title: str | None, header: list[str], rows: Iterable[list[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    Console(highlight=False, soft_wrap=False).print(table)


def report_errors(errors: list[dict[str, str]]) -> None:
    """One line per failed input on stderr: `error: PATH: reason`."""
    for e in errors:
        err_console.print(f"error: {e['path']}: {e['error']}", markup=False)


def progress(total: int, label: str):
    """A stderr progress bar for more than a handful of images; a no-op context otherwise."""
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if total <= 8 or not err_console.is_terminal:
        return nullcontext(None)
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)
