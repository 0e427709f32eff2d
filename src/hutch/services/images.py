"""Images, through the control plane: every operation goes to the nodes' own stores.

A pull or an import lands on every ready node, so a machine finds its image wherever it is
placed (a node also pulls on demand when a machine needs an image it lacks). Names are kept per
project id: a project sees its own images, then the operator's catalogue (published by system
tokens), never another project's.
"""

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, BinaryIO

from hutch.images.build import is_rootfs_tarball, write_archive_of_tarball
from hutch.images.egress import RegistryNames
from hutch.images.spool import disk_full_is_insufficient, spool
from hutch.images.store import is_digest_or_id
from hutch.model.errors import Conflict, HutchError, NoCapacity, NotFound, Unavailable
from hutch.model.image import parse_ref
from hutch.model.machine import Desired, Machine, MachineState, Node
from hutch.model.tenancy import Principal, Project
from hutch.services.nodelink import NodeLink
from hutch.services.nodes import Nodes
from hutch.services.policy import Action, Policy
from hutch.store.base import Store
from hutch.wire.images import ImageUsage, ImageView, PullEvent

log = logging.getLogger("hutch.images")
# Seconds a node's answer to "what is image REF for this project" is reused by `lookup`: long
# enough that creates in a burst ask once, short enough that another controller's change of a
# name (its pulls, imports and removals) is seen soon.
LOOKUP_TTL = 5.0
MAX_LOOKUPS = 1024  # answers kept at most (expired ones are dropped first)


class Images:
    def __init__(
        self,
        store: Store,
        nodes: Nodes,
        link: NodeLink,
        policy: Policy,
        registries: RegistryNames,
        *,
        spool_dir: Path,
        max_bytes: int,
        free_floor: int,
    ) -> None:
        self.store = store  # machines: an image they use is not removed under them
        self.nodes = nodes
        self.link = link
        self.policy = policy
        self.registries = registries  # what references may name: nodes pull from no others
        # Imports are held here on their way to the nodes: at most `max_bytes` each (or the
        # project's quota), never taking the disk below `free_floor`.
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self.free_floor = free_floor
        # (project id, ref) -> (until when, the asking): see `lookup`.
        self._lookups: dict[tuple[str, str], tuple[float, asyncio.Future[ImageView]]] = {}

    async def _ready(self) -> list[Any]:
        ready = await self.nodes.ready()
        if not ready:
            raise NoCapacity("no node is ready: images live in the nodes' stores")
        return ready

    def _writing(self, principal: Principal, project: Project, public: bool) -> None:
        self.policy.require(principal, Action.IMAGE_WRITE, project.id)
        if public:
            Policy.require_system(
                principal, "publish to or remove from the catalogue that every project sees"
            )

    async def catalog(self, principal: Principal, project: Project) -> list[ImageView]:
        self.policy.require(principal, Action.IMAGE_READ, project.id)
        seen: dict[str, ImageView] = {}
        for node in await self._ready():
            for image in await self.link.images(node, project.id):
                seen.setdefault(image.id, image)
        return sorted(seen.values(), key=lambda i: -i.created)

    async def get(self, principal: Principal, project: Project, ref: str) -> ImageView:
        self.policy.require(principal, Action.IMAGE_READ, project.id)
        return await self._ask(project, ref)

    async def lookup(self, principal: Principal, project: Project, ref: str) -> ImageView:
        """As `get`, for checks on the way of a request (a machine's create): the answer the
        nodes gave at most LOOKUP_TTL ago if there is one, and one asking shared by concurrent
        lookups of a name. Asking a node per create (an HTTP round trip, or a connection that
        fails) took a third of its time. Kept: an image, and that no node could answer (the
        create then leaves the image to its node, as it would with the node down); not "no such
        image" (an import of it may follow at once) nor any other refusal. This controller's
        pulls, imports and removals drop what was kept; another's are seen within LOOKUP_TTL."""
        self.policy.require(principal, Action.IMAGE_READ, project.id)
        key, now = (project.id, ref), time.monotonic()
        kept = self._lookups.get(key)
        if kept is None or kept[0] < now or not _reusable(kept[1]):
            if len(self._lookups) >= MAX_LOOKUPS:
                self._lookups = {k: v for k, v in self._lookups.items() if v[0] >= now}
            asking = asyncio.ensure_future(self._ask(project, ref))
            kept = self._lookups[key] = (now + LOOKUP_TTL, asking)
        # Shielded: a caller that goes away does not cancel the others' answer.
        return await asyncio.shield(kept[1])

    def _changed(self) -> None:
        """Images were pulled, imported or removed: `lookup` asks the nodes again."""
        self._lookups.clear()

    async def _ask(self, project: Project, ref: str) -> ImageView:
        """The image `ref` means for the project, from the first ready node that has it."""
        unreachable: Unavailable | None = None
        for node in await self._ready():
            try:
                return await self.link.image(node, project.id, ref)
            except NotFound:
                continue
            except Unavailable as e:  # another node may have it; if none does, who can tell
                unreachable = e
        if unreachable is not None:
            raise unreachable
        raise NotFound(f"no image {ref!r} in project {project.name} or the catalogue")

    async def usage(self, project: Project) -> ImageUsage | None:
        """What the project's images take on a ready node (each node holds the same), in MiB."""
        for node in await self.nodes.ready():
            try:
                return await self.link.image_usage(node, project.id)
            except HutchError:
                continue
        return None

    async def delete(
        self,
        principal: Principal,
        project: Project,
        ref: str,
        public: bool = False,
        force: bool = False,
    ) -> tuple[ImageView, list[Machine]]:
        """Remove the project's name `ref` (the catalogue's with `public`); the image, and the
        project's machines that lose it. Conflict while machines of the project that are not
        destroyed would lose it (started on it, or named it and not started yet), unless
        `force`: they keep running, but cannot start again without it."""
        self._writing(principal, project, public)
        image = await self.get(principal, project, ref)
        # A catalogue image a project names no removal of its own for is the nodes' to refuse.
        ours = public or image.source == "project"
        users = await self._users(project, ref, image) if ours else []
        if users and not force:
            many = len(users) > 1
            raise Conflict(
                f"image {ref!r} is used by machine{'s' if many else ''} "
                f"{', '.join(m.name for m in users)} of project {project.name}: remove "
                f"{'them' if many else 'it'} first, or remove the image anyway with --force "
                "(?force=true); a machine whose image is gone cannot start again"
            )
        found = False
        try:
            for node in await self._ready():
                try:
                    await self.link.delete_image(node, project.id, ref, public)
                    found = True
                except NotFound:
                    continue
        finally:
            self._changed()
        if not found:
            where = "the catalogue" if public else f"project {project.name}"
            raise NotFound(f"no image {ref!r} in {where}")
        return image, users

    async def _users(self, project: Project, ref: str, image: ImageView) -> list[Machine]:
        """The project's machines, not destroyed nor being destroyed, that run the image or
        will, and would lose it by the removal of `ref`: by the digest they got when they
        started (unless the image keeps another name), by the name they were created with
        until then."""
        by_digest = is_digest_or_id(ref)
        gone = set(image.names) if by_digest else {str(parse_ref(ref))}
        last = by_digest or set(image.names) <= gone
        wanted = [s for s in MachineState if s is not MachineState.DESTROYED]
        users: list[Machine] = []
        cursor: str | None = None
        async with self.store.read() as tx:
            while True:
                page, cursor = await tx.machines.list(
                    project.id, states=wanted, limit=500, cursor=cursor
                )
                users += [
                    m
                    for m in page
                    if m.desired is not Desired.DESTROYED and _loses(m, image.id, gone, last)
                ]
                if cursor is None:
                    return users

    async def from_peers(
        self, node: Node, project_id: str, ref: str
    ) -> AsyncIterator[dict[str, str] | bytes]:
        """For `node`, which lacks it: the image `ref` means for the project, exported by a
        ready peer that has it. First the headers that say whose it is, then the archive."""
        for peer in await self.nodes.ready():
            if peer.id == node.id:
                continue
            try:
                await self.link.image(peer, project_id, ref)
            except HutchError:
                continue
            async with self.link.archive(peer, project_id, ref) as (headers, chunks):
                yield {k: v for k, v in headers.items() if k.lower().startswith("x-hutch-")}
                async for chunk in chunks:
                    yield chunk
            return
        raise NotFound(f"no node holds image {ref!r} for this project or the catalogue")

    async def forget(self, project: Project) -> None:
        """A deleted project's names leave every ready node (on others they are keyed by an id
        no project has any more, so nothing can reach them)."""
        for node in await self.nodes.ready():
            try:
                await self.link.forget_project(node, project.id)
            except HutchError as e:
                log.warning("node %s keeps project %s's image names: %s", node.name, project.id, e)

    async def pull(
        self, principal: Principal, project: Project, ref: str, public: bool
    ) -> AsyncIterator[PullEvent]:
        """Progress from each ready node in turn; the last event carries the image."""
        self._writing(principal, project, public)
        self.registries.check(parse_ref(ref).registry)  # before any node connects anywhere
        try:
            for node in await self._ready():
                async for event in self.link.pull(
                    node, project.id, ref, public, project.quota.image_limits()
                ):
                    yield event
        finally:
            self._changed()

    async def import_(
        self,
        principal: Principal,
        project: Project,
        body: AsyncIterator[bytes],
        names: list[str],
        public: bool,
    ) -> list[ImageView]:
        """The archive is spooled once to a temporary file, then sent to every ready node.

        A root filesystem's tar (plain or compressed, with none of an image archive's files:
        what `docker import` takes) is packed here as a one-layer image first, as the CLI packs
        one: hostile names refused, device nodes and FIFOs left out, and what it unpacks to
        bounded by the project's unpacked quota (else `max_bytes`) as it is written."""
        self._writing(principal, project, public)
        nodes = await self._ready()
        limits = project.quota.image_limits()
        with contextlib.ExitStack() as stack:
            stack.enter_context(disk_full_is_insufficient())
            archive = stack.enter_context(tempfile.TemporaryFile(dir=self.spool_dir))
            await spool(
                body, archive, floor=self.free_floor,
                limit=limits.get("max_stored", self.max_bytes), quota="max_stored" in limits,
            )  # fmt: skip
            archive.seek(0)
            unpacked = limits.get("max_unpacked", self.max_bytes)
            if await asyncio.to_thread(is_rootfs_tarball, archive, unpacked):
                packed = stack.enter_context(tempfile.TemporaryFile(dir=self.spool_dir))
                await self._pack(archive, packed, limits)
                archive.close()  # its bytes are in the packed archive now
                archive = packed
            result: list[ImageView] = []
            try:
                for node in nodes:
                    archive.seek(0)
                    result = await self.link.import_(
                        node, project.id, _chunks(archive), names=names, public=public,
                        limits=limits,
                    )  # fmt: skip
            finally:
                self._changed()
        return result

    async def _pack(self, tarball: IO[bytes], out: BinaryIO, limits: dict[str, int]) -> None:
        """The OCI archive of the root filesystem's tar `tarball`, to `out`."""
        tarball.seek(0)
        packed = await asyncio.to_thread(
            write_archive_of_tarball, tarball, out,
            max_bytes=limits.get("max_unpacked", self.max_bytes), quota="max_unpacked" in limits,
            floor=self.free_floor, tmp_dir=self.spool_dir,
        )  # fmt: skip
        if note := packed.note("an imported root filesystem"):
            log.info("%s", note)


def _reusable(asking: "asyncio.Future[ImageView]") -> bool:
    """Whether `lookup` may answer from `asking`: under way, an image, or no node to ask."""
    if not asking.done():
        return True
    if asking.cancelled():
        return False
    error = asking.exception()
    return error is None or isinstance(error, Unavailable | NoCapacity)


def _loses(machine: Machine, digest: str, gone: set[str], last: bool) -> bool:
    if machine.image_digest:
        return last and machine.image_digest == digest
    spec = machine.spec.image
    if is_digest_or_id(spec):
        return last and digest.removeprefix("sha256:").startswith(spec.removeprefix("sha256:"))
    return str(parse_ref(spec)) in gone


async def _chunks(f: Any) -> AsyncIterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk
