"""Managing users, from the command line (`lumbarnode users`) and the admin page alike: the
checks, the hashing and the audit row in one place, so that both leave the same trail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from db.access import ROLES, AccessStore, Role, UserExists, UserView
from db.store import utcnow
from worker.admin import passwords
from worker.admin.auth import new_secret


class UserError(ValueError):
    """A change that is refused; the message says why, for the person who asked."""


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a signed-in admin, or `cli:<os user>` at the command line."""

    name: str
    kind: str = "user"  # user or cli
    address: str = ""


def _user(access: AccessStore, username: str) -> UserView:
    user = access.user(username)
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def _audit(access: AccessStore, actor: Actor, action: str, target: str, detail: str = "") -> None:
    access.audit(action, actor=actor.name, actor_kind=actor.kind, target=target, address=actor.address, detail=detail)


def _keeps_an_admin(access: AccessStore, username: str) -> None:
    """Refuse a change that would leave no enabled admin: nobody could manage users any more."""
    others = [u for u in access.users() if u.role == Role.ADMIN and not u.disabled and u.username != username]
    if not others:
        raise UserError(f"{username!r} is the only enabled admin; make another admin first")


def add(access: AccessStore, username: str, role: str, password: str, actor: Actor) -> UserView:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    try:
        user = access.add_user(username, role, password_hash=passwords.hash_password(password, username))
    except (UserExists, passwords.WeakPassword) as exc:
        raise UserError(str(exc)) from None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _audit(access, actor, "user_added", user.username, f"role {role}")
    return user


def set_role(access: AccessStore, username: str, role: str, actor: Actor) -> UserView:
    user = _user(access, username)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if user.source == "oidc":
        raise UserError(f"{username!r} signs in through the identity provider, which sets the role at every sign-in")
    if user.role == Role.ADMIN and role != Role.ADMIN:
        _keeps_an_admin(access, username)
    changed = access.update_user(username, role=role)
    _audit(access, actor, "user_role", username, f"{user.role} -> {role}")
    return changed


def set_disabled(access: AccessStore, username: str, disabled: bool, actor: Actor) -> UserView:
    user = _user(access, username)
    if disabled and user.role == Role.ADMIN:
        _keeps_an_admin(access, username)
    changed = access.update_user(username, disabled=disabled)
    ended = access.revoke_credentials(user.id) if disabled else 0
    _audit(access, actor, "user_disabled" if disabled else "user_enabled", username,
           f"{ended} sessions and tokens ended" if disabled else "")
    return changed


def set_password(access: AccessStore, username: str, password: str, actor: Actor) -> UserView:
    """A new password (which also unlocks the account) ends the user's browser sessions."""
    user = _user(access, username)
    if user.source != "local":
        raise UserError(f"{username!r} signs in through the identity provider and has no password here")
    try:
        changed = access.update_user(username, password_hash=passwords.hash_password(password, username))
    except passwords.WeakPassword as exc:
        raise UserError(str(exc)) from None
    ended = access.revoke_credentials(user.id, "session")
    _audit(access, actor, "user_password", username, f"{ended} sessions ended")
    return changed


def sign_out(access: AccessStore, username: str, actor: Actor) -> int:
    """End every session and token of the user. Returns how many were live."""
    user = _user(access, username)
    ended = access.revoke_credentials(user.id)
    _audit(access, actor, "user_signed_out", username, f"{ended} sessions and tokens ended")
    return ended


def issue_token(access: AccessStore, username: str, label: str, days: float, actor: Actor) -> str:
    """A new API token for the user (shown once: only its hash is kept)."""
    user = _user(access, username)
    if user.disabled:
        raise UserError(f"{username!r} is disabled")
    if days <= 0:
        raise UserError("a token's lifetime must be more than 0 days")
    secret, digest = new_secret()
    access.add_credential(user.id, "token", digest, utcnow() + timedelta(days=days), label=label)
    _audit(access, actor, "token_issued", username, f"{label or 'unnamed'}, {days:g} days")
    return secret
