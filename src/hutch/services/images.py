"""Images, through the control plane: every operation goes to the nodes' own stores.

A pull or an import lands on every ready node, so a machine finds its image wherever it is
placed (a node also pulls on demand when a machine needs an image it lacks).
"""

import tempfile
from collections.abc import AsyncIterator
from typing import Any

from hutch.images.egress import RegistryNames
from hutch.model.errors import NoCapacity, NotFound
from hutch.model.image import parse_ref
from hutch.model.tenancy import Principal, Project
from hutch.services.nodelink import NodeLink
from hutch.services.nodes import Nodes
from hutch.services.policy import Action, Policy


class Images:
    def __init__(
        self, nodes: Nodes, link: NodeLink, policy: Policy, registries: RegistryNames
    ) -> None:
        self.nodes = nodes
        self.link = link
        self.policy = policy
        self.registries = registries  # what references may name: nodes pull from no others

    async def _ready(self) -> list[Any]:
        ready = await self.nodes.ready()
        if not ready:
            raise NoCapacity("no node is ready: images live in the nodes' stores")
        return ready

    async def catalog(self, principal: Principal, project: Project) -> list[dict[str, Any]]:
        self.policy.require(principal, Action.IMAGE_READ, project.id)
        seen: dict[str, dict[str, Any]] = {}
        for node in await self._ready():
            for image in await self.link.images(node, project.name):
                seen.setdefault(image["id"], image)
        return sorted(seen.values(), key=lambda i: -float(i["created"]))

    async def get(self, principal: Principal, project: Project, ref: str) -> dict[str, Any]:
        self.policy.require(principal, Action.IMAGE_READ, project.id)
        for node in await self._ready():
            try:
                return await self.link.image(node, project.name, ref)
            except NotFound:
                continue
        raise NotFound(f"no image {ref!r} for project {project.name}")

    async def delete(self, principal: Principal, project: Project, ref: str) -> None:
        self.policy.require(principal, Action.IMAGE_WRITE, project.id)
        found = False
        for node in await self._ready():
            try:
                await self.link.delete_image(node, project.name, ref)
                found = True
            except NotFound:
                continue
        if not found:
            raise NotFound(f"no image {ref!r} for project {project.name}")

    async def pull(
        self, principal: Principal, project: Project, ref: str, public: bool
    ) -> AsyncIterator[bytes]:
        """NDJSON progress from each ready node in turn; the last line carries the image."""
        self.policy.require(principal, Action.IMAGE_WRITE, project.id)
        self.registries.check(parse_ref(ref).registry)  # before any node connects anywhere
        for node in await self._ready():
            async for line in self.link.pull(node, project.name, ref, public):
                yield line

    async def import_(
        self,
        principal: Principal,
        project: Project,
        body: AsyncIterator[bytes],
        names: list[str],
        public: bool,
    ) -> list[dict[str, Any]]:
        """The archive is spooled once to a temporary file, then sent to every ready node."""
        self.policy.require(principal, Action.IMAGE_WRITE, project.id)
        nodes = await self._ready()
        with tempfile.TemporaryFile() as spool:
            async for chunk in body:
                spool.write(chunk)
            result: list[dict[str, Any]] = []
            for node in nodes:
                spool.seek(0)
                result = await self.link.import_(node, project.name, _chunks(spool), names, public)
        return result


async def _chunks(f: Any) -> AsyncIterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk
