"""Projects (tenants), their tokens and roles, quotas and usage, and who is calling."""

import re
from dataclasses import dataclass
from enum import StrEnum

from hutch.model.errors import Invalid
from hutch.model.machine import Strategy

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a DNS label


def validate_name(name: str, what: str) -> str:
    if not NAME.match(name):
        raise Invalid(
            f"{what} name {name!r} is invalid: 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


class Role(StrEnum):
    """What a token may do in its project; each role includes the ones before it."""

    READER = "reader"
    MEMBER = "member"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def includes(self, other: "Role") -> bool:
        return self.rank >= other.rank


QUOTA_FIELDS = (
    "machines", "vcpus", "memory_mib", "disk_mib", "images_mib", "images_unpacked_mib",
    "volume_gib", "snapshot_gib",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Quota:
    """Limits per project; None is unlimited."""

    machines: int | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    # What the project's images may take on each node: as stored, and unpacked.
    images_mib: int | None = None
    images_unpacked_mib: int | None = None
    # What its volumes may add up to (their sizes), and its snapshots (what each held when taken).
    volume_gib: int | None = None
    snapshot_gib: int | None = None

    def image_limits(self) -> dict[str, int]:
        """The image limits in bytes, named as a node's store takes them (absent: none)."""
        limits = {"max_stored": self.images_mib, "max_unpacked": self.images_unpacked_mib}
        return {k: v << 20 for k, v in limits.items() if v is not None}

    def __post_init__(self) -> None:
        for field in QUOTA_FIELDS:
            value = getattr(self, field)
            if value is not None and value < 0:
                raise Invalid(f"quota {field} cannot be negative")


@dataclass(frozen=True, slots=True)
class Usage:
    machines: int = 0
    vcpus: int = 0
    memory_mib: int = 0
    disk_mib: int = 0

    def plus(self, other: "Usage") -> "Usage":
        return Usage(
            self.machines + other.machines,
            self.vcpus + other.vcpus,
            self.memory_mib + other.memory_mib,
            self.disk_mib + other.disk_mib,
        )

    def exceeds(self, quota: Quota) -> str | None:
        """The first limit this usage is over, as a sentence, or None."""
        for field in ("machines", "vcpus", "memory_mib", "disk_mib"):
            limit = getattr(quota, field)
            if limit is not None and getattr(self, field) > limit:
                what = field.replace("_mib", " (MiB)")
                return f"{what} would be {getattr(self, field)}, the quota is {limit}"
        return None


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    name: str
    created_at: float
    quota: Quota
    strategy: Strategy = Strategy.SPREAD  # its machines' placement, unless one asks otherwise


@dataclass(frozen=True, slots=True)
class Token:
    """An API token as stored: the secret itself is never kept, only its hash."""

    id: str
    name: str
    project_id: str | None  # None for system tokens
    role: Role
    system: bool  # a system admin: every project, and projects themselves
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class Session:
    """A dashboard sign-in: its cookie holds a random secret, the store only its sha256 (`id`).
    It acts as its token, and ends when the token is revoked or expires, if not before."""

    id: str
    token_id: str
    csrf: str  # what the session's forms must send back
    created_at: float
    expires_at: float
    project_id: str | None = None  # the project a system token chose to act in


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from a token on every request."""

    token_id: str
    project_id: str | None
    role: Role
    system: bool = False
    expires_at: float | None = None  # the token's (unix time): when its streams end

    def can(self, role: Role, project_id: str) -> bool:
        """May this caller act with `role` in `project_id`?"""
        if self.system:
            return True
        return self.project_id == project_id and self.role.includes(role)
