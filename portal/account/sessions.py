"""Signed-in sessions, held on the server.

Each sign-in opens a ``UserSession`` row. The browser gets a random 32-byte secret; the row keeps only its
SHA-256. Flask-Login stores ``User.get_id()`` (``"s:<secret>"``) in the session cookie and, with "Keep me
signed in", in the remember-me cookie, and hands it back to :func:`load_user` on every request. Revoking the row
therefore ends both cookies, wherever they were copied. Lifetimes are in ``portal/config.py``.

Other features end sessions with :func:`end_other_sessions` (keep the one the member is using, e.g. after a
password change or turning on two-factor authentication) or :func:`end_all_sessions` (e.g. a password reset
by mail). Neither commits: the sessions end in the same transaction as the change that ends them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import current_app

from portal.account import security_log
from portal.extensions import db
from portal.models import User, UserSession
from portal.models.user import LOGIN_ID_PREFIX
from portal.security import new_token, token_digest
from portal.timeutil import utcnow

# last_seen_at is written at most this often per session: one UPDATE a minute instead of one per request.
TOUCH_EVERY = timedelta(minutes=1)


def limits(remember: bool) -> tuple[timedelta, timedelta]:
    """``(idle timeout, absolute lifetime)`` of a session, with or without "Keep me signed in"."""
    cfg = current_app.config
    if remember:
        return cfg["REMEMBER_IDLE_TIMEOUT"], cfg["REMEMBER_MAX_AGE"]
    return cfg["SESSION_IDLE_TIMEOUT"], cfg["SESSION_MAX_AGE"]


def open_session(
    user: User, *, remember: bool, ip: str | None, user_agent: str | None, second_factor: bool = False
) -> UserSession:
    """Start a session for ``user`` (after the password, and any second factor, are checked) and commit it.

    Records ``signin.success`` in the security log, and sets ``user.session_secret`` and
    ``user.current_session`` so that ``login_user(user)`` stores the new session's id in the cookies.
    ``second_factor=True`` marks the session as completed with a second factor (``second_factor_done_at``).
    """
    secret, now = new_token(), utcnow()
    row = UserSession(
        user_id=user.id,
        token_hash=token_digest(secret),
        remember=remember,
        created_at=now,
        last_seen_at=now,
        expires_at=now + limits(remember)[1],
        user_agent=security_log.clip_user_agent(user_agent),
        ip=security_log.clean_ip(ip),
        second_factor_done_at=now if second_factor else None,
    )
    db.session.add(row)
    security_log.record(
        user, "signin.success", ip=ip, user_agent=user_agent, remember=remember, second_factor=second_factor or None
    )
    db.session.commit()
    user.session_secret, user.current_session = secret, row
    return row


def load_user(login_id: str) -> User | None:
    """Flask-Login's user loader: the user whose live session holds this secret, else ``None`` (signed out).

    Refuses a revoked session, one past its absolute lifetime or idle longer than its idle timeout, and a
    deactivated user. The row is on ``user.current_session`` for the rest of the request.
    """
    if not login_id.startswith(LOGIN_ID_PREFIX) or len(login_id) <= len(LOGIN_ID_PREFIX):
        return None  # includes the "<user id>:<token>" ids of cookies issued before sessions were rows
    secret = login_id[len(LOGIN_ID_PREFIX) :]
    found = db.session.execute(
        sa.select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        # The hash of a 256-bit secret is the lookup key; comparing it in SQL reveals nothing usable.
        .where(UserSession.token_hash == token_digest(secret))
    ).one_or_none()
    if found is None:
        return None
    row, user = found
    now = utcnow()
    if not is_live(row, now) or not user.is_active:
        return None
    _touch(row, now)
    user.session_secret, user.current_session = secret, row
    return user


def is_live(row: UserSession, now: datetime) -> bool:
    idle, _ = limits(row.remember)
    return row.revoked_at is None and now < row.expires_at and now - row.last_seen_at < idle


def _live(now: datetime) -> sa.ColumnElement[bool]:
    """:func:`is_live` in SQL."""
    idle_remembered, _ = limits(True)
    idle_plain, _ = limits(False)
    return sa.and_(
        UserSession.revoked_at.is_(None),
        UserSession.expires_at > now,
        UserSession.last_seen_at > sa.case((UserSession.remember, now - idle_remembered), else_=now - idle_plain),
    )


def _touch(row: UserSession, now: datetime) -> None:
    """Move ``last_seen_at`` forward, at most once a minute, in a transaction of its own.

    Flask-Login loads the user when a view first reads ``current_user``, at its start, so the commit carries
    nothing else; should a view have changes pending already, the touch waits for a later request.
    """
    if now - row.last_seen_at < TOUCH_EVERY or db.session.new or db.session.dirty or db.session.deleted:
        return
    db.session.execute(
        sa.update(UserSession)
        .where(UserSession.id == row.id, UserSession.last_seen_at < now - TOUCH_EVERY)
        .values(last_seen_at=now)
    )
    db.session.commit()


def revoke(row: UserSession, *, reason: str) -> None:
    """End one session (no commit). ``reason`` is kept on the row: ``signout``, ``revoked`` …"""
    if row.revoked_at is None:
        row.revoked_at, row.revoked_reason = utcnow(), reason


def end_other_sessions(user: User, keep: UserSession | None, reason: str) -> int:
    """End every live session of ``user`` except ``keep`` (no commit); how many ended.

    ``reason`` is kept on each row, e.g. ``"password.changed"``. Record the change itself in the security log
    (``security_log.record``); the count makes a good detail (``sessions_ended=n``).
    """
    query = sa.update(UserSession).where(UserSession.user_id == user.id, _live(utcnow()))
    if keep is not None:
        query = query.where(UserSession.id != keep.id)
    result: Any = db.session.execute(
        query.values(revoked_at=utcnow(), revoked_reason=reason), execution_options={"synchronize_session": "fetch"}
    )
    return int(result.rowcount)


def end_all_sessions(user: User, reason: str) -> int:
    """End every live session of ``user``, the current one included (no commit); how many ended."""
    return end_other_sessions(user, None, reason)


def prune(*, ended_before: timedelta = timedelta(days=30)) -> int:
    """Delete sessions that ended more than ``ended_before`` ago (no commit); how many.

    Revoked, past their absolute expiry, or unused for that long (longer than any idle timeout). What happened
    to them stays in the security log.
    """
    cutoff = utcnow() - ended_before
    result: Any = db.session.execute(
        sa.delete(UserSession).where(
            sa.or_(UserSession.revoked_at < cutoff, UserSession.expires_at < cutoff, UserSession.last_seen_at < cutoff)
        )
    )
    return int(result.rowcount)


@dataclass(frozen=True)
class SessionView:
    """A session as the account page lists it."""

    row: UserSession
    browser: str
    os: str
    is_current: bool


def describe_agent(user_agent: str | None) -> tuple[str, str]:
    """``(browser, operating system)`` from a User-Agent header, e.g. ``("Firefox 128", "Ubuntu")``."""
    from user_agents import parse as parse_user_agent  # its regexes load with the first sessions page

    parsed = parse_user_agent(user_agent or "")
    browser = _family_version(parsed.browser.family, parsed.browser.version, "Unknown browser")
    system = _family_version(parsed.os.family, parsed.os.version, "unknown system")
    return browser, system


def _family_version(family: str, version: tuple[Any, ...], unknown: str) -> str:
    if not family or family == "Other":
        return unknown
    return f"{family} {version[0]}" if version else family


def active_sessions(user: User) -> list[SessionView]:
    """``user``'s live sessions: the current one first (and marked), then the most recently used."""
    current = user.current_session.id if user.current_session else None
    rows = db.session.scalars(
        sa.select(UserSession)
        .where(UserSession.user_id == user.id, _live(utcnow()))
        .order_by(
            sa.case((UserSession.id == current, 0), else_=1),
            UserSession.last_seen_at.desc(),
            UserSession.created_at.desc(),
        )
    ).all()
    return [SessionView(row, *describe_agent(row.user_agent), is_current=row.id == current) for row in rows]


def find_own_session(user: User, session_id: uuid.UUID) -> UserSession | None:
    """One of ``user``'s sessions by id; another account's answers ``None``, as if absent."""
    return db.session.scalar(sa.select(UserSession).where(UserSession.id == session_id, UserSession.user_id == user.id))


def sign_out(user: User, *, ip: str | None, user_agent: str | None) -> None:
    """End the session this request runs under, and commit."""
    if user.current_session is not None:
        revoke(user.current_session, reason="signout")
        security_log.record(user, "signout", ip=ip, user_agent=user_agent)
    db.session.commit()


def revoke_session(user: User, target: UserSession, *, ip: str | None, user_agent: str | None) -> None:
    """End one of ``user``'s sessions from the account page, and commit."""
    browser, system = describe_agent(target.user_agent)
    revoke(target, reason="revoked")
    security_log.record(
        user,
        "session.revoked",
        ip=ip,
        user_agent=user_agent,
        session=f"{browser} on {system}",
        session_address=str(target.ip) if target.ip else None,
    )
    db.session.commit()


def sign_out_others(user: User, *, ip: str | None, user_agent: str | None) -> int:
    """End every session of ``user`` but the current one, and every pending account link (an address change
    asked for from one of those sessions, say), and commit; how many sessions ended."""
    from portal.auth import tokens  # portal.auth imports this module

    ended = end_other_sessions(user, user.current_session, "revoked_others")
    tokens.discard(user.id)
    security_log.record(user, "sessions.revoked_others", ip=ip, user_agent=user_agent, sessions_ended=ended)
    db.session.commit()
    return ended
