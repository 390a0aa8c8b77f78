"""Password hashing for local users: argon2id through argon2-cffi, with its recommended
parameters (RFC 9106's low-memory profile). Nothing hand-made: the library salts, encodes the
parameters into the hash, and compares in constant time."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12  # NIST SP 800-63B asks for at least 8; a shared admin console warrants more
_HASHER = PasswordHasher()
# Verified against when the user does not exist, so that an unknown name costs as long as a
# wrong password (no user enumeration by timing).
_DUMMY = _HASHER.hash("no such user: a password nobody has")


class WeakPassword(ValueError):
    """A password the policy refuses; the message says why."""


def check_policy(password: str, username: str = "") -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")
    if username and password.strip().lower() == username.strip().lower():
        raise WeakPassword("the password must not be the user name")


def hash_password(password: str, username: str = "") -> str:
    check_policy(password, username)
    return _HASHER.hash(password)


def verify(stored: str | None, password: str) -> bool:
    """True when `password` matches the `stored` hash; with no hash, a dummy check, False."""
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """The parameters moved on since this hash was made (a newer argon2-cffi): hash again at login."""
    return _HASHER.check_needs_rehash(stored)
