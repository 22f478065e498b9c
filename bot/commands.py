"""The `/mimic` command grammar: text in, a Command or a ParseError that says what to type.

    /mimic @alice                       /mimic <@U123|alice>    /mimic <@U123>
    /mimic #random temp=1.0             /mimic <#C123|random>   t=0.5  temperature=1.2
    /mimic @alice "I think we should"   (seed text, in straight or curly quotes)
    /mimic @alice @bob turns=4 "cats?"  (a conversation: 2-4 people or channels, 2-8 turns)
    /mimic help | list [name] | status | optout [--forget] | optin | retrain [@x|#y|all]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mimic.trainer.sampler import DEFAULT_TEMPERATURE

TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0  # exclusive, inclusive
MAX_SEED = 200
MAX_VOICES, MAX_TURNS, DEFAULT_TURNS = 4, 8, 4

USAGE = (
    "Try `/mimic @alice`, `/mimic #random temp=1.0`, `/mimic @alice \"I think we should\"` "
    "or `/mimic @alice @bob turns=4`. "
    "Also: `/mimic list`, `/mimic status`, `/mimic optout`, `/mimic optin`, `/mimic help`."
)

_TOKEN = re.compile(r'"([^"]*)"|“([^”]*)”|\'([^\']*)\'|(<[^<>]*>|\S+)')
_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|([^>]*))?>$")
_CHANNEL = re.compile(r"^<#([CG][A-Z0-9]+)(?:\|([^>]*))?>$")
_OPTION = re.compile(r"^(temp|temperature|t|turns)=(.*)$", re.IGNORECASE)


class ParseError(ValueError):
    """What was wrong with the command and what to type instead."""


@dataclass(frozen=True)
class TargetRef:
    """A person or channel as typed: by id (escaped mention) and/or by name."""

    sigil: str  # "@" or "#"
    name: str = ""
    id: str = ""

    def __str__(self) -> str:
        return f"{self.sigil}{self.name or self.id}"

    def same(self, other: TargetRef) -> bool:
        """Whether both name one person or channel, as far as the text tells: by id when both
        came escaped, else by name (an escaped mention carries its name too)."""
        if self.sigil != other.sigil:
            return False
        if self.id and other.id:
            return self.id == other.id
        return bool(self.name) and self.name.casefold() == other.name.casefold()


def named_twice(label: str) -> ParseError:
    """The error for a conversation that names one voice twice (also found after resolving:
    `@alice` and `@U123` can be the same person)."""
    return ParseError(f"{label} is named twice: a conversation takes different people or "
                      "channels, e.g. `/mimic @alice @bob`.")


@dataclass(frozen=True)
class Mimic:
    target: TargetRef
    temperature: float = DEFAULT_TEMPERATURE
    seed: str = ""


@dataclass(frozen=True)
class Conversation:
    """2 to MAX_VOICES distinct voices taking `turns` turns in the order named, the first
    turn starting from `seed`."""

    targets: tuple[TargetRef, ...]
    turns: int = DEFAULT_TURNS
    temperature: float = DEFAULT_TEMPERATURE
    seed: str = ""


@dataclass(frozen=True)
class Simple:
    """help, status, optin."""

    verb: str


@dataclass(frozen=True)
class ListTargets:
    """Who can be mimicked: the best few, or those whose name contains `query`."""

    query: str = ""


@dataclass(frozen=True)
class OptOut:
    forget: bool = False


@dataclass(frozen=True)
class Retrain:
    target: TargetRef | None = None  # None: everything that changed


Command = Mimic | Conversation | Simple | ListTargets | OptOut | Retrain
SIMPLE_VERBS = ("help", "status", "optin")
MAX_QUERY = 40


def _tokens(text: str) -> list[tuple[str, bool]]:
    """(token, was_quoted) pairs; an unclosed quote is an error, not a silent guess."""
    if text.count('"') % 2 or text.count("“") != text.count("”"):
        raise ParseError(f'The seed text has an unclosed quote. {USAGE}')
    out = []
    for match in _TOKEN.finditer(text):
        quoted = next((g for g in match.groups()[:3] if g is not None), None)
        out.append((quoted, True) if quoted is not None else (match.group(4), False))
    return out


def _target(token: str) -> TargetRef | None:
    if m := _USER.match(token):
        return TargetRef("@", name=(m.group(2) or "").strip(), id=m.group(1))
    if m := _CHANNEL.match(token):
        return TargetRef("#", name=(m.group(2) or "").strip(), id=m.group(1))
    if len(token) > 1 and token[0] in "@#＠" and "<" not in token and ">" not in token:
        return TargetRef("#" if token[0] == "#" else "@", name=token[1:])
    return None


def _temperature(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ParseError(f"`{raw}` is not a temperature: use a number between 0 and 2, "
                         "e.g. `temp=0.8` (higher is wilder).") from None
    if not (TEMPERATURE_MIN < value <= TEMPERATURE_MAX):  # also rejects nan and inf
        raise ParseError(f"Temperature {raw} is out of range: use a number above 0 and at most "
                         "2, e.g. `temp=0.8` (higher is wilder).")
    return value


def parse(text: str) -> Command:
    tokens = _tokens(text.strip())
    if not tokens:
        return Simple("help")
    first, quoted = tokens[0]
    verb = first.lower()
    rest = tokens[1:]
    if not quoted and verb in SIMPLE_VERBS:
        if rest:
            raise ParseError(f"`{verb}` takes nothing after it. {USAGE}")
        return Simple(verb)
    if not quoted and verb == "list":
        query = " ".join(t for t, _ in rest).strip().lstrip("@#＠")
        if len(query) > MAX_QUERY:
            raise ParseError(f"Search for at most {MAX_QUERY} characters of a name, e.g. "
                             "`/mimic list alice`.")
        return ListTargets(query)
    if not quoted and verb == "optout":
        if any(t != "--forget" for t, _ in rest):
            raise ParseError("Use `/mimic optout`, or `/mimic optout --forget` to also delete "
                             "your stored messages.")
        return OptOut(forget=bool(rest))
    if not quoted and verb == "retrain":
        if not rest or (len(rest) == 1 and rest[0][0].lower() == "all"):
            return Retrain()
        target = _target(rest[0][0]) if len(rest) == 1 and not rest[0][1] else None
        if target is None:
            raise ParseError("Use `/mimic retrain`, `/mimic retrain all`, "
                             "`/mimic retrain @person` or `/mimic retrain #channel`.")
        return Retrain(target)
    targets = []  # the leading run of people and channels
    for token, was_quoted in tokens:
        target = None if was_quoted else _target(token)
        if target is None:
            break
        targets.append(target)
    if not targets:
        raise ParseError(f"I don't know `{first[:40]}`: start with a person (@alice) or a "
                         f"channel (#random). {USAGE}")
    example = " ".join(map(str, targets))
    temperature, turns, seed = _options(tokens[len(targets):], example)
    if len(targets) == 1:
        if turns is not None:
            raise ParseError("`turns=` is for a conversation: name two or more people, e.g. "
                             f"`/mimic {example} @bob turns={DEFAULT_TURNS}`.")
        return Mimic(targets[0], temperature, seed)
    if len(targets) > MAX_VOICES:
        raise ParseError(f"A conversation takes at most {MAX_VOICES} people or channels; you "
                         f"named {len(targets)}.")
    for i, target in enumerate(targets):
        if any(target.same(earlier) for earlier in targets[:i]):
            raise named_twice(str(target))
    return Conversation(tuple(targets), _turns(turns, len(targets)), temperature, seed)


def _options(rest: list[tuple[str, bool]], example: str) -> tuple[float, str | None, str]:
    """(temperature, turns as typed or None, seed) from what follows the targets."""
    temperature, turns, seed = DEFAULT_TEMPERATURE, None, None
    for token, was_quoted in rest:
        option = None if was_quoted else _OPTION.match(token)
        if option and option.group(1).lower() == "turns":
            turns = option.group(2)
        elif option:
            temperature = _temperature(option.group(2))
        elif was_quoted and seed is None:
            seed = token
        else:
            hint = ("Give only one seed text" if was_quoted
                    else "Name everyone first, then the options" if _target(token)
                    else "Put the seed text in quotes")
            raise ParseError(f"I didn't understand `{token[:40]}`. {hint}: "
                             f'`/mimic {example} "I think we should" temp=0.8`.')
    seed = (seed or "").strip()
    if "\n" in seed or "\r" in seed:
        raise ParseError("Keep the seed text on one line: a reply is one message, and its "
                         f'seed is how it starts, e.g. `/mimic {example} "I think we should"`.')
    if len(seed) > MAX_SEED:
        raise ParseError(f"The seed text is {len(seed)} characters; keep it under {MAX_SEED}.")
    return temperature, turns, seed


def _turns(raw: str | None, voices: int) -> int:
    """The number of turns: at least one for each of `voices` (a voice named but never heard
    would be a silent mistake), at most MAX_TURNS."""
    if raw is None:
        return DEFAULT_TURNS  # as many as MAX_VOICES: everyone speaks
    if not (raw.isascii() and raw.isdigit()):
        raise ParseError(f"`turns={raw[:10]}` is not a number: use a whole number from {voices} "
                         f"to {MAX_TURNS}, e.g. `turns={DEFAULT_TURNS}`.")
    if int(raw) > MAX_TURNS:
        raise ParseError(f"`turns={raw[:10]}` is too many: a conversation has at most "
                         f"{MAX_TURNS} turns.")
    if int(raw) < voices:
        raise ParseError(f"`turns={raw}` is too few for {voices} voices: use at least {voices}, "
                         "so everyone speaks.")
    return int(raw)


# -- mentions: `@mimic alice`, `@mimic be @alice`, `@mimic #random temp=1.0` -----------------

MENTION_USAGE = (
    "Mention me with whose voice to answer in: `@mimic alice`, `@mimic be @alice`, "
    "`@mimic #random temp=1.0`. I reply in the thread, as their answer to what was said. "
    "On any message, the ⋯ menu's *Mimic a reply* answers as its author would."
)
_ANY_USER_MENTION = re.compile(r"<@[UW][A-Z0-9]+(?:\|[^>]*)?>")


@dataclass(frozen=True)
class Mention:
    """An app_mention asking for a reply in `target`'s voice."""

    target: TargetRef
    temperature: float = DEFAULT_TEMPERATURE


def parse_mention(text: str, bot_user_id: str | None) -> Mention | Simple:
    """The words of an app_mention, the bot's own mention taken out; Simple("help") for
    a bare mention or `help`. A bare name is a person (`@mimic alice`)."""
    # The bot's id unknown: its mention is the first one, as Slack shows it.
    text = (re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text) if bot_user_id
            else _ANY_USER_MENTION.sub(" ", text, count=1))
    tokens = [token for token, _quoted in _tokens(text.strip())]
    if tokens and tokens[0].lower() in ("be", "as"):
        tokens = tokens[1:]
    if not tokens or (len(tokens) == 1 and tokens[0].lower() == "help"):
        return Simple("help")
    first = tokens[0]
    target = _target(first) or (TargetRef("@", name=first)
                                if re.fullmatch(r"[\w.\-]{1,80}", first) else None)
    if target is None:
        raise ParseError(f"I don't know `{first[:40]}`. {MENTION_USAGE}")
    temperature = DEFAULT_TEMPERATURE
    for token in tokens[1:]:
        option = _OPTION.match(token)
        if option is None:
            raise ParseError(f"I didn't understand `{token[:40]}`. {MENTION_USAGE}")
        temperature = _temperature(option.group(2))
    return Mention(target, temperature)
