"""Projects, tokens, quotas."""

from pydantic import Field

from hutch.model.machine import Strategy
from hutch.model.tenancy import Role
from hutch.wire.common import Request, View


class QuotaSpec(Request):
    machines: int | None = Field(None, ge=0)
    vcpus: int | None = Field(None, ge=0)
    memory_mib: int | None = Field(None, ge=0)
    disk_mib: int | None = Field(None, ge=0)
    images_mib: int | None = Field(None, ge=0, description="its images on a node, as stored")
    images_unpacked_mib: int | None = Field(None, ge=0, description="the same, unpacked")


class QuotaView(View):
    machines: int | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    images_mib: int | None = None
    images_unpacked_mib: int | None = None


class UsageView(View):
    machines: int
    vcpus: int
    memory_mib: int
    disk_mib: int
    # As a ready node's store holds them (None: no node is ready to ask).
    images_mib: int | None = None
    images_unpacked_mib: int | None = None


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


class TokenCreate(Request):
    name: str = Field("", max_length=63)
    role: Role = Field(Role.MEMBER, strict=False)
    expires_in: float | None = Field(None, gt=0, description="seconds until it stops working")


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
