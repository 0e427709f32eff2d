"""A sandbox spec from what an operator asks for: a root (an image in the store, a directory or
an OCI layout) plus overrides.

Image config supplies the defaults (Entrypoint, Cmd, Env, WorkingDir, User, StopSignal); what the
caller gives wins, with Docker's rules: arguments replace Cmd, a new entrypoint also drops Cmd.
"""

import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path

from hutch.images.rootfs import PreparedRoot, prepare_image, prepare_root
from hutch.images.staging import Staging
from hutch.images.store import ImageStore
from hutch.images.users import resolve_user
from hutch.model import mirrored
from hutch.model.errors import Invalid, NotFound
from hutch.model.network import Attachment, PortMapping
from hutch.model.sandbox import (
    Capabilities,
    ProcessSpec,
    Resources,
    SandboxSpec,
    VolumeMount,
    parse_signal,
)
from hutch.wire.nodes import Assignment

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class RunRequest:
    image: str  # an image reference in the store, a root directory, or an OCI image layout
    command: tuple[str, ...] | None = None  # replaces the image's Cmd (None or empty: keep it)
    entrypoint: tuple[str, ...] | None = None  # replaces the image's Entrypoint (and drops Cmd)
    env: tuple[str, ...] = ()  # KEY=VALUE, over the image's
    workdir: str = ""
    user: str = ""  # name or uid, optionally :group or :gid, resolved in the image
    resources: Resources = field(default_factory=Resources)
    hostname: str = ""
    sandbox_id: str = ""  # generated when empty
    tty: bool = False  # a pseudo-terminal for the main process (TERM=xterm unless env says)
    stdin: bool = False  # a stdin pipe (or, with tty, typing into the terminal) for attaching
    rows: int = 0  # the terminal's size (0: 24 x 80)
    cols: int = 0
    networks: tuple[Attachment, ...] = ()  # its NICs, eth0 first (none: no network)
    ports: tuple[PortMapping, ...] = ()  # published on the node, to eth0's addresses
    hold_output: bool = False  # a follower comes from the start: hold output for it (log_hold)
    volumes: tuple[VolumeMount, ...] = ()  # mounted before the workload starts, in order

    @classmethod
    def of(cls, a: Assignment, image: str, volumes: tuple[VolumeMount, ...] = ()) -> "RunRequest":
        """What the node runs for assignment `a`, from `image` (what `a.image` resolved to),
        with `a.volumes` as the node's storage backend has them (`volumes`)."""
        return mirrored(  # workdir, user and the terminal's as the assignment says
            cls,
            a,
            image=image,
            command=tuple(a.command) if a.command is not None else None,
            entrypoint=tuple(a.entrypoint) if a.entrypoint is not None else None,
            env=tuple(a.env),
            resources=Resources(cpus=a.cpus, memory_mib=a.memory_mib, scratch_mib=a.disk_mib),
            sandbox_id=a.sandbox,
            hostname=a.machine,
            networks=tuple(n.model() for n in a.networks),
            ports=tuple(p.model() for p in a.ports),
            volumes=volumes,
        )


def new_sandbox_id() -> str:
    return "sb-" + secrets.token_hex(6)


def merge_env(*layers: tuple[str, ...]) -> tuple[str, ...]:
    """Later layers win per key; order of first appearance is kept."""
    merged: dict[str, str] = {}
    for layer in layers:
        for entry in layer:
            key, sep, value = entry.partition("=")
            if not sep:
                raise Invalid(f"environment entry {entry!r} is not KEY=VALUE")
            merged[key] = value
    return tuple(f"{k}={v}" for k, v in merged.items())


@dataclass(frozen=True, slots=True)
class Roots:
    """Where sandbox roots come from: the image store, or paths; and where they are prepared."""

    cache_dir: Path
    max_unpacked_bytes: int = 8 << 30
    store: ImageStore | None = None
    project: str = "default"
    staging: Staging | None = None  # a tmpfs where disk-only roots are unpacked on their way
    allow_paths: bool = True  # False for tenants' requests: a source is always an image

    def prepare(self, source: str, caps: Capabilities) -> PreparedRoot:
        """The root a runtime with `caps` needs, from a path if one exists, else the store."""
        disk = caps.root == "disk"
        path = Path(source)
        if self.allow_paths and (
            path.exists() or self.store is None or source.startswith(("/", "."))
        ):
            return prepare_root(
                path,
                self.cache_dir,
                disk=disk,
                max_unpacked_bytes=self.max_unpacked_bytes,
                staging=self.staging,
            )
        if self.store is None:
            raise Invalid("no image store to resolve images from")
        try:
            image = self.store.resolve(source, self.project)
        except NotFound:
            raise NotFound(
                f"{source!r} is neither a path nor an image in this host's store: "
                f"pull it into this host's store first (hutch image pull --local {source})"
            ) from None
        return prepare_image(
            self.store.layout(),
            self.store.image(image.digest),
            self.cache_dir,
            disk=disk,
            max_unpacked_bytes=self.max_unpacked_bytes,
            staging=self.staging,
        )


def build_spec(
    request: RunRequest, caps: Capabilities, roots: Roots
) -> tuple[SandboxSpec, PreparedRoot]:
    """Prepare the root the runtime needs (directory or disk) and the spec to run on it."""
    root = roots.prepare(request.image, caps)
    config = root.config
    if request.entrypoint is not None:
        argv = request.entrypoint + (request.command or ())
    else:
        argv = config.entrypoint + (request.command or config.cmd)
    if not argv:
        raise Invalid(
            "no command to run: give one after --, or use an image with Entrypoint or Cmd"
        )
    user = resolve_user(root.rootfs, request.user or config.user)
    sandbox_id = request.sandbox_id or new_sandbox_id()
    hostname = request.hostname or sandbox_id
    env = merge_env(
        (
            f"PATH={DEFAULT_PATH}",
            f"HOSTNAME={hostname}",
            "HOME=/root" if user.uid == 0 else "HOME=/",
            *(("TERM=xterm",) if request.tty else ()),
        ),
        config.env,
        request.env,
    )
    process = ProcessSpec(
        args=argv,
        env=env,
        cwd=request.workdir or config.working_dir or "/",
        user=user,
        stdin=request.stdin,
        tty=request.tty,
        rows=request.rows,
        cols=request.cols,
    )
    spec = SandboxSpec(
        id=sandbox_id,
        process=process,
        rootfs=str(root.rootfs),
        root_disk=str(root.disk) if root.disk else "",
        resources=request.resources,
        hostname=hostname,
        stop_signal=parse_signal(config.stop_signal) if config.stop_signal else int(signal.SIGTERM),
        networks=request.networks,
        ports=request.ports,
        volumes=request.volumes,
        hold_output=request.hold_output,
    )
    return spec, root
