"""The store's schema, as SQLAlchemy Core tables. The migrations must produce exactly this:
`tests/store/test_migrations.py` compares them, so change both together.

Portable between SQLite and PostgreSQL: timestamps are epoch seconds in DOUBLE PRECISION, enums
are stored by value, lists and maps as JSON. A machine's spec is spread over columns, so usage
sums and label filters are plain SQL.
"""

from decimal import Decimal

import sqlalchemy as sa

from hutch.model.machine import MachineState
from hutch.model.usage import PLACES

# Deterministic constraint names on both backends, so later migrations can name what they alter.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_ID = sa.String(64)
_NAME = sa.String(63)  # a DNS label
_ENUM = sa.String(32)
_TIME: sa.Double[float] = sa.Double()
# SQL NULL for None, not the JSON literal null: "None" means "the image's default" for command.
_JSON_OR_NULL = sa.JSON(none_as_null=True)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("name", _NAME, nullable=False, unique=True),
    sa.Column("created_at", _TIME, nullable=False),
    # Quota: NULL is unlimited.
    sa.Column("quota_machines", sa.Integer),
    sa.Column("quota_vcpus", sa.Integer),
    sa.Column("quota_memory_mib", sa.Integer),
    sa.Column("quota_disk_mib", sa.Integer),
    sa.Column("quota_images_mib", sa.Integer),
    sa.Column("quota_images_unpacked_mib", sa.Integer),
    sa.Column("quota_volume_gib", sa.Integer),
    sa.Column("quota_snapshot_gib", sa.Integer),
    sa.Column("strategy", _ENUM, nullable=False, server_default="spread"),
    # The last event number given in the project (events.seq): bumped under the row's lock.
    sa.Column("event_seq", sa.BigInteger, nullable=False, server_default="0"),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), index=True),  # NULL: system
    sa.Column("role", _ENUM, nullable=False),
    sa.Column("system", sa.Boolean, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("expires_at", _TIME),
    sa.Column("revoked_at", _TIME),
    sa.Column("secret_hash", sa.String(255), nullable=False, unique=True),
)

# Dashboard sign-ins (model.tenancy.Session); they go with their token.
web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("id", _ID, primary_key=True),  # sha256 of the cookie's secret
    sa.Column("token_id", _ID, sa.ForeignKey("tokens.id"), nullable=False, index=True),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("expires_at", _TIME, nullable=False, index=True),
    sa.Column("project_id", _ID),  # a system token's chosen project; not a key: it may go
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("address", sa.String(2048), nullable=False),
    sa.Column("runtimes", sa.JSON, nullable=False),  # list of names
    sa.Column("accel", _ENUM, nullable=False),
    sa.Column("capacity_cpus", sa.Integer, nullable=False),
    sa.Column("capacity_memory_mib", sa.Integer, nullable=False),
    sa.Column("capacity_disk_mib", sa.Integer, nullable=False),
    sa.Column("allocated_cpus", sa.Integer, nullable=False),
    sa.Column("allocated_memory_mib", sa.Integer, nullable=False),
    sa.Column("allocated_disk_mib", sa.Integer, nullable=False),
    sa.Column("overhead_mib", sa.JSON, nullable=False),  # runtime -> MiB
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("state", _ENUM, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("last_seen", _TIME, nullable=False),
    sa.Column("domain", sa.String(255), nullable=False, server_default=""),
    sa.Column("cordoned", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("version", sa.Integer, nullable=False),
    # What the node's agent long-polls on; bumped apart from `version` (no compare-and-set).
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("credential_hash", sa.String(255), nullable=False, unique=True),
)

machines = sa.Table(
    "machines",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", _NAME, nullable=False),
    # The spec, one column per field.
    sa.Column("image", sa.String(512), nullable=False),
    sa.Column("command", _JSON_OR_NULL),
    sa.Column("entrypoint", _JSON_OR_NULL),
    sa.Column("env", sa.JSON, nullable=False),
    sa.Column("workdir", sa.String(4096), nullable=False),
    sa.Column("user_spec", sa.String(255), nullable=False),  # spec.user ("user" is reserved)
    sa.Column("cpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("disk_mib", sa.Integer, nullable=False),
    # spec.scratch_mib, kept so usage is a SUM: the rule for it lives in the model only.
    sa.Column("scratch_mib", sa.Integer, nullable=False),
    sa.Column("runtime", _ENUM, nullable=False),
    sa.Column("restart", _ENUM, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("auto_destroy", sa.Boolean, nullable=False),
    sa.Column("group_name", sa.String(63), nullable=False, server_default=""),
    sa.Column("group_policy", _ENUM, nullable=False, server_default="none"),
    sa.Column("constraints", sa.JSON, nullable=False, server_default="{}"),
    sa.Column("strategy", _ENUM),  # NULL: the project's
    sa.Column("tty", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("stdin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("tty_rows", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tty_cols", sa.Integer, nullable=False, server_default="0"),
    sa.Column("hold_output", sa.Boolean, nullable=False, server_default=sa.false()),
    # Its volumes: [{"volume": id, "target": path, "read_only": bool, "name": name}, ...]
    sa.Column("volumes", sa.JSON, nullable=False, server_default="[]"),
    # Its lifetime: seconds of running (NULL: no limit) and what is done at its end.
    sa.Column("timeout_s", sa.Double),
    sa.Column("on_timeout", _ENUM, nullable=False, server_default="stop"),
    # Its idleness: seconds without a connection to its published ports (NULL: it never
    # idles) and what is done then.
    sa.Column("idle_s", sa.Double),
    sa.Column("on_idle", _ENUM, nullable=False, server_default="stop"),
    # The machine snapshot it continues from (`run --from`), its id; "" for none. No foreign
    # key: a snapshot that clones use is not deleted (services/snapshots.py checks).
    sa.Column("from_snapshot", _ID, nullable=False, server_default=""),
    # Its life.
    sa.Column("state", _ENUM, nullable=False),
    sa.Column("desired", _ENUM, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
    sa.Column("node_id", _ID, sa.ForeignKey("nodes.id"), index=True),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("exit_code", sa.Integer),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("oom_killed", sa.Boolean, nullable=False),
    sa.Column("restarts", sa.Integer, nullable=False),
    sa.Column("started_at", _TIME),
    sa.Column("finished_at", _TIME),
    # How the last stop asked for is carried out, and a restart's backoff.
    sa.Column("stop_signal", sa.String(32), nullable=False, server_default=""),
    sa.Column("stop_timeout", sa.Double, nullable=False, server_default="10"),
    sa.Column("start_after", _TIME, nullable=False, server_default="0"),
    # The image a node resolved its name to, and whose it was (project or catalogue).
    sa.Column("image_digest", sa.String(80), nullable=False, server_default=""),
    sa.Column("image_source", _ENUM, nullable=False, server_default=""),
    # Its lifetime's clock (Machine.entering), and Machine.expires_at, kept so the leader
    # finds the machines whose time is up by an index.
    sa.Column("ran_s", sa.Double, nullable=False, server_default="0"),
    sa.Column("running_since", _TIME),
    sa.Column("extended_s", sa.Double, nullable=False, server_default="0"),
    sa.Column("expires_at", _TIME),
    # The warm pool that owns it ("" once taken, or never pooled), and the pool's template
    # snapshot its current generation is restored from (model.machine.Machine).
    sa.Column("pool", _ID, nullable=False, server_default=""),
    sa.Column("pool_snapshot", _ID, nullable=False, server_default=""),
    # Its node's last sight of a connection to it, whether it idled to suspended, and
    # Machine.idle_at, kept so the leader finds the machines that idled by an index.
    sa.Column("active_at", _TIME),
    sa.Column("idled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("idle_at", _TIME),
    sa.Column("version", sa.Integer, nullable=False),
    # Listing order, and the cursor's key.
    sa.Index("ix_machines_project_id_created_at_id", "project_id", "created_at", "id"),
    # A group's machines, for (anti-)affinity and spreading.
    sa.Index("ix_machines_group", "project_id", "group_name"),
)

LIVE = machines.c.state != MachineState.DESTROYED.value
# The scheduler's queue: machines to place, oldest first; a page is the index's next rows.
PENDING = sa.and_(
    machines.c.node_id.is_(None),
    machines.c.state == MachineState.CREATED.value,
    machines.c.desired == "running",
)
sa.Index(
    "ix_machines_pending",
    machines.c.created_at,
    machines.c.id,
    sqlite_where=PENDING,
    postgresql_where=PENDING,
)

# Running machines with a timeout, by when it runs out (services/lifetimes.py).
_EXPIRING = machines.c.expires_at.is_not(None)
sa.Index(
    "ix_machines_expires_at",
    machines.c.expires_at,
    sqlite_where=_EXPIRING,
    postgresql_where=_EXPIRING,
)

# Running machines that idle, by when they do (services/lifetimes.py).
_IDLING = machines.c.idle_at.is_not(None)
sa.Index("ix_machines_idle_at", machines.c.idle_at, sqlite_where=_IDLING, postgresql_where=_IDLING)

# Who leads the controllers: one row per lease, taken over once it expires.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("term", sa.Integer, nullable=False),  # +1 at every change of holder
    sa.Column("expires_at", _TIME, nullable=False),
)

# A name is unique among the project's machines that are not destroyed: a destroyed machine's
# row stays (until purged) but its name is free again. Partial indexes on both backends.
sa.Index(
    "uq_machines_project_id_name_live",
    machines.c.project_id,
    machines.c.name,
    unique=True,
    sqlite_where=LIVE,
    postgresql_where=LIVE,
)

events = sa.Table(
    "events",
    metadata,
    # INTEGER PRIMARY KEY AUTOINCREMENT on SQLite (ids never reused), an identity on PostgreSQL.
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True
    ),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("object_id", _ID, nullable=False),
    sa.Column("state", _ENUM, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("time", _TIME, nullable=False),
    # The event's number in its project (1, 2, 3...): what the API calls its id, so that the ids
    # a project sees say nothing about other projects. `id` only orders rows internally.
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("uq_events_project_id_seq", "project_id", "seq", unique=True),
    sa.Index("ix_events_project_id_object_id_seq", "project_id", "object_id", "seq"),
    sqlite_autoincrement=True,
)

# -- networks (see hutch.model.addressing) -------------------------------------------------------

# Facts chosen once per controller and shared by every controller of the store (the ULA /48).
facts = sa.Table(
    "facts",
    metadata,
    sa.Column("key", sa.String(63), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
)

networks = sa.Table(
    "networks",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("subnet4", sa.String(43), nullable=False),
    sa.Column("subnet6", sa.String(43), nullable=False),
    # Its VNI and /64 number, unique controller-wide; a default network's /24 of the pool.
    sa.Column("slot", sa.Integer, nullable=False, unique=True),
    sa.Column("pool4", sa.Integer, unique=True),
    sa.Column("egress", _ENUM, nullable=False),
    sa.Column("egress_allow", sa.JSON, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.UniqueConstraint("project_id", "name"),
)

# One row per (machine, network) from the machine's creation to its destruction; a machine lost
# with its node keeps its rows until that node is fenced (see `fences`).
network_addresses = sa.Table(
    "network_addresses",
    metadata,
    sa.Column("network_id", _ID, sa.ForeignKey("networks.id"), primary_key=True),
    sa.Column("machine_id", _ID, sa.ForeignKey("machines.id"), primary_key=True, index=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("host", sa.Integer, nullable=False),
    sa.Column("mac", sa.String(17), nullable=False, unique=True),
    sa.Column("ip4", sa.String(15), nullable=False),
    sa.Column("ip6", sa.String(39), nullable=False),
    sa.UniqueConstraint("network_id", "host"),
    sa.UniqueConstraint("network_id", "ip4"),
    sa.UniqueConstraint("network_id", "ip6"),
)

# A machine lost with a node may still run there: its addresses are not given to another
# machine until that node is fenced (it came back, and drops what is not its own, or it was
# removed).
fences = sa.Table(
    "fences",
    metadata,
    sa.Column("machine_id", _ID, sa.ForeignKey("machines.id"), primary_key=True),
    sa.Column("node_id", _ID, primary_key=True, index=True),  # no key: a removed node's go too
)

security_groups = sa.Table(
    "security_groups",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.UniqueConstraint("project_id", "name"),
)

security_group_rules = sa.Table(
    "security_group_rules",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("group_id", _ID, sa.ForeignKey("security_groups.id"), nullable=False, index=True),
    sa.Column("direction", _ENUM, nullable=False),
    sa.Column("protocol", _ENUM, nullable=False),
    sa.Column("port_min", sa.Integer, nullable=False),
    sa.Column("port_max", sa.Integer, nullable=False),
    sa.Column("remote_cidr", sa.String(43), nullable=False),
    sa.Column("remote_group", _ID, nullable=False),  # "" or a security group's id
    sa.Column("created_at", _TIME, nullable=False),
)

machine_security_groups = sa.Table(
    "machine_security_groups",
    metadata,
    sa.Column("machine_id", _ID, sa.ForeignKey("machines.id"), primary_key=True),
    sa.Column("group_id", _ID, sa.ForeignKey("security_groups.id"), primary_key=True, index=True),
    sa.Column("position", sa.Integer, nullable=False),
)

# Published ports (`-p`). The scheduler never puts two machines publishing one host port and
# protocol on one node (placement filter `ports_free`); a machine's node is its own column.
machine_ports = sa.Table(
    "machine_ports",
    metadata,
    sa.Column("machine_id", _ID, sa.ForeignKey("machines.id"), primary_key=True),
    sa.Column("host_port", sa.Integer, primary_key=True),
    sa.Column("protocol", sa.String(3), primary_key=True),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("host_ip", sa.String(15), nullable=False),
    sa.Index("ix_machine_ports_host_port_protocol", "host_port", "protocol"),
)

# -- volumes (see hutch.model.volume) ------------------------------------------------------------

volumes = sa.Table(
    "volumes",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("fs", _ENUM, nullable=False),
    sa.Column("state", _ENUM, nullable=False),
    sa.Column("node_id", _ID, sa.ForeignKey("nodes.id"), index=True),
    # The machine it is attached to, one at a time, until that machine is destroyed (no
    # foreign key: a purged machine's row goes).
    sa.Column("machine_id", _ID, index=True),
    sa.Column("used_bytes", sa.BigInteger, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("operation", _ENUM, nullable=False, server_default=""),
    sa.Column("operation_until", _TIME, nullable=False, server_default="0"),
    # Its file system may be a tenant's craft (see model.volume.Volume.untrusted).
    sa.Column("untrusted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("project_id", "name"),
)

volume_snapshots = sa.Table(
    "volume_snapshots",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("volume_id", _ID, sa.ForeignKey("volumes.id"), nullable=False),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False, index=True),
    sa.Column("name", _NAME, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("used_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("untrusted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("frozen", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("volume_id", "name"),
)

# -- machine snapshots (see hutch.model.snapshot) -------------------------------------------------

machine_snapshots = sa.Table(
    "machine_snapshots",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", _NAME, nullable=False),
    # The machine it was taken of: no foreign key, its snapshots outlive a purged machine.
    sa.Column("machine_id", _ID, nullable=False),
    sa.Column("node_id", _ID, sa.ForeignKey("nodes.id"), nullable=False, index=True),
    sa.Column("image", sa.String(512), nullable=False),
    sa.Column("image_digest", sa.String(80), nullable=False),
    sa.Column("cpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("disk_mib", sa.Integer, nullable=False),
    sa.Column("runtime", _ENUM, nullable=False),
    sa.Column("command", _JSON_OR_NULL),
    sa.Column("entrypoint", _JSON_OR_NULL),
    sa.Column("env", sa.JSON, nullable=False),
    sa.Column("workdir", sa.String(4096), nullable=False),
    sa.Column("user_spec", sa.String(255), nullable=False),
    sa.Column("networks", sa.JSON, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("state", _ENUM, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    # The warm pool whose template it is ("" for the project's own): hidden from listings.
    sa.Column("pool", _ID, nullable=False, server_default=""),
    sa.UniqueConstraint("project_id", "name"),
)

# -- warm pools (see hutch.model.pool) ------------------------------------------------------------

pools = sa.Table(
    "pools",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("image", sa.String(512), nullable=False),
    sa.Column("cpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("disk_mib", sa.Integer, nullable=False),
    sa.Column("runtime", _ENUM, nullable=False),
    sa.Column("min_ready", sa.Integer, nullable=False),
    sa.Column("state", _ENUM, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    # Its template snapshot, the image it ran (by digest) and its node: "" until taken.
    sa.Column("snapshot_id", _ID, nullable=False),
    sa.Column("image_digest", sa.String(80), nullable=False),
    sa.Column("node_id", _ID, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # One pool per image and shape in a project (`pool set` updates it).
    sa.UniqueConstraint("project_id", "image", "cpus", "memory_mib", "disk_mib", "runtime"),
)

# -- metric history (see hutch.model.metrics) -----------------------------------------------------

# One point per machine, tier (`step`), bucket and generation: the node's last sample in the
# bucket (counters are cumulative, so it stands for the whole bucket). The leader deletes points
# older than their tier keeps them (services/telemetry.py): the table's size is bounded.
METRIC_COUNTERS = (
    "memory_bytes", "memory_limit_bytes",
    "disk_read_bytes", "disk_write_bytes", "disk_read_ops", "disk_write_ops",
    "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "egress_bytes", "ingress_bytes",
)  # fmt: skip
machine_metrics = sa.Table(
    "machine_metrics",
    metadata,
    sa.Column("machine_id", _ID, primary_key=True),
    sa.Column("step", _TIME, primary_key=True),
    sa.Column("bucket", _TIME, primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True),
    sa.Column("project_id", _ID, nullable=False),
    sa.Column("time", _TIME, nullable=False),
    sa.Column("state", _ENUM, nullable=False),
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("running_s", _TIME, nullable=False),
    sa.Column("cpu_s", _TIME, nullable=False),
    *(sa.Column(name, sa.BigInteger, nullable=False) for name in METRIC_COUNTERS),
    sa.Index("ix_machine_metrics_step_bucket", "step", "bucket"),
)

# -- the usage ledger (see hutch.model.usage, services/metering.py) --------------------------------


class Millionths(sa.TypeDecorator[Decimal]):
    """A ledger quantity: a Decimal with model.usage.PLACES places, stored as an integer count
    of millionths, so that it is exact and its sums are exact on SQLite too (whose NUMERIC is a
    float)."""

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: sa.Dialect) -> int | None:
        return None if value is None else int(value.scaleb(PLACES))

    def process_result_value(self, value: object, dialect: sa.Dialect) -> Decimal | None:
        return None if value is None else Decimal(int(value)).scaleb(-PLACES)  # type: ignore[call-overload]


# Append-only at the hour's grain: a row per interval of a subject's use; a machine
# generation's row of an hour is added into until the hour is closed (services/metering.py),
# never changed after. No foreign keys: the ledger outlives the machines, volumes and projects
# it is about.
usage = sa.Table(
    "usage",
    metadata,
    sa.Column(
        "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), sa.Identity(), primary_key=True
    ),
    sa.Column("key", sa.String(200), nullable=False, unique=True),
    sa.Column("project_id", _ID, nullable=False),
    sa.Column("machine_id", _ID),
    sa.Column("subject", _ID, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),  # canonical (sorted keys): grouped by its text
    sa.Column("start", _TIME, nullable=False),
    sa.Column("end", _TIME, nullable=False),
    sa.Column("vcpu_seconds", Millionths, nullable=False),
    sa.Column("cpu_seconds", Millionths, nullable=False),
    sa.Column("memory_gib_seconds", Millionths, nullable=False),
    sa.Column("storage_gib_hours", Millionths, nullable=False),
    sa.Column("egress_bytes", sa.BigInteger, nullable=False),
    sa.Column("starts", sa.Integer, nullable=False),
    sa.Index("ix_usage_project_id_start", "project_id", "start"),
    sa.Index("ix_usage_start", "start"),
    sqlite_autoincrement=True,
)

# How far the ledger is in each stream it is made from: per (machine, generation) the last
# sample counted (its seq, time and cumulative counters), so the next one counts only its
# delta; and the storage accrual's last interval (subject "storage", generation 0).
usage_marks = sa.Table(
    "usage_marks",
    metadata,
    sa.Column("subject", _ID, primary_key=True),
    sa.Column("generation", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("time", _TIME, nullable=False),
    sa.Column("running_s", _TIME, nullable=False),
    sa.Column("cpu_s", _TIME, nullable=False),
    sa.Column("egress_bytes", sa.BigInteger, nullable=False),
    sa.Column("ended", sa.Boolean, nullable=False),  # its generation's last sample was counted
)

# Billing (model/prices.py). Money is stored as decimal strings: exact on both backends (SQLite
# has no decimal type). Invoices and credits outlive their project: they are records.
price_books = sa.Table(
    "price_books",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # one row: 1
    sa.Column("book", sa.JSON, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
)

invoices = sa.Table(
    "invoices",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, nullable=False),
    sa.Column("period_start", _TIME, nullable=False),
    sa.Column("period_end", _TIME, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("total", sa.String(40), nullable=False),
    sa.Column("lines", sa.JSON, nullable=False),
    sa.Column("closed_at", _TIME, nullable=False),
    # One invoice per project and period: two leaders closing it, only one row is written.
    sa.UniqueConstraint("project_id", "period_start"),
)

credits = sa.Table(
    "credits",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("project_id", _ID, nullable=False, index=True),
    sa.Column("amount", sa.String(40), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("invoice_id", _ID, nullable=False),  # "" until an invoice carries it
)

budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("project_id", _ID, primary_key=True),
    sa.Column("amount", sa.String(40), nullable=False),
    sa.Column("stop", sa.Boolean, nullable=False),
    sa.Column("period_start", _TIME, nullable=False),
    sa.Column("level", sa.Integer, nullable=False),
)
