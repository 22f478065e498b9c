"""The `/mimic` command grammar: text in, a Command or a ParseError that says what to type.

    /mimic @alice                       /mimic <@U123|alice>    /mimic <@U123>
    /mimic #random temp=1.0             /mimic <#C123|random>   t=0.5  temperature=1.2
    /mimic @alice "I think we should"   (seed text, in straight or curly quotes)
    /mimic help | list [name] | status | optout [--forget] | optin | retrain [@x|#y|all]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mimic.trainer.sampler import DEFAULT_TEMPERATURE

TEMPERATURE_MIN, TEMPERATURE_MAX = 0.0, 2.0  # exclusive, inclusive
MAX_SEED = 200

USAGE = (
    "Try `/mimic @alice`, `/mimic #random temp=1.0` or `/mimic @alice \"I think we should\"`. "
    "Also: `/mimic list`, `/mimic status`, `/mimic optout`, `/mimic optin`, `/mimic help`."
)

_TOKEN = re.compile(r'"([^"]*)"|“([^”]*)”|\'([^\']*)\'|(<[^<>]*>|\S+)')
_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|([^>]*))?>$")
_CHANNEL = re.compile(r"^<#([CG][A-Z0-9]+)(?:\|([^>]*))?>$")
_OPTION = re.compile(r"^(temp|temperature|t)=(.*)$", re.IGNORECASE)


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


@dataclass(frozen=True)
class Mimic:
    target: TargetRef
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


Command = Mimic | Simple | ListTargets | OptOut | Retrain
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
    target = None if quoted else _target(first)
    if target is None:
        raise ParseError(f"I don't know `{first[:40]}`: start with a person (@alice) or a "
                         f"channel (#random). {USAGE}")
    temperature, seed = DEFAULT_TEMPERATURE, None
    for token, was_quoted in rest:
        option = None if was_quoted else _OPTION.match(token)
        if option:
            temperature = _temperature(option.group(2))
        elif was_quoted and seed is None:
            seed = token
        else:
            hint = ("Put the seed text in quotes" if not was_quoted
                    else "Give only one seed text")
            raise ParseError(f"I didn't understand `{token[:40]}`. {hint}: "
                             f'`/mimic {target} "I think we should" temp=0.8`.')
    seed = (seed or "").strip()
    if "\n" in seed or "\r" in seed:
        raise ParseError("Keep the seed text on one line: a reply is one message, and its "
                         f'seed is how it starts, e.g. `/mimic {target} "I think we should"`.')
    if len(seed) > MAX_SEED:
        raise ParseError(f"The seed text is {len(seed)} characters; keep it under {MAX_SEED}.")
    return Mimic(target, temperature, seed)


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
