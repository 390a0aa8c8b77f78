"""Deterministic UIDs: the same inputs give the same UID, so that a re-run replaces a result
at the PACS instead of adding a second copy.

Without an organisation root the UIDs are of the 2.25 form (a 128-bit number, PS3.5 B.2),
which needs no registration. A site with its own root (LUMBARNODE_UID_ROOT) gets UIDs under it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_MAX_UID = 64
_MAX_ROOT = 40  # leaves at least 23 digits (76 bits) for the derived part
_ROOT_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_root(root: str) -> str:
    """The root without a trailing dot; ValueError if it is not a usable UID prefix."""
    root = root.rstrip(".")
    if not _ROOT_PATTERN.match(root) or len(root) > _MAX_ROOT:
        raise ValueError(f"UID root {root!r} must be dot-separated numbers without leading zeros, "
                         f"at most {_MAX_ROOT} characters")
    return root


def derived_uid(*parts: object, root: str | None = None) -> str:
    """A UID derived from `parts` (joined, hashed with SHA-256), under `root` or 2.25."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    if root is None:
        return "2.25." + str(int.from_bytes(digest[:16], "big"))
    root = check_root(root)
    room = _MAX_UID - len(root) - 1
    return f"{root}.{int.from_bytes(digest, 'big') % 10**room}"


@dataclass(frozen=True)
class ResultUIDs:
    """Series and instance UIDs of the three results of one job."""

    seg_series: str
    seg_instance: str
    sr_series: str
    sr_instance: str
    key_series: str
    key_instance: str
    job_key: str  # what they were derived from, for further UIDs (tracking UIDs)
    root: str | None = None

    @classmethod
    def derive(cls, source_series_uid: str, source_instance_uids: list[str] | tuple[str, ...],
               model_sha256: str, root: str | None = None) -> ResultUIDs:
        """Same source series, same set of source instances and same weights -> same UIDs.

        An instance added to the series, or new weights, make a new result (new UIDs); a
        retried job makes the same one.
        """
        instances = hashlib.sha256("\n".join(sorted(source_instance_uids)).encode()).hexdigest()
        key = f"lumbarnode-result-v1|{source_series_uid}|{instances}|{model_sha256}"

        def uid(*parts: str) -> str:
            return derived_uid(key, *parts, root=root)

        return cls(uid("seg", "series"), uid("seg", "instance"), uid("sr", "series"), uid("sr", "instance"),
                   uid("key", "series"), uid("key", "instance"), key, root)

    def derive_more(self, *parts: object) -> str:
        return derived_uid(self.job_key, *parts, root=self.root)
