"""Opting out and in. Opting out takes effect at once for what is the person's own (their
dedicated models, their place in the shared model's coverage, so nothing serves or lists them,
and with `forget` their stored messages); the shared model that learned from them among
others is retrained without their text and their vector at the next run (from scratch: see
trainer/train.py, `_warm_start`), since its corpus digest changes when the person's messages
stop being eligible."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete

from mimic.core.store import Coverage, Message, Store, User
from mimic.trainer.corpus import Target
from mimic.trainer.registry import delete_target


def opt_out(store: Store, data_dir: Path, user_id: str, *, forget: bool = False) -> int:
    """Mark the person opted out, delete their models (and messages if `forget`); returns
    how many model versions were deleted."""
    with store.session() as session:
        person = session.get(User, user_id)
        if person is None:  # someone the store has not seen yet still gets their wish
            person = User(id=user_id, name=user_id)
            session.add(person)
        person.opted_out, person.opted_in = True, False
        if forget:
            session.execute(delete(Message).where(Message.user_id == user_id))
        session.execute(delete(Coverage).where(Coverage.target == f"user:{user_id}"))
    return delete_target(store, data_dir, Target(f"user:{user_id}", user_id))


def opt_in(store: Store, user_id: str) -> None:
    with store.session() as session:
        person = session.get(User, user_id)
        if person is None:
            person = User(id=user_id, name=user_id)
            session.add(person)
        person.opted_out, person.opted_in = False, True
