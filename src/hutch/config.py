"""hutch's settings, read once: defaults, then `hutch.toml`, then `HUTCH_*` environment variables.

The file is `$HUTCH_CONFIG`, else `/etc/hutch/hutch.toml` when it exists. Everything below is
passed down explicitly as options objects; nothing else reads the environment.
"""

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hutch.images.egress import RegistryNames
from hutch.model.errors import Invalid
from hutch.model.image import parse_ref
from hutch.model.units import parse_duration, parse_size

DEFAULT_CONFIG = Path("/etc/hutch/hutch.toml")
# The public registries tenants may pull from unless the operator says otherwise.
PUBLIC_REGISTRIES = (
    "docker.io",
    "registry-1.docker.io",
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "registry.k8s.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
)


class RegistrySettings(BaseModel):
    """How to reach one registry (keyed by host[:port] under `registries`)."""

    model_config = ConfigDict(extra="forbid")

    mirrors: list[str] = Field([], description="base URLs tried first for pulls")
    insecure: bool = Field(False, description="plain HTTP instead of HTTPS")
    ca_file: Path | None = Field(None, description="extra CA certificates (PEM) to trust")
    username: str = ""
    password: str = ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUTCH_", extra="forbid")

    state_dir: Path = Field(Path("/var/lib/hutch"), description="sandboxes, records and logs")
    cache_dir: Path = Field(Path("/var/cache/hutch"), description="guest kernel, initramfs, images")
    kernel_package: str = Field(
        "linux-image-cloud-amd64", description="Debian package of the guest kernel"
    )
    qemu: str = "qemu-system-x86_64"
    crun: str = "crun"
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="kvm is used only if a probe boots"
    )
    log_max_bytes: int = Field(1 << 20, description="stdout+stderr kept per sandbox (ring)")
    log_hold: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="seconds the output of a new machine a client will follow (hold_output: "
        "an attached run, which joins a moment after the start) waits for its first follower "
        "rather than being dropped from the ring",
    )
    console_max_bytes: int = Field(256 << 10, description="guest console kept per VM (ring)")
    boot_timeout: float = Field(90.0, gt=0, description="seconds for a VM's guest agent to come up")
    vm_overhead_mib: int = Field(96, ge=0, description="host memory per VM beyond its guest RAM")
    vm_uid_base: int = Field(1_500_000, ge=1000, description="QEMU runs as its own uid from here")
    vm_debug: bool = Field(False, description="guests that fail to boot print diagnostics")
    container_userns: bool = Field(
        True, description="containers' root is an unprivileged host uid range, not host root"
    )
    container_uid_base: int = Field(
        1_000_000_000, ge=1000, description="containers' host uids: 65536 each from here"
    )
    volume_pool_mib: int = Field(
        0,
        ge=0,
        description="the node's volume pool, in MiB, when the agent makes it (0: half the free "
        "space of the state directory's disk, at least 1 GiB; at least 512 when given); on a "
        "state directory that can reflink, the most the node's volumes are promised",
    )
    volume_export_idle: float = Field(
        300.0,
        gt=0,
        description="seconds (or 90s, 5m) a volume's export waits for its reader to read on "
        "before the node ends it: an export holds a copy of its volume in the pool",
    )
    cgroup_parent: str = "hutch"
    network_mtu: int = Field(
        1500, ge=1280, le=9000, description="MTU of machines' NICs and of the node's bridges"
    )
    network_blocked: list[str] = Field(
        [],
        description="CIDRs no machine may reach, not even through NAT (management networks, "
        "hosts known by name); every node's and the controller's addresses are always blocked",
    )
    network_underlay: str | None = Field(
        None,
        description="this node's address for the VXLAN overlay between nodes (an IP); default: "
        "the agent's advertised address, if it is an IP other than loopback",
    )
    project: str = Field("default", description="the host CLI's project, and the first one made")
    heartbeat_interval: float = Field(5.0, gt=0, description="seconds between node heartbeats")
    node_grace: float = Field(
        15.0, gt=0, description="seconds without a heartbeat before a node's machines are lost"
    )
    leader_lease: float = Field(
        5.0, gt=0, description="seconds a leading controller holds its lease without renewing"
    )
    sample_interval: float = Field(
        10.0, gt=0, description="seconds between a node's samples of what its sandboxes use"
    )
    sample_spool: int = Field(
        360,
        ge=1,
        description="samples a node keeps on disk while the controller does not take them "
        "(the oldest go first)",
    )
    metrics_fine: float = Field(10.0, gt=0, description="seconds per point of recent history")
    metrics_fine_keep: float = Field(
        86400.0, gt=0, description="seconds (or 90s, 30m, 2h, 7d) recent history is kept"
    )
    metrics_coarse: float = Field(300.0, gt=0, description="seconds per point of older history")
    metrics_coarse_keep: float = Field(
        30 * 86400.0, gt=0, description="seconds (or 90s, 30m, 2h, 7d) older history is kept"
    )
    machine_retention: float = Field(
        7 * 86400.0,
        gt=0,
        description="seconds (or 90s, 30m, 2h, 7d) a destroyed machine stays listed before the "
        "leader purges it and its events",
    )
    storage_interval: float = Field(
        3600.0,
        gt=0,
        description="seconds (or 90s, 30m, 1h) per storage accrual: the leader meters disks, "
        "volumes and snapshots per interval, once it is over",
    )
    # -- the controller --
    network_pool4: str = Field(
        "10.96.0.0/11",
        description="IPv4 pool of default networks (projects' own subnets must stay outside it)",
    )
    network_prefix4: int = Field(
        24, ge=8, le=29, description="the pool is cut into subnets of this prefix, one a network"
    )
    database_url: str = Field(
        "", description="sqlite:///... or postgresql://...; default: SQLite in state_dir"
    )
    listen: str = Field("127.0.0.1:7878", description="host:port the controller serves on")
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a request's headers may take to arrive (then 408)"
    )
    body_timeout: float = Field(
        30.0, gt=0, description="seconds a request's body may take (an import's: may pause)"
    )
    connections_per_client: int = Field(
        64, ge=1, description="connections one client address may hold open (then 429)"
    )
    streams_per_token: int = Field(
        32, ge=1, description="log, exec and event streams one token may hold open (then 429)"
    )
    policy_file: Path | None = Field(None, description="TOML: action = role overrides")
    prices_file: Path | None = Field(
        None, description="TOML price book (docs/billing.md): replaces the stored one at start"
    )
    invoice_period: Literal["month", "day"] = Field(
        "month", description="an invoice per project per calendar month (UTC), or per day"
    )
    billing_interval: float = Field(
        10.0, gt=0, le=3600,
        description="seconds between the leader's looks for invoices to close",
    )  # fmt: skip
    budget_interval: float = Field(
        60.0, gt=0, le=86400,
        description="seconds between the leader's looks at budgets (each prices its project's "
        "month so far)",
    )  # fmt: skip
    tls: bool = Field(False, description="serve HTTPS with a CA made in state_dir/tls")
    tls_names: list[str] = Field(
        [], description="host names and addresses the HTTPS certificate is for (default: the host)"
    )
    join_secret: str = Field("", description="agents join with it; default: state_dir/join.secret")
    join_token: str = Field(
        "", description="`hutch agent` joins with it (from `hutch node join-token`)"
    )
    controller_secret: str = Field(
        "", description="controllers share it; default: state_dir/controller.secret"
    )
    registries: dict[str, RegistrySettings] = Field(
        {}, description='per registry host: {"127.0.0.1:5000": {"insecure": true}}'
    )
    registry_allow: list[str] = Field(
        list(PUBLIC_REGISTRIES),
        description="registries (host[:port]) image references may name, besides those under "
        "registries and their mirrors; default: the public registries",
    )
    max_unpacked_bytes: int = Field(
        8 << 30, description="largest root file system an image may unpack to"
    )
    image_free_floor: int = Field(
        1 << 30,
        description="disk a node keeps free: images that would take it below are refused (507)",
    )
    unpack_staging: Path | None = Field(
        Path("/dev/shm"), description="tmpfs where images become micro-VM root disks"
    )
    unpack_staging_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="share of the host's memory hutch's unpacks may hold in unpack_staging at once",
    )

    @field_validator(
        "log_max_bytes",
        "console_max_bytes",
        "max_unpacked_bytes",
        "image_free_floor",
        mode="before",
    )
    @classmethod
    def _size(cls, value: object) -> object:
        return parse_size(value, default_unit="b") if isinstance(value, str) else value

    @field_validator("volume_pool_mib")
    @classmethod
    def _pool_size(cls, value: int) -> int:
        if 0 < value < 512:
            raise ValueError("a volume pool is at least 512 MiB (XFS needs 300), or 0: the default")
        return value

    @field_validator(
        "machine_retention",
        "volume_export_idle",
        "metrics_fine_keep",
        "metrics_coarse_keep",
        "storage_interval",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> object:
        try:
            return parse_duration(value) if isinstance(value, str) else value
        except Invalid as e:  # so that load() names the setting
            raise ValueError(str(e)) from None

    @field_validator("network_underlay")
    @classmethod
    def _underlay(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (192.0.2.1, 2001:db8::1)") from None

    @field_validator("network_blocked")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR (10.0.0.0/8, fd00::/8)") from None
        return value

    @field_validator("registry_allow")
    @classmethod
    def _registries(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                ref = parse_ref(f"{name}/x")
            except Invalid:
                ref = None
            if ref is None or ref.registry != name:
                raise ValueError(f"{name!r} is not a registry host[:port]")
        return value

    @field_validator("network_pool4")
    @classmethod
    def _pool(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 CIDR with its host bits zero") from None
        if not net.is_private:
            raise ValueError(f"{value} is not a private range")
        return value

    def registry_names(self) -> RegistryNames:
        """The registries image references may name: registry_allow, the configured
        registries and their mirrors."""
        return RegistryNames.of(
            self.registry_allow, {host: r.mirrors for host, r in self.registries.items()}
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = Path(os.environ.get("HUTCH_CONFIG", DEFAULT_CONFIG))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load(**overrides: object) -> Settings:
    """The settings, with `overrides` (from command-line flags) on top; Invalid if malformed."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise Invalid(f"bad configuration: {problems}") from None
