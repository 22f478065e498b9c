"""`mimic demo-data`: a realistic Slack export ZIP built from the chitchat dataset.

The chitchat dataset (about 258k messages by 1,315 people, `pip install -e '.[demo]'`) becomes a
workspace export that `mimic import` reads like a real one: users with readable handles, ten
public channels of uneven size, one private channel, and the noise a real export carries (joins,
a bot, mentions, links, escaped entities). Everything is derived from hashes and a seed, so the
same seed always gives the same bytes.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.util
import json
import random
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Public channels and how many conversations each gets (relative): a few big, many small.
PUBLIC_CHANNELS = [("general", 22), ("random", 18), ("music", 10), ("movies", 9), ("food", 8),
                   ("travel", 7), ("sports", 7), ("games", 6), ("books", 5), ("tech", 5)]
PRIVATE_CHANNEL = ("secret-plans", 3)
MENTION_SHARE = 0.03
LINK_SHARE = 0.012
BOT_SHARE = 0.02  # of conversations that get a bot post just before they start
ZIP_DATE = (2018, 1, 1, 0, 0, 0)  # fixed, so the ZIP's bytes do not depend on when it is built

BOT = {"id": "UDEMOBOT001", "bot_id": "BDEMOBOT001", "name": "helperbot"}
TEAM = "TDEMO00001"


def _words(text: str) -> list[str]:
    return text.split()


_ADJECTIVES = _words(
    "able agile amber bold brave breezy bright brisk calm candid cheery chill clever cosmic "
    "crafty crisp curious daring dapper eager earnest fancy fearless fierce fluffy frosty gentle "
    "giddy glad golden grand happy hardy hazy honest humble jolly keen kind lively lucky lunar "
    "mellow merry mighty misty modest nimble noble odd plucky polite proud quick quiet rapid "
    "rustic salty savvy shiny silent silly sly snappy solar spicy spry steady stormy sunny swift "
    "tidy tiny vivid wandering warm wild wise witty zany zesty"
)
_ANIMALS = _words(
    "albatross alpaca badger bat beaver bison bobcat buffalo camel caribou cheetah cobra condor "
    "coyote crane cricket dingo dolphin donkey dove eagle eel elk falcon ferret finch flamingo "
    "fox frog gazelle gecko gibbon giraffe goose gorilla hawk hedgehog heron hippo ibis iguana "
    "jackal jaguar koala lemur leopard lion llama lobster lynx magpie marmot meerkat mole moose "
    "narwhal newt ocelot octopus orca otter owl panda panther parrot pelican penguin puffin "
    "quokka rabbit raccoon raven salmon seal shark sloth sparrow squid stork swan tapir tiger "
    "toucan turtle walrus weasel whale wolf wombat yak zebra"
)
_FIRST = _words(
    "Ada Alex Amir Ana Ben Bea Cara Chen Dana Dev Eli Emma Finn Gia Hana Hugo Ines Ivan Jada "
    "Jon Kai Kira Leo Lena Luca Maya Mei Milo Nia Noah Omar Ora Paz Pia Quinn Raj Rosa Sam Sara "
    "Theo Tia Uma Vera Wes Xia Yara Yuki Zoe Zane Abe Cleo Drew Esme Ezra Faye Gus Ivy Jude Lyra"
)
_LAST = _words(
    "Abbott Baker Castro Diaz Evans Fischer Garcia Hughes Ito Jensen Khan Larsen Moreau Nakamura "
    "Okafor Patel Quist Rossi Silva Tanaka Usman Varga Weber Xu Young Zimmer Alvarez Brennan "
    "Costa Dubois Eriksen Fontaine Gupta Horvat Ibarra Jovanovic Kowalski Lindqvist Murphy "
    "Novak Oduya Petrov Reyes Schmidt Torres Ueda Vance Walsh Yilmaz Zhou"
)
_LINKS = {
    "general": ["https://www.nytimes.com/section/world", "https://en.wikipedia.org/wiki/Small_talk"],
    "random": ["https://imgur.com/gallery/k3yQ2", "https://xkcd.com/927/"],
    "music": ["https://www.youtube.com/watch?v=dQw4w9WgXcQ", "https://open.spotify.com/album/4LH4"],
    "movies": ["https://www.imdb.com/title/tt0111161/", "https://www.rottentomatoes.com/m/up"],
    "food": ["https://www.allrecipes.com/recipe/10813/", "https://www.seriouseats.com/pizza"],
    "travel": ["https://www.lonelyplanet.com/japan", "https://maps.google.com/?q=Lisbon"],
    "sports": ["https://www.espn.com/nba/", "https://www.fifa.com/worldcup"],
    "games": ["https://store.steampowered.com/app/620/", "https://www.twitch.tv/directory"],
    "books": ["https://www.goodreads.com/book/show/5907", "https://www.gutenberg.org/ebooks/1342"],
    "tech": ["https://news.ycombinator.com/item?id=17000", "https://github.com/python/cpython"],
    "secret-plans": ["https://docs.google.com/document/d/1xYz/edit", "https://calendar.google.com/"],
}
_LABELS = ["this", "here", "link", "look at this", "the article", "source"]
_BOT_TEXTS = [
    "Reminder: stand-up in 10 minutes.",
    "Build #{n} passed :white_check_mark: <https://ci.example.com/builds/{n}|details>",
    "New poll: what should we talk about next? Vote <https://polls.example.com/{n}|here>.",
    "Daily digest: {n} new messages since yesterday.",
]


class DemoDataError(RuntimeError):
    """The chitchat dataset is not installed or cannot be read."""


@dataclass
class DemoStats:
    path: Path
    users: int = 0  # people, the bot not counted
    channels: int = 0  # public and private
    private_channel: str = PRIVATE_CHANNEL[0]
    conversations: int = 0
    messages: int = 0  # people's messages, the ones `mimic import` keeps
    joins: int = 0
    bot_messages: int = 0
    mentions: int = 0
    links: int = 0
    skipped_empty: int = 0
    day_files: int = 0


def load_chitchat() -> dict[str, Any]:
    """The chitchat dataset as shipped: conversation id → {"messages": [[message, ...], ...]}."""
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DemoDataError("The chitchat dataset is not installed. Install the demo extra: "
                            "pip install -e '.[demo]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset.json"
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DemoDataError(f"{path}: cannot be read ({exc}). Reinstall it: "
                            "pip install --force-reinstall -e '.[demo]'") from None


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join(parts).encode()).digest()


def _slack_id(prefix: str, key: str) -> str:
    """prefix + 10 uppercase base-36 characters, stable for `key`."""
    n = int.from_bytes(_digest("id", key)[:8], "big")
    chars = []
    for _ in range(10):
        n, r = divmod(n, 36)
        chars.append("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[r])
    return prefix + "".join(chars)


def _people(senders: set[str]) -> dict[str, dict[str, Any]]:
    """users.json entries for every sender, keyed by sender uuid.

    Handles are assigned over all senders of the dataset in uuid order, so a person keeps the
    same handle whatever subset of conversations a build takes.
    """
    people: dict[str, dict[str, Any]] = {}
    taken: set[str] = {BOT["name"]}
    ids: set[str] = {BOT["id"]}
    for sender in sorted(senders):
        h = _digest("person", sender)
        handle = f"{_ADJECTIVES[h[0] % len(_ADJECTIVES)]}_{_ANIMALS[h[1] % len(_ANIMALS)]}"
        attempt = 0
        while handle in taken:  # clashes get digits, as real workspaces do
            handle = f"{handle.rstrip('0123456789')}{int.from_bytes(h[2:4], 'big') % 90 + 10}"
            h = _digest("person", sender, str(attempt := attempt + 1))
        taken.add(handle)
        first, last = _FIRST[h[4] % len(_FIRST)], _LAST[h[5] % len(_LAST)]
        uid = _slack_id("U", sender)
        if uid in ids:
            raise DemoDataError(f"user id clash for sender {sender}")
        ids.add(uid)
        people[sender] = {
            "id": uid, "team_id": TEAM, "name": handle, "deleted": False,
            "real_name": f"{first} {last}", "tz": "America/New_York", "is_bot": False,
            "is_app_user": False,
            "profile": {"display_name": first.lower() if h[6] % 3 else handle,
                        "real_name": f"{first} {last}", "first_name": first, "last_name": last,
                        "team": TEAM},
        }
    return people


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _epoch(stamp: str, days: dict[str, int]) -> int:
    """Seconds since the epoch of "2018-05-02T19:38:15Z"; by hand, as fromisoformat is slow."""
    if len(stamp) != 20 or stamp[19] != "Z":
        return int(datetime.fromisoformat(stamp).timestamp())
    day = days.get(stamp[:10])
    if day is None:
        day = days[stamp[:10]] = int(datetime.fromisoformat(f"{stamp[:10]}T00:00:00+00:00")
                                     .timestamp())
    return day + int(stamp[11:13]) * 3600 + int(stamp[14:16]) * 60 + int(stamp[17:19])


def build_demo_export(out: Path, *, seed: int = 0,
                      limit_conversations: int | None = None) -> DemoStats:
    """Write a Slack workspace export ZIP of the chitchat dataset to `out`."""
    data = load_chitchat()
    out = Path(out)
    stats = DemoStats(path=out)
    people = _people({m["sender"] for c in data.values() for run in c["messages"] for m in run})

    conv_ids = sorted(data)
    if limit_conversations is not None:
        conv_ids = conv_ids[:limit_conversations]
    stats.conversations = len(conv_ids)
    uids = {sender: person["id"] for sender, person in people.items()}

    channels = [name for name, _ in PUBLIC_CHANNELS] + [PRIVATE_CHANNEL[0]]
    weights = [w for _, w in PUBLIC_CHANNELS] + [PRIVATE_CHANNEL[1]]
    cumulative = [sum(weights[: i + 1]) / sum(weights) for i in range(len(weights))]
    chosen = sorted({m["sender"] for cid in conv_ids for run in data[cid]["messages"]
                     for m in run})
    # Per channel: (epoch, order, message without ts); order keeps the dataset's order on ties.
    posts: dict[str, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
    cache: dict[str, int] = {}  # "YYYY-MM-DD" → epoch of its midnight UTC
    order = 0
    for cid in conv_ids:
        rng = random.Random(f"{seed}:{cid}")  # str seeds hash with SHA-512: stable across runs
        channel = channels[bisect.bisect_left(cumulative, rng.random())]
        append = posts[channel].append
        runs = data[cid]["messages"]
        speakers = sorted({m["sender"] for run in runs for m in run})
        first_stamp = None
        for run in runs:
            for m in run:
                text = m.get("text") or ""
                if not text or text.isspace():
                    stats.skipped_empty += 1
                    continue
                sender = m["sender"]
                if "&" in text or "<" in text or ">" in text:
                    text = _escape(text)
                # One draw decides the noise: a mention, a link, or (mostly) nothing.
                noise = rng.random()
                if noise < MENTION_SHARE:
                    # Address the other speaker; one-sided conversations mention anyone.
                    others = [s for s in speakers if s != sender] or chosen
                    other = people[others[rng.randrange(len(others))]]
                    mention = (f"<@{other['id']}|{other['name']}>" if rng.random() < 0.3
                               else f"<@{other['id']}>")
                    text = f"{mention} {text}" if rng.random() < 0.7 else f"{text} {mention}"
                    stats.mentions += 1
                elif noise < MENTION_SHARE + LINK_SHARE:
                    url = _LINKS[channel][rng.randrange(2)]
                    link = (f"<{url}|{_LABELS[rng.randrange(len(_LABELS))]}>"
                            if rng.random() < 0.5 else f"<{url}>")
                    text = f"{text} {link}"
                    stats.links += 1
                stamp = m["timestamp"]
                first_stamp = first_stamp or stamp
                append((_epoch(stamp, cache), order,
                        {"type": "message", "user": uids[sender], "text": text}))
                order += 1
        if first_stamp is not None and rng.random() < BOT_SHARE:
            n = rng.randrange(100, 10000)
            bot_post: dict[str, Any] = {
                "type": "message", "subtype": "bot_message", "bot_id": BOT["bot_id"],
                "username": BOT["name"], "text": _BOT_TEXTS[n % len(_BOT_TEXTS)].format(n=n)}
            if n % 2:  # newer apps post as their bot user, with no subtype
                del bot_post["subtype"], bot_post["username"]
                bot_post["user"] = BOT["id"]
            append((_epoch(first_stamp, cache) - 30, order, bot_post))
            order += 1
            stats.bot_messages += 1
    stats.messages = order - stats.bot_messages

    channel_ids = {name: _slack_id("G" if name == PRIVATE_CHANNEL[0] else "C", name)
                   for name in channels}
    files: dict[str, list[dict[str, Any]]] = {}
    members: dict[str, list[str]] = {}
    for name in channels:
        entries = sorted(posts.get(name, []))  # (epoch, order) is unique: dicts never compared
        joined: set[str] = {BOT["id"]}  # the bot posts without joining
        day_end, day_file, last_epoch, seq = -1, [], -1, 0
        for epoch, _, message in entries:
            if epoch >= day_end:  # entries are in time order: a new UTC day starts a new file
                day_end = (epoch // 86400 + 1) * 86400
                day_file = files.setdefault(f"{name}/{utc_day(epoch)}.json", [])
            # Slack ts: the second, then a sequence that keeps it unique within the channel.
            seq = seq + 1 if epoch == last_epoch else 0
            last_epoch = epoch
            user = message.get("user")
            if user not in joined and user:
                joined.add(user)
                day_file.append({"type": "message", "subtype": "channel_join", "user": user,
                                 "text": f"<@{user}> has joined the channel",
                                 "ts": f"{epoch}.{seq:06d}"})
                seq += 1
                stats.joins += 1
            message["ts"] = f"{epoch}.{seq:06d}"
            day_file.append(message)
        joined.discard(BOT["id"])
        members[name] = sorted(joined)

    created = 1514764800  # 2018-01-01, before the dataset's first message
    founder = people[chosen[0]]["id"] if chosen else BOT["id"]

    def channel_entry(name: str) -> dict[str, Any]:
        return {"id": channel_ids[name], "name": name, "created": created, "creator": founder,
                "is_archived": False, "is_general": name == "general",
                "members": members[name],
                "topic": {"value": "", "creator": "", "last_set": 0},
                "purpose": {"value": f"Chat about {name.replace('-', ' ')}",
                            "creator": founder, "last_set": created}}

    users = [people[s] for s in chosen] + [{
        "id": BOT["id"], "team_id": TEAM, "name": BOT["name"], "deleted": False,
        "real_name": "Helper Bot", "is_bot": True, "is_app_user": False,
        "profile": {"display_name": "", "real_name": "Helper Bot", "bot_id": BOT["bot_id"],
                    "team": TEAM}}]
    public = [channel_entry(n) for n, _ in PUBLIC_CHANNELS]
    private = [dict(channel_entry(PRIVATE_CHANNEL[0]), is_private=True)]
    stats.users, stats.channels, stats.day_files = len(chosen), len(channels), len(files)

    write_export_zip(out, {"users.json": users, "channels.json": public,
                           "groups.json": private, "integration_logs.json": [],
                           **dict(sorted(files.items()))})
    return stats


def write_export_zip(out: Path, files: dict[str, Any], indent: int | None = None) -> None:
    """`files` (name → JSON value, in order) as an export ZIP whose bytes depend on nothing
    but them: fixed dates and permissions, so the same seed always gives the same file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, value in files.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            # Level 1: a third of the time of the default for a ZIP a few % larger.
            zf.writestr(info, json.dumps(value, indent=indent), compresslevel=1)


def utc_day(epoch: int) -> str:
    """The UTC date of a Unix time, as Slack names its export's day files."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d")
