"""`mimic`: one subcommand per verb. Each is a thin shell over a plain function."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from mimic.core.config import get_settings
from mimic.core.store import (
    Channel,
    SchemaError,
    Store,
    User,
    make_engine,
    open_store,
    upgrade,
)

if TYPE_CHECKING:
    from mimic.trainer.corpus import Target

app = typer.Typer(help="mimic: learn how people and channels write on Slack, and imitate them.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@app.callback()
def _settings_first() -> None:
    """Read the settings before any command: a bad one is named, not a traceback."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors())
        raise _fail(f"a setting in the environment or .env is wrong ({problems}); see "
                    ".env.example.") from None


def _stop_on_lost_lock() -> None:
    """The retrain lock's database connection closed mid-run: another process may now take it
    and train, so this run stops at once, publishing nothing more (the registry writes whole
    versions or none), as the bot's run does."""
    import os
    import signal

    err.print("[bold red]error:[/] lost the retrain lock (its database connection closed): "
              "stopping, so that two runs never train at once. Run the command again.")
    os.kill(os.getpid(), signal.SIGTERM)


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
    from mimic.exporter.importer import BadExportError, import_export

    store = _store()
    try:
        summary = import_export(store, path, include_dms=include_dms,
                                allow=get_settings().channel_allowed, progress=console)
    except BadExportError as exc:
        raise _fail(f"{exc}\nNothing was written; the store is as it was.") from None
    except SQLAlchemyError as exc:
        raise _fail(f"The store refused the import ({getattr(exc, 'orig', None) or exc}). "
                    "Nothing was written; the store is as it was.") from None
    _print_summary(summary.title(path), summary.per_channel, summary.dropped, summary.new,
                   summary.kept)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Where to write the demo export ZIP.")],
    limit: Annotated[int | None, typer.Option(
        "--limit", help="Only the first N conversations (all 7,168 by default).")] = None,
    seed: Annotated[int, typer.Option(help="Another seed gives another channel layout.")] = 0,
) -> None:
    """Build a Slack export ZIP from the chitchat dataset, to try `mimic import` on."""
    from mimic.exporter.demo_data import DemoDataError, build_demo_export

    try:
        stats = build_demo_export(out, seed=seed, limit_conversations=limit)
    except DemoDataError as exc:
        raise _fail(str(exc)) from None
    console.print(f"Wrote {out}: {stats.users:,} users (+1 bot), {stats.channels} channels "
                  f"(private: #{stats.private_channel}), {stats.messages:,} messages from "
                  f"{stats.conversations:,} conversations, plus {stats.joins:,} joins and "
                  f"{stats.bot_messages:,} bot posts that `mimic import` drops.")


@app.command()
def export(
    channel: Annotated[list[str] | None, typer.Option(
        "--channel", help="Only this channel (repeatable), e.g. --channel general.")] = None,
    include_archived: Annotated[bool, typer.Option(
        "--include-archived", help="Also export archived channels.")] = False,
    full: Annotated[bool, typer.Option(
        "--full", help="Re-fetch all history, not just what is new (picks up old edits).")] = False,
) -> None:
    """Fetch history through the Slack Web API (incremental and resumable)."""
    from mimic.exporter.webapi import SlackExportError, export_workspace

    store = _store()
    try:
        summary = export_workspace(store, get_settings(), channels=channel,
                                   include_archived=include_archived, full=full,
                                   progress=console)
    except SlackExportError as exc:
        raise _fail(str(exc)) from None
    _print_summary(summary.title(), summary.per_channel, summary.dropped, summary.new,
                   summary.kept)


def _show_table(title: str, headers: list[str], rows: list[list[str]],
                footer: list[str] | None = None) -> None:
    """A table whose first column holds identifiers, which are never cut short. On a
    terminal, rich's; piped (`mimic models | grep alice`), plain aligned columns."""
    every = [headers, *rows, *([footer] if footer else [])]
    if not console.is_terminal:
        widths = [max(len(row[i]) for row in every) for i in range(len(headers))]
        console.print(title, markup=False, highlight=False, soft_wrap=True)
        for row in every:
            line = "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
            console.print(line.rstrip(), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=title, show_footer=footer is not None)
    for i, header in enumerate(headers):
        table.add_column(header, footer=footer[i] if footer else "",
                         justify="left" if i == 0 else "right",
                         no_wrap=i == 0, min_width=max(len(r[0]) for r in every) if i == 0
                         else None)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _print_summary(title: str, per_channel: dict[str, int], dropped: dict[str, int],
                   new: int, kept: int) -> None:
    _show_table(title, ["channel", "messages kept"],
                [[f"#{name}", f"{count:,}"] for name, count in
                 sorted(per_channel.items(), key=lambda kv: -kv[1])], ["total", f"{kept:,}"])
    console.print(f"{new:,} new or edited messages stored; {kept - new:,} were already "
                  "there unchanged.")
    if dropped:
        reasons = ", ".join(f"{reason}: {n:,}" for reason, n in
                            sorted(dropped.items(), key=lambda kv: -kv[1]))
        console.print(f"Dropped {sum(dropped.values()):,} that are not a person's writing "
                      f"({reasons}).")


# -- training and the model registry ---------------------------------------------------------


def _resolve(store: Store, names: list[str]) -> list[Target]:
    from mimic.trainer.corpus import TargetError, resolve

    with store.session() as session:
        try:
            return [resolve(session, name) for name in names]
        except TargetError as exc:
            raise _fail(str(exc)) from None


@app.command()
def train(
    targets: Annotated[list[str] | None, typer.Argument(
        help="People and channels to give a dedicated model (fine-tuned from the workspace "
             "model), e.g. @alice #secret-plans.")] = None,
    base: Annotated[bool, typer.Option("--base", help=(
        "Train the workspace model: one model for everyone with at least MIMIC_MIN_CHARS "
        "characters, conditioned on who writes and where."))] = False,
    all_: Annotated[bool, typer.Option("--all", help=(
        "The workspace model (if its data changed), then the dedicated models: private "
        "channels with enough text and the MIMIC_DEDICATED people with the most."))] = False,
    force: Annotated[bool, typer.Option("--force", help="With --all: retrain unchanged "
                                        "dedicated models too.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="With --base: from scratch, instead of "
                                        "continuing from the active workspace model.")] = False,
    minutes: Annotated[float | None, typer.Option(help=(
        "Time budget per model (default MIMIC_BASE_MINUTES / MIMIC_TARGET_MINUTES)."))] = None,
    nproc: Annotated[int | None, typer.Option(min=1, help=(
        "Train in this many processes (torchrun workers; one per GPU on GPUs) "
        "(default MIMIC_NPROC)."))] = None,
) -> None:
    """Train models: the workspace model for everyone, and dedicated ones on request."""
    store, settings = _store(), get_settings()  # before torch loads, as `models`
    from mimic.core.lock import Busy, retrain_lock
    from mimic.trainer.corpus import BASE
    from mimic.trainer.device import pick_device
    from mimic.trainer.distributed import DistributedError, check
    from mimic.trainer.fit import TrainConfig
    from mimic.trainer.train import TrainError, retrain_changed
    from mimic.trainer.train import train as train_one

    if minutes is not None:
        settings = settings.model_copy(update={"base_minutes": minutes,
                                               "target_minutes": minutes})
    if nproc is not None:
        settings = settings.model_copy(update={"nproc": nproc})
    try:  # before anything is read or trained
        check(settings.nproc, TrainConfig(), pick_device(settings.device))
    except DistributedError as exc:
        raise _fail(str(exc)) from None
    chosen = [] if all_ else ([BASE] if base else []) + _resolve(store, targets or [])
    if not all_ and not chosen:
        raise _fail("Say what to train: `mimic train --base`, `mimic train @alice #random` "
                    "or `mimic train --all`.")
    # One trainer at a time per data folder, whichever command starts it (the bot's retrain
    # and the demo take the same lock): two would race for the same version numbers.
    try:
        with retrain_lock(settings, on_lost=_stop_on_lost_lock):
            if all_:
                retrain_changed(store, settings, force=force, console=console,
                                report=lambda o: console.print(o.describe()))
                return
            for target in chosen:
                try:
                    console.print(train_one(store, settings, target, console=console,
                                            fresh=fresh).describe())
                except (TrainError, DistributedError) as exc:
                    raise _fail(str(exc)) from None
    except Busy as exc:
        raise _fail(f"{exc} (`mimic train` and the nightly retraining share one lock.)") from None


@app.command()
def models(
    covered: Annotated[bool, typer.Option("--covered", help=(
        "List who the active workspace model imitates: each person and channel with its "
        "held-out loss in its own voice and as anyone."))] = False,
) -> None:
    """List model versions: which is active, its loss, data and device."""
    store = _store()  # a database that cannot be used is said before torch loads (~2 s)
    from mimic.core.store import Coverage
    from mimic.trainer.corpus import BASE
    from mimic.trainer.registry import active_version, versions

    with store.session() as session:
        labels = _labels(session)
        shared = active_version(session, BASE.key)
        coverage = session.scalars(select(Coverage).where(Coverage.version_id == shared.id)
                                   .order_by(Coverage.chars.desc())).all() \
            if shared is not None else []
        if not covered:
            rows = [[labels.get(v.target, v.target), f"v{v.version}", v.status,
                     f"{v.val_loss:.3f}", f"{v.chars_trained:,}", v.device,
                     f"{v.seconds:.0f}", f"{v.created_at:%Y-%m-%d %H:%M}"]
                    for v in versions(session)]
    if covered:
        if shared is None:
            raise _fail("There is no active workspace model: `mimic train --base`.")

        def loss(value: float | None) -> str:
            return "—" if value is None else f"{value:.3f}"

        _show_table(f"workspace model v{shared.version} imitates {len(coverage)}",
                    ["target", "chars", "held-out", "own voice", "as anyone"],
                    [[labels.get(c.target, c.target), f"{c.chars:,}", f"{c.val_chars:,}",
                      loss(c.val_loss), loss(c.val_loss_anyone)] for c in coverage])
        return
    _show_table("models", ["target", "version", "status", "val loss", "chars trained",
                           "device", "seconds", "created"], rows)
    if shared is not None:
        people = sum(c.target.startswith("user:") for c in coverage)
        console.print(f"The workspace model v{shared.version} imitates {people} people and "
                      f"{len(coverage) - people} channels (`mimic models --covered` lists "
                      "them).")


def _labels(session: Session) -> dict[str, str]:

    labels = {"base": "workspace"}
    labels |= {f"user:{u.id}": f"@{u.name}" for u in session.scalars(select(User))}
    labels |= {f"channel:{c.id}": f"#{c.name}" for c in session.scalars(select(Channel))}
    return labels


@app.command()
def rollback(target: Annotated[str, typer.Argument(help="@person, #channel or base.")]) -> None:
    """Re-activate the previous version of a target's model."""
    from mimic.trainer.registry import RegistryError
    from mimic.trainer.registry import rollback as roll

    store = _store()
    (chosen,) = _resolve(store, [target])
    try:
        now, was = roll(store, chosen)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    console.print(f"{chosen.label}: v{now.version} is active again (v{was.version} retired).")


@app.command()
def sample(
    target: Annotated[str, typer.Argument(help="@person or #channel with an active model, or "
                                          "base: the workspace model in nobody's voice.")],
    temp: Annotated[float | None, typer.Option("--temp", help="Temperature, above 0 and at "
                                               "most 2: higher is wilder, lower is safer "
                                               "(default: the bot's).")] = None,
    seed: Annotated[str, typer.Option("--seed", help="Text each message starts with, e.g. "
                                      "--seed \"I think we should\".")] = "",
    n: Annotated[int, typer.Option("-n", min=1, max=20, help="How many messages.")] = 3,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="Draw only from the k "
                                              "likeliest characters.")] = None,
) -> None:
    """Write new messages in a person's or channel's voice, as the bot would (novel, inert)."""
    from mimic.trainer.corpus import may_have_model, recent

    store, settings = _store(), get_settings()
    (chosen,) = _resolve(store, [target])
    if temp is not None and not 0 < temp <= 2:
        raise _fail(f"--temp {temp:g} is out of range: use a number above 0 and at most 2, "
                    "e.g. --temp 0.8.")
    with store.session() as session:
        if not may_have_model(session, settings, chosen):
            raise _fail(f"{chosen.label} has opted out of mimic (or not opted in): nobody "
                        "imitates them.")
    # Only now torch (seconds): a mistyped name or temperature is told at once.
    from mimic.bot.replies import PRIMING_MESSAGES
    from mimic.trainer.device import pick_device
    from mimic.trainer.registry import RegistryError, load_served, serving
    from mimic.trainer.sampler import DEFAULT_TEMPERATURE, NoNovelText, reply

    temp = DEFAULT_TEMPERATURE if temp is None else temp
    with store.session() as session:
        found = serving(session, chosen)
        context = recent(session, settings, chosen, PRIMING_MESSAGES)
    if found is None:
        raise _fail(f"{chosen.label} has no model yet: `mimic train --all` (or `mimic train "
                    f"{chosen.label}` for a dedicated one).")
    device = pick_device(settings.device)
    try:
        loaded = load_served(settings.data_dir, found, device, chosen.label)
    except RegistryError as exc:
        raise _fail(str(exc)) from None
    try:
        result = reply(loaded, chosen.key, n=n, temperature=temp, top_k=top_k,
                       seed_text=seed, context=context, device=device)
    except NoNovelText as exc:
        raise _fail(f"{chosen.label}: {exc}.") from None
    which = "workspace model" if found.row.target == "base" else "own model"
    console.print(f"[dim]{chosen.label} · {which} v{found.row.version} · temp {temp:g}"
                  + (f" · {result.rejected} drawn copies refused" if result.rejected else "")
                  + "[/]")
    for text in result.texts:
        console.print(text, markup=False, highlight=False, soft_wrap=True)


@app.command()
def forget(person: Annotated[str, typer.Argument(help="The @person to forget.")]) -> None:
    """Opt a person out for good: delete their models and stored messages now.

    Channel and base models that learned from them are retrained without them at the next
    run."""
    from mimic.trainer.privacy import opt_out

    store = _store()
    (target,) = _resolve(store, [person])
    if target.kind != "user":
        raise _fail(f"{person} is not a person: `mimic forget @handle`.")
    removed = opt_out(store, get_settings().data_dir, target.ident, forget=True)
    console.print(f"{target.label} is opted out; {removed} model versions and all their stored "
                  "messages are deleted. Channel and base models are retrained without them at "
                  "the next run.")


@app.command("eval")
def eval_(
    targets: Annotated[list[str] | None, typer.Argument(help=(
        "People and channels to evaluate (default: the --people biggest people imitated; "
        "channels named here are added to them)."))] = None,
    samples: Annotated[int, typer.Option(
        "--samples", min=1, help="Messages to generate per target (scored in groups of "
        "five).")] = 100,
    people: Annotated[int, typer.Option(
        "--people", min=2, help="How many people when none are named.")] = 10,
    chars: Annotated[str | None, typer.Option(
        "--chars", metavar="MIN-MAX", help="Draw the --people at random (by --seed) from those "
        "with MIN to MAX characters, e.g. --chars 1000-20000, instead of the biggest.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the samples, for reproducible runs.")] = 0,
    context: Annotated[str, typer.Option(
        "--context", help="What each message reads first: 'own' (the target's last "
        "messages, as /mimic does) or 'conversation' (the channel's messages before one of "
        "their held-out messages, answered as a mention in a thread is).")] = "own",
) -> None:
    """Measure the models: held-out loss, style fidelity, what a reader sees, and leaks.

    Against real held-out messages and a markovify baseline; writes
    MIMIC_DATA_DIR/reports/<date>/report.md, its plots, and report.json (the figures
    unrounded)."""
    from datetime import date

    from mimic.trainer.report import (
        READER,
        EvalError,
        default_targets,
        drift,
        evaluate_targets,
        number,
        percent,
        random_targets,
        write_report,
    )

    if context not in ("own", "conversation"):
        raise _fail(f"--context {context}: use 'own' or 'conversation'.")
    store, settings = _store(), get_settings()
    chosen = _resolve(store, targets or [])
    if not any(t.kind == "user" for t in chosen):
        if chars is not None:
            try:
                low, high = (int(part.replace(",", "")) for part in chars.split("-"))
            except ValueError:
                raise _fail(f"--chars {chars}: give a range like 1000-20000.") from None
            drawn = random_targets(store, settings, people, low, high, seed)
            if len(drawn) < 2:
                raise _fail(f"Only {len(drawn)} people imitated have {low:,}–{high:,} "
                            "characters: widen --chars.")
            chosen = drawn + chosen
        else:
            chosen = default_targets(store, settings, people) + chosen
    try:
        with console.status("evaluating…") as status:
            report = evaluate_targets(store, settings, chosen, samples=samples, seed=seed,
                                      progress=lambda msg: status.update(msg),
                                      context=context)  # type: ignore[arg-type]
    except EvalError as exc:
        raise _fail(str(exc)) from None
    path = write_report(report, settings.data_dir / "reports" / date.today().isoformat())

    def loss(value: float | None) -> str:
        return number(value)

    # (header, figure, format): model figures sit beside the real held-out ones.
    columns = [("loss", "val_loss", loss), ("as anyone", "anyone_loss", loss),
               ("fidelity", "fidelity_model", percent), ("real", "fidelity_real", percent)]
    for _title, short, name, fmt in READER:
        columns += [(short, f"model.{name}", fmt), ("real", f"real.{name}", fmt)]
    columns += [("leaks", "leak_filtered", percent)]
    overall = report.overall()
    _show_table(f"mimic eval · {samples} samples · seed {seed}",
                ["target", *(c[0] for c in columns)],
                [[f"{row.target.label} ({row.which} v{row.version})",
                  *(fmt(row.figure(name)) for _t, name, fmt in columns)]
                 for row in report.rows],
                ["mean", *(fmt(overall[name]) for _t, name, fmt in columns)])
    for note in report.notes:
        console.print(f"· {note}")
    trained = [(short, fmt, overall[name.replace("model.", "trained.")])
               for short, name, fmt in columns if name.startswith("model.")]
    console.print("· Their training messages (what the models learned from): " + ", ".join(
        f"{short} {fmt(value)}" for short, fmt, value in trained if value is not None) + ".")
    for sentence in drift(report):
        console.print(f"· {sentence}")
    if (overall["fidelity_model"] or 0) > (overall["fidelity_real"] or 1):
        console.print("· Fidelity is above the real ceiling: more typical than the people.")
    console.print(f"Report: {path}")


@app.command()
def demo(
    minutes: Annotated[float, typer.Option(help="Training time budget in minutes: half for "
                                           "the base model, half for the people and "
                                           "channels.")] = 5.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over: rebuild, re-import and "
                                        "retrain everything.")] = False,
    folder: Annotated[Path, typer.Option(help="Where the demo keeps its database and models "
                                         "(apart from your workspace's).")] = Path("data/demo"),
    limit: Annotated[int | None, typer.Option(help="Use only the first N conversations "
                                              "(a smaller, faster demo).")] = None,
) -> None:
    """The whole loop on real chat data, no Slack needed: build, import, train, answer."""
    from mimic.core.lock import Busy
    from mimic.demo import run_demo
    from mimic.exporter.demo_data import DemoDataError

    try:
        run_demo(get_settings(), folder, minutes=minutes, fresh=fresh, console=console,
                 limit=limit)
    except (DemoDataError, Busy) as exc:
        raise _fail(str(exc)) from None


# -- the Slack app and the retraining job ---------------------------------------------------


@app.command()
def retrain(
    target: Annotated[str | None, typer.Argument(
        help="Only this @person or #channel (default: everything that changed).")] = None,
) -> None:
    """Run the nightly job once: incremental export (with a bot token), then retrain."""
    store, settings = _store(), get_settings()  # before torch loads, as `models`
    from mimic.bot.retrain import retrain_job
    from mimic.core.lock import Busy, retrain_lock

    (chosen,) = _resolve(store, [target]) if target else (None,)
    try:
        with retrain_lock(settings, on_lost=_stop_on_lost_lock):
            retrain_job(store, settings, chosen, lambda event: console.print(event["text"]))
    except Busy as exc:
        raise _fail(str(exc)) from None


@app.command()
def schedule() -> None:
    """Run only the nightly retraining (no Slack app): for a training machine beside
    `mimic serve --no-scheduler` replicas. Processes sharing the database elect one to run it.
    Ctrl-C or SIGTERM stops it (and a run in progress) and exits 0."""
    import logging
    import signal
    import threading

    from mimic.bot.schedule import Elected

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    _store()  # refuses a database that is missing or behind, before anything starts
    settings = get_settings()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    elected = Elected(settings)
    try:
        elected.start()
        console.print(f"nightly retraining at {settings.retrain_cron}, in one process of "
                      "those sharing the database; Ctrl-C stops.")
        stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        console.print("Stopping…")
        elected.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    console.print("Stopped.")


@app.command()
def serve(
    http: Annotated[int | None, typer.Option(
        "--http", metavar="PORT", help="Serve HTTP on PORT (POST /slack/events) instead of "
        "Socket Mode.")] = None,
    host: Annotated[str, typer.Option(help="Interface for --http.")] = "0.0.0.0",
    no_scheduler: Annotated[bool, typer.Option(
        "--no-scheduler", help="Do not run the nightly retraining in this process (by "
        "default one process of those sharing the database runs it).")] = False,
    processes: Annotated[int | None, typer.Option(
        "--processes", min=1, max=64, help="Serve as this many processes, each with its own "
        "copy of the model, on one port (default MIMIC_SERVE_PROCESSES, 1): answers stop "
        "queueing for one interpreter lock, at the cost of memory.")] = None,
) -> None:
    """Run the Slack app: Socket Mode when SLACK_APP_TOKEN is set, or HTTP with --http.

    Ctrl-C or SIGTERM stops it cleanly: requests in flight are answered, a retraining run is
    stopped, every thread is joined, and it exits 0."""
    import gc
    import logging
    import os
    import signal

    from slack_sdk.errors import SlackApiError

    from mimic.bot.processes import HANDOVER_ENV, READY, WORKER_ENV, Supervisor
    from mimic.exporter.webapi import make_client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    store, settings = _store(), get_settings()
    worker = os.environ.get(WORKER_ENV) is not None
    if not worker and (processes or settings.serve_processes) > 1:
        raise typer.Exit(Supervisor(["--no-scheduler"] if no_scheduler else [],
                                    processes or settings.serve_processes,
                                    None if http is None else (host, http)).run())
    if settings.slack_bot_token is None:
        raise _fail("SLACK_BOT_TOKEN is not set: copy the Bot User OAuth Token (xoxb-…) from "
                    "your app's OAuth & Permissions page into .env.")
    if http is None and settings.slack_app_token is None:
        raise _fail("Set SLACK_APP_TOKEN (an xapp-… token with connections:write) for Socket "
                    "Mode, or run `mimic serve --http PORT` with SLACK_SIGNING_SECRET set.")
    try:
        me = make_client(settings).auth_test()
    except SlackApiError as exc:
        raise _fail(f"Slack refused the bot token ({exc.response.get('error')}): check "
                    "SLACK_BOT_TOKEN in .env.") from None
    except OSError as exc:
        raise _fail(f"Cannot reach Slack at {settings.slack_api_url} ({exc}).") from None
    # Only now the heavy imports (torch: ~3 s): a setting missing above is said at once.
    import torch

    from mimic.bot.app import SetupError, build_app
    from mimic.bot.schedule import Elected

    # Answers are many small torch calls: one thread each beat two fighting over the cores
    # (one /mimic on 2 cores: 161 ms against 198 ms). Retraining runs in its own process.
    torch.set_num_threads(1)
    try:
        slack = build_app(settings, store, mode="http" if http is not None else "socket")
    except SetupError as exc:
        raise _fail(str(exc)) from None

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Everything loaded so far (Bolt, SQLAlchemy, torch: ~240k objects) stays for the life of
    # the server: a full collection walked it all in 110-180 ms, holding up every request
    # (three times a bench run). Frozen, it is never walked again; models loaded later freeze
    # theirs (bot/models.py).
    gc.collect()
    gc.freeze()

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop is a Ctrl-C
    # With several replicas, one of them (whichever holds the scheduler lock) runs it.
    scheduler = None if no_scheduler else Elected(settings)
    server = handler = None
    try:
        if scheduler is not None:
            scheduler.start()
        console.print(f"mimic is @{me.get('user')} in {me.get('team')}; nightly retraining: "
                      f"{'off' if scheduler is None else settings.retrain_cron}"
                      f"{'' if scheduler is None else ' (in one replica at a time)'}.")
        if http is not None:
            import socket

            from mimic.bot.http import make_http_server

            handover = os.environ.get(HANDOVER_ENV)  # a supervisor's worker: it hands them
            handed = None if handover is None else socket.socket(fileno=int(handover))
            server = make_http_server(slack.bolt, host, http, handed=handed)
            console.print(f"Listening on http://{host}:{server.server_port}/slack/events")
            if handed is not None:
                handed.send(READY)
            server.serve_forever()
        else:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            assert settings.slack_app_token is not None
            handler = SocketModeHandler(slack.bolt, settings.slack_app_token.get_secret_value())
            handler.start()
    except KeyboardInterrupt:
        console.print("Stopping…")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if server is not None:
            server.server_close()  # no new requests; those being read are finished
        if handler is not None:
            handler.close()
        slack.close()
        if scheduler is not None:
            scheduler.close()
    console.print("Stopped.")


def main() -> None:
    """The `mimic` command: a database that cannot be reached (down, restarting, a wrong
    DATABASE_URL), whenever a command first or next needs it, is named, not a traceback."""
    try:
        app()
    except OperationalError as exc:
        url = make_url(get_settings().database_url)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        what = ("Is the server running and reachable?" if url.get_backend_name() != "sqlite"
                else "Is the file readable and writable, and not held by another program?")
        err.print(f"[bold red]error:[/] the database at "
                  f"{url.render_as_string(hide_password=True)} cannot be used ({reason}). "
                  f"{what} Check DATABASE_URL in .env, then run the command again.")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
