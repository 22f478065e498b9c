"""`mimic`: one subcommand per verb. Each is a thin shell over a plain function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mimic.config import get_settings
from mimic.store import SchemaError, Store, make_engine, open_store, upgrade

app = typer.Typer(help="mimic: learn how people and channels write on Slack, and imitate them.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _store() -> Store:
    try:
        return open_store(get_settings().database_url)
    except SchemaError as exc:
        raise _fail(str(exc)) from None


@app.command()
def init() -> None:
    """Create the database or bring it to the newest schema (safe to run again)."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    before, after = upgrade(engine)
    where = engine.url.render_as_string(hide_password=True)
    if before == after:
        console.print(f"Database {where} is up to date (revision {after}).")
    else:
        console.print(f"Database {where}: revision {before or 'empty'} → {after}.")


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="Slack export: the ZIP or its unpacked folder.")],
    include_dms: Annotated[bool, typer.Option(
        "--include-dms", help="Also store direct and group messages (never trained on).")] = False,
) -> None:
    """Import Slack's official workspace export into the store (idempotent)."""
    from exporter.importer import BadExportError, import_export

    store = _store()
    try:
        summary = import_export(store, path, include_dms=include_dms,
                                allow=get_settings().channel_allowed, progress=console)
    except BadExportError as exc:
        raise _fail(f"{exc}\nNothing was written; the store is as it was.") from None
    _print_summary(summary.title(path), summary.per_channel, summary.dropped, summary.new,
                   summary.kept)


def _print_summary(title: str, per_channel: dict[str, int], dropped: dict[str, int],
                   new: int, kept: int) -> None:
    table = Table(title=title, show_footer=True)
    table.add_column("channel", footer="total")
    table.add_column("messages kept", justify="right", footer=f"{kept:,}")
    for name, count in sorted(per_channel.items(), key=lambda kv: -kv[1]):
        table.add_row(f"#{name}", f"{count:,}")
    console.print(table)
    console.print(f"{new:,} new messages stored; {kept - new:,} were already there "
                  "(edits updated).")
    if dropped:
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in
                            sorted(dropped.items(), key=lambda kv: -kv[1]))
        console.print(f"Dropped {sum(dropped.values()):,} that are not a person's writing "
                      f"({reasons}).")


if __name__ == "__main__":
    app()
