"""`hutch project`, `hutch token`, `hutch quota`: tenants, their API tokens and their quotas."""

from typing import Annotated

import typer

from hutch.cli.remote import (
    OutputOpt,
    act,
    ago,
    check_output,
    connect,
    dump,
    each,
    emit,
    fields,
    listed,
    progress,
    when,
)
from hutch.model.errors import Invalid
from hutch.model.tenancy import Role
from hutch.model.units import format_bytes, parse_mib
from hutch.model.volume import GIB, parse_size
from hutch.wire.tenancy import QuotaReport, QuotaView

project_app = typer.Typer(
    help="Projects: the tenants. Each has its own machines, images, tokens, quota.",
    no_args_is_help=True,
)
token_app = typer.Typer(help="A project's API tokens: create, ls, revoke.", no_args_is_help=True)
quota_app = typer.Typer(help="A project's quota and usage: show, set.", no_args_is_help=True)

ProjectOpt = Annotated[
    str | None,
    typer.Option("--project", "-p", help="Project (default: the context's, or the token's)."),
]


def _mib(value: int | None) -> str | None:
    return None if value is None else format_bytes(value << 20)


def _limits(q: QuotaView) -> str:
    parts = [
        f"{label}={value}"
        for label, value in (
            ("machines", q.machines),
            ("vcpus", q.vcpus),
            ("memory", _mib(q.memory_mib)),
            ("disk", _mib(q.disk_mib)),
            ("images", _mib(q.images_mib)),
            ("images unpacked", _mib(q.images_unpacked_mib)),
            ("volumes", _gib(q.volume_gib)),
            ("snapshots", _gib(q.snapshot_gib)),
        )
        if value is not None
    ]
    return ", ".join(parts) or "unlimited"


# -- projects -------------------------------------------------------------------------------------


@project_app.command("create")
def project_create(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Lowercase letters, digits and '-'.")],
    strategy: Annotated[
        str, typer.Option(help="Place its machines: spread across nodes, or pack them.")
    ] = "spread",
) -> None:
    """Create a project (system token). Then: `hutch token create --project NAME`."""
    with connect() as client:
        project = client.projects.create(name, strategy=strategy)
    progress(f"created project {project.name} ({project.id})")
    typer.echo(project.name)


@project_app.command("strategy")
def project_strategy(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    strategy: Annotated[str, typer.Argument(metavar="STRATEGY", help="spread or pack")],
) -> None:
    """Set how a project's machines are placed (system token): spread or pack."""
    act(
        lambda client: client.projects.set_strategy(name, strategy),
        f"project {name} places its machines: {strategy}",
    )


@project_app.command("ls")
def project_ls(output: OutputOpt = "table") -> None:
    """List projects (a system token sees all).

    A project token sees its own project only.
    """
    columns = [*fields("name", "id"), when("created_at"), ("QUOTA", lambda p: _limits(p.quota))]
    listed(lambda client: client.projects.list(), columns, output)


@project_app.command("rm")
def project_rm(
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help="Projects to delete.")],
) -> None:
    """Delete projects (system token).

    A project that still has machines is refused: `hutch rm -f` them first.
    """
    each(lambda client, name: client.projects.delete(name), names)


# -- tokens ---------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    project: ProjectOpt = None,
    role: Annotated[
        Role,
        typer.Option(help="reader reads; member also runs machines; admin also manages tokens."),
    ] = Role.MEMBER,
    name: Annotated[str, typer.Option(help="What it is for, e.g. ci.")] = "",
    expires_in: Annotated[
        float | None, typer.Option(help="Seconds until it stops working (default: never).")
    ] = None,
) -> None:
    """Create a token (printed last, and only once).

    Use it with `HUTCH_TOKEN=... hutch ps` or `hutch login URL --token-stdin`.
    """
    with connect() as client:
        token = client.projects.tokens.create(project, role=role, name=name, expires_in=expires_in)
    expiry = f", expires {ago(token.expires_at)}" if token.expires_at else ""
    progress(f"token {token.id}: {token.role} in project {token.project}{expiry} (shown once)")
    typer.echo(token.secret)


@token_app.command("ls")
def token_ls(project: ProjectOpt = None, output: OutputOpt = "table") -> None:
    """List a project's tokens (admin role).

    Their secrets are not shown: they were, once, when created.
    """
    columns = [
        *fields("id", "name", "role"),
        when("created_at"),
        when("expires_at", "EXPIRES"),
        when("revoked_at", "REVOKED"),
    ]
    listed(lambda client: client.projects.tokens.list(project), columns, output)


@token_app.command("revoke")
def token_revoke(
    ids: Annotated[list[str], typer.Argument(metavar="TOKEN_ID...", help="Ids (t-...).")],
    project: ProjectOpt = None,
) -> None:
    """Revoke tokens: they stop working at once."""
    each(lambda client, token_id: client.projects.tokens.revoke(token_id, project), ids)


# -- quotas ---------------------------------------------------------------------------------------


def _show(report: QuotaReport, output: str) -> None:
    if output != "table":
        dump(report, output)
        return
    q, u = report.quota, report.usage
    rows = [
        ("machines", q.machines, u.machines),
        ("vcpus", q.vcpus, u.vcpus),
        ("memory", _mib(q.memory_mib), _mib(u.memory_mib)),
        ("disk", _mib(q.disk_mib), _mib(u.disk_mib)),
        ("images", _mib(q.images_mib), _mib(u.images_mib) or "?"),
        ("images unpacked", _mib(q.images_unpacked_mib), _mib(u.images_unpacked_mib) or "?"),
        ("volumes", _gib(q.volume_gib), _gib(u.volume_gib)),
        ("snapshots", _gib(q.snapshot_gib), _gib(u.snapshot_gib)),
    ]
    emit(
        rows,
        [
            ("RESOURCE", lambda r: r[0]),
            ("USED", lambda r: r[2]),
            ("LIMIT", lambda r: "unlimited" if r[1] is None else r[1]),
        ],
        "table",
    )


@quota_app.command("show")
def quota_show(
    project: Annotated[
        str | None,
        typer.Argument(metavar="PROJECT", help="Default: the context's, or the token's."),
    ] = None,
    output: OutputOpt = "table",
) -> None:
    """Show a project's quota and usage."""
    check_output(output)
    with connect() as client:
        _show(client.projects.quota(project), output)


def _limit(text: str, size: bool = False) -> int | None:
    """A limit option: a count (a size in MiB when `size`), or none/unlimited."""
    if text.lower() in ("none", "unlimited"):
        return None
    if size:
        return parse_mib(text)
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f"{text!r} is not a whole number (or 'unlimited')")
    return int(text)


def _gib(value: float | None) -> str | None:
    if value is None:
        return None
    return f"{value:.2f}G".replace(".00G", "G")


def _gib_limit(text: str) -> int | None:
    """A limit in GiB: a whole number (of GiB), a size with a unit (50G, 1T), or unlimited."""
    if text.lower() in ("none", "unlimited"):
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    size = parse_size(text)
    if size % GIB:
        raise Invalid(f"{text!r} is not a whole number of GiB")
    return size // GIB


@quota_app.command("set")
def quota_set(
    project: Annotated[
        str, typer.Argument(metavar="PROJECT", help="Project whose quota to change.")
    ],
    machines: Annotated[
        str | None, typer.Option(help="Machines at once (a number or 'unlimited').")
    ] = None,
    vcpus: Annotated[str | None, typer.Option(help="vCPUs of all its machines.")] = None,
    memory: Annotated[str | None, typer.Option(help="Memory of all its machines, e.g. 8G.")] = None,
    disk: Annotated[str | None, typer.Option(help="Disk of all its machines, e.g. 20G.")] = None,
    images: Annotated[
        str | None, typer.Option(help="Its images on each node, as stored, e.g. 5G.")
    ] = None,
    images_unpacked: Annotated[
        str | None, typer.Option(help="Its images on each node, unpacked, e.g. 20G.")
    ] = None,
    volumes: Annotated[
        str | None, typer.Option(help="Its volumes' sizes together, in GiB (or 50G).")
    ] = None,
    snapshots: Annotated[
        str | None, typer.Option(help="Its snapshots' sizes together, in GiB (or 50G).")
    ] = None,
    output: OutputOpt = "table",
) -> None:
    """Change a project's quota (system token).

    Limits not given stay as they are; 'unlimited' lifts one.

    Example: hutch quota set team-a --machines 10 --vcpus 8 --memory 8G --disk unlimited
    --images 5G
    """
    check_output(output)
    with connect() as client:
        current = client.projects.quota(project).quota
        report = client.projects.set_quota(
            project,
            machines=current.machines if machines is None else _limit(machines),
            vcpus=current.vcpus if vcpus is None else _limit(vcpus),
            memory_mib=current.memory_mib if memory is None else _limit(memory, size=True),
            disk_mib=current.disk_mib if disk is None else _limit(disk, size=True),
            images_mib=current.images_mib if images is None else _limit(images, size=True),
            images_unpacked_mib=current.images_unpacked_mib
            if images_unpacked is None
            else _limit(images_unpacked, size=True),
            volume_gib=current.volume_gib if volumes is None else _gib_limit(volumes),
            snapshot_gib=current.snapshot_gib if snapshots is None else _gib_limit(snapshots),
        )
    _show(report, output)
