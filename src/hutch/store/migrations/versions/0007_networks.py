"""Networks: networks, their addresses (and fences of lost machines' ones), security groups
and their rules, machines' groups and published ports, and facts (the controller's ULA /48).

Written by hand in the shapes `store/tables.py` declares (its naming convention spelled out:
pk_TABLE, fk_TABLE_COLUMN_TARGET, uq_TABLE_COLUMNS, ix_TABLE_COLUMN); test_migrations checks
that the result is the tables' schema."""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"

# What an address is unique by: its MAC anywhere; its host number and addresses in its network.
UNIQUE_ADDRESS = (("mac",), ("network_id", "host"), ("network_id", "ip4"), ("network_id", "ip6"))
# (table, column) of each index that upgrade makes and downgrade drops, in creation order.
INDEXES = (
    ("fences", "node_id"),
    ("machine_security_groups", "group_id"),
    ("network_addresses", "machine_id"),
    ("security_group_rules", "group_id"),
)


def _text(name: str, length: int) -> sa.Column[str]:
    return sa.Column(name, sa.String(length=length), nullable=False)


def _int(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=nullable)


def _ref(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def _key(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*columns, name=op.f(f"pk_{table}"))


def _unique(table: str, *columns: str) -> sa.UniqueConstraint:
    return sa.UniqueConstraint(*columns, name=op.f(f"uq_{table}_{'_'.join(columns)}"))


def _owned(table: str, *items: "sa.Column[Any] | sa.Constraint") -> None:
    """A project's named object: id, project, name (unique in the project), then `items`."""
    op.create_table(
        table,
        _text("id", 64),
        _text("project_id", 64),
        _text("name", 63),
        *items,
        _ref(table, "project_id", "projects"),
        _key(table, "id"),
        _unique(table, "project_id", "name"),
    )


def _machines(table: str, *items: "sa.Column[Any] | sa.Constraint", key: tuple[str, ...]) -> None:
    """Rows of a machine's: machine_id (a machine's), then `items`; keyed by machine_id, `key`."""
    op.create_table(
        table,
        _text("machine_id", 64),
        *items,
        _ref(table, "machine_id", "machines"),
        _key(table, "machine_id", *key),
    )


def upgrade() -> None:
    op.create_table("facts", _text("key", 63), _text("value", 255), _key("facts", "key"))
    _owned(
        "networks",
        _text("subnet4", 43),
        _text("subnet6", 43),
        _int("slot"),
        _int("pool4", nullable=True),
        _text("egress", 32),
        sa.Column("egress_allow", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        _unique("networks", "pool4"),
        _unique("networks", "slot"),
    )
    _owned("security_groups", sa.Column("created_at", sa.Double(), nullable=False))
    _machines("fences", _text("node_id", 64), key=("node_id",))
    _machines(
        "machine_ports",
        _int("host_port"),
        _text("protocol", 3),
        _int("port"),
        _text("host_ip", 15),
        key=("host_port", "protocol"),
    )
    op.create_index(
        "ix_machine_ports_host_port_protocol", "machine_ports", ["host_port", "protocol"]
    )
    _machines(
        "machine_security_groups",
        _text("group_id", 64),
        _int("position"),
        _ref("machine_security_groups", "group_id", "security_groups"),
        key=("group_id",),
    )
    op.create_table(
        "network_addresses",
        _text("network_id", 64),
        _text("machine_id", 64),
        _int("position"),
        _int("host"),
        _text("mac", 17),
        _text("ip4", 15),
        _text("ip6", 39),
        _ref("network_addresses", "machine_id", "machines"),
        _ref("network_addresses", "network_id", "networks"),
        _key("network_addresses", "network_id", "machine_id"),
        *(_unique("network_addresses", *columns) for columns in UNIQUE_ADDRESS),
    )
    op.create_table(
        "security_group_rules",
        _text("id", 64),
        _text("group_id", 64),
        _text("direction", 32),
        _text("protocol", 32),
        _int("port_min"),
        _int("port_max"),
        _text("remote_cidr", 43),
        _text("remote_group", 64),
        sa.Column("created_at", sa.Double(), nullable=False),
        _ref("security_group_rules", "group_id", "security_groups"),
        _key("security_group_rules", "id"),
    )
    for table, column in INDEXES:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column])


def downgrade() -> None:
    for table, column in reversed(INDEXES):
        op.drop_index(op.f(f"ix_{table}_{column}"), table_name=table)
    op.drop_index("ix_machine_ports_host_port_protocol", table_name="machine_ports")
    for table in ("security_group_rules", "network_addresses", "machine_security_groups",
                  "machine_ports", "fences", "security_groups", "networks", "facts"):  # fmt: skip
        op.drop_table(table)
