"""Rendering results for people (rich tables on stdout) and machines (JSON, CSV on stdout).

Messages and progress go to stderr so stdout stays parseable.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table
from rich.text import Text

# emoji=False: a file named ":cat:.png" must be printed as such, not as a cat.
err_console = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: object) -> str:
    """Escape control characters (a newline is legal in a file name) so one message stays one line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def missing(value: Any) -> bool:
    """A value with nothing to show: None, or a float that is not a number (NaN, ±inf)."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _json_safe(value: Any) -> Any:
    """NaN / ±inf (not valid JSON) become null, at any depth."""
    if isinstance(value, float):
        return None if missing(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def emit_json(payload: dict[str, Any]) -> None:
    """Strict JSON on stdout: a value that is not a number (a single image's win rate…) is null."""
    sys.stdout.write(json.dumps(_json_safe(payload), indent=2, ensure_ascii=True, allow_nan=False) + "\n")
    sys.stdout.flush()


def emit_csv(header: list[str], rows: Iterable[list[Any]]) -> None:
    """CSV on stdout (header always, even without rows); a missing value is an empty field."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if missing(v) else f"{v:.6f}" if isinstance(v, float) else v for v in row])
    sys.stdout.write(buf.getvalue())
    sys.stdout.flush()


def emit_table(title: str | None, header: list[str], rows: Iterable[list[Any]]) -> None:
    """A table on stdout; a missing value shows as "-". No rows: nothing is printed (the errors on stderr
    say why), rather than an empty frame."""
    rows = list(rows)
    if not rows:
        return
    table = Table(title=None if title is None else Text(one_line(title)), title_justify="left")
    for h in header:
        table.add_column(h, overflow="fold")
    for row in rows:
        # Text cells, not str: a str cell is parsed as rich markup, and a path like "x[/]y.png" crashes it.
        table.add_row(*[Text("-" if missing(v) else f"{v:.4f}" if isinstance(v, float) else one_line(v))
                        for v in row])
    Console(highlight=False, soft_wrap=False, emoji=False).print(table)


def report_errors(errors: list[dict[str, str]]) -> None:
    """One line per failed input on stderr: `error: PATH: reason`."""
    for e in errors:
        err_console.print(f"error: {one_line(e['path'])}: {one_line(e['error'])}", markup=False)


def progress(total: int, label: str):
    """A stderr progress bar for more than a handful of images; a no-op context otherwise."""
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if total <= 8 or not err_console.is_terminal:
        return nullcontext(None)
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, transient=True)
