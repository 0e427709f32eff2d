"""Networks: networks, their addresses (and fences of lost machines' ones), security groups
and their rules, machines' groups and published ports, and facts (the controller's ULA /48)."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "facts",
        sa.Column("key", sa.String(length=63), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_facts")),
    )
    op.create_table(
        "networks",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("subnet4", sa.String(length=43), nullable=False),
        sa.Column("subnet6", sa.String(length=43), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("pool4", sa.Integer(), nullable=True),
        sa.Column("egress", sa.String(length=32), nullable=False),
        sa.Column("egress_allow", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_networks_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_networks")),
        sa.UniqueConstraint("pool4", name=op.f("uq_networks_pool4")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_networks_project_id_name")),
        sa.UniqueConstraint("slot", name=op.f("uq_networks_slot")),
    )
    op.create_table(
        "security_groups",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_security_groups_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_groups")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_security_groups_project_id_name")),
    )
    op.create_table(
        "fences",
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_fences_machine_id_machines")
        ),
        sa.PrimaryKeyConstraint("machine_id", "node_id", name=op.f("pk_fences")),
    )
    with op.batch_alter_table("fences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fences_node_id"), ["node_id"], unique=False)

    op.create_table(
        "machine_ports",
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("host_port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(length=3), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("host_ip", sa.String(length=15), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_machine_ports_machine_id_machines")
        ),
        sa.PrimaryKeyConstraint(
            "machine_id", "host_port", "protocol", name=op.f("pk_machine_ports")
        ),
    )
    with op.batch_alter_table("machine_ports", schema=None) as batch_op:
        batch_op.create_index(
            "ix_machine_ports_host_port_protocol", ["host_port", "protocol"], unique=False
        )

    op.create_table(
        "machine_security_groups",
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["security_groups.id"],
            name=op.f("fk_machine_security_groups_group_id_security_groups"),
        ),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["machines.id"],
            name=op.f("fk_machine_security_groups_machine_id_machines"),
        ),
        sa.PrimaryKeyConstraint("machine_id", "group_id", name=op.f("pk_machine_security_groups")),
    )
    with op.batch_alter_table("machine_security_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_machine_security_groups_group_id"), ["group_id"], unique=False
        )

    op.create_table(
        "network_addresses",
        sa.Column("network_id", sa.String(length=64), nullable=False),
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("host", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("ip4", sa.String(length=15), nullable=False),
        sa.Column("ip6", sa.String(length=39), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"], ["machines.id"], name=op.f("fk_network_addresses_machine_id_machines")
        ),
        sa.ForeignKeyConstraint(
            ["network_id"], ["networks.id"], name=op.f("fk_network_addresses_network_id_networks")
        ),
        sa.PrimaryKeyConstraint("network_id", "machine_id", name=op.f("pk_network_addresses")),
        sa.UniqueConstraint("mac", name=op.f("uq_network_addresses_mac")),
        sa.UniqueConstraint(
            "network_id", "host", name=op.f("uq_network_addresses_network_id_host")
        ),
        sa.UniqueConstraint("network_id", "ip4", name=op.f("uq_network_addresses_network_id_ip4")),
        sa.UniqueConstraint("network_id", "ip6", name=op.f("uq_network_addresses_network_id_ip6")),
    )
    with op.batch_alter_table("network_addresses", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_network_addresses_machine_id"), ["machine_id"], unique=False
        )

    op.create_table(
        "security_group_rules",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=False),
        sa.Column("direction", sa.String(length=32), nullable=False),
        sa.Column("protocol", sa.String(length=32), nullable=False),
        sa.Column("port_min", sa.Integer(), nullable=False),
        sa.Column("port_max", sa.Integer(), nullable=False),
        sa.Column("remote_cidr", sa.String(length=43), nullable=False),
        sa.Column("remote_group", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["security_groups.id"],
            name=op.f("fk_security_group_rules_group_id_security_groups"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_security_group_rules")),
    )
    with op.batch_alter_table("security_group_rules", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_security_group_rules_group_id"), ["group_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("security_group_rules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_security_group_rules_group_id"))

    op.drop_table("security_group_rules")
    with op.batch_alter_table("network_addresses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_network_addresses_machine_id"))

    op.drop_table("network_addresses")
    with op.batch_alter_table("machine_security_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_machine_security_groups_group_id"))

    op.drop_table("machine_security_groups")
    with op.batch_alter_table("machine_ports", schema=None) as batch_op:
        batch_op.drop_index("ix_machine_ports_host_port_protocol")

    op.drop_table("machine_ports")
    with op.batch_alter_table("fences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fences_node_id"))

    op.drop_table("fences")
    op.drop_table("security_groups")
    op.drop_table("networks")
    op.drop_table("facts")
