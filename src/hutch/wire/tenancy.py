"""Projects, tokens, quotas."""

from pydantic import Field

from hutch.model.machine import Strategy
from hutch.model.tenancy import Role
from hutch.wire.common import Count, Request, View


class QuotaSpec(Request):
    machines: Count | None = None
    vcpus: Count | None = None
    memory_mib: Count | None = None
    disk_mib: Count | None = None
    images_mib: Count | None = Field(None, description="its images on a node, as stored")
    images_unpacked_mib: Count | None = Field(None, description="the same, unpacked")
    volume_gib: Count | None = Field(None, description="the sum of its volumes' sizes")
    snapshot_gib: Count | None = Field(
        None,
        description="the sum of its snapshots' sizes (a volume's: its volume's size when "
        "taken; a machine's: what it takes on its node)",
    )


class QuotaView(View):
    machines: int | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    images_mib: int | None = None
    images_unpacked_mib: int | None = None
    volume_gib: int | None = None
    snapshot_gib: int | None = None


class UsageView(View):
    machines: int
    vcpus: int
    memory_mib: int
    disk_mib: int
    # As a ready node's store holds them (None: no node is ready to ask).
    images_mib: int | None = None
    images_unpacked_mib: int | None = None
    # The sums of its volumes' and its snapshots' sizes, in GiB (fractions too).
    volume_gib: float = 0.0
    snapshot_gib: float = 0.0


class ProjectCreate(Request):
    name: str = Field(min_length=1, max_length=63)
    quota: QuotaSpec = QuotaSpec()
    strategy: Strategy = Field(
        Strategy.SPREAD, strict=False, description="how its machines are placed: spread or pack"
    )


class StrategySpec(Request):
    strategy: Strategy = Field(strict=False)


class ProjectView(View):
    id: str
    name: str
    created_at: float
    quota: QuotaView
    strategy: Strategy = Strategy.SPREAD


class QuotaReport(View):
    quota: QuotaView
    usage: UsageView


MAX_LIFETIME = 50 * 365 * 86400  # a token that should outlive this asks for none (null)


class TokenCreate(Request):
    name: str = Field("", max_length=63)
    role: Role = Field(Role.MEMBER, strict=False)
    expires_in: float | None = Field(
        None, gt=0, le=MAX_LIFETIME, description="seconds until it stops working; null: never"
    )


class TokenView(View):
    id: str
    name: str
    project: str | None
    role: Role
    system: bool
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


class TokenCreated(TokenView):
    secret: str = Field(description="the token itself: shown once, stored only as a hash")
