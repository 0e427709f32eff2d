"""/ui/images: the project's images, a pull whose progress the page shows as it comes, removal.
The simulated node has no agent: its image store is a small stand-in (`NodeImages`)."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from hutch.model.errors import NotFound
from hutch.wire.images import ImageView, PullEvent
from tests.helpers.api import Api, served
from tests.helpers.webpages import alert, signed_in

MIB = 1 << 20


def _image(name: str) -> ImageView:
    return ImageView(id="sha256:" + "ab" * 32, names=[name], size=3 * MIB, unpacked=5 * MIB,
                     created=time.time(), layers=1, public=False)  # fmt: skip


class NodeImages:
    """What a node's image store answers, in memory, per project id; a pull waits for `go`
    after its first progress step, so a test can see the page before the pull ends."""

    def __init__(self) -> None:
        self.images: dict[str, dict[str, ImageView]] = {}
        self.go = asyncio.Event()
        self.go.set()
        self.imported: list[tuple[bytes, list[str]]] = []

    async def images_of(self, node: Any, project: str) -> list[ImageView]:
        return list(self.images.get(project, {}).values())

    async def image(self, node: Any, project: str, ref: str) -> ImageView:
        if ref not in self.images.get(project, {}):
            raise NotFound(f"no image {ref!r}")
        return self.images[project][ref]

    async def delete_image(self, node: Any, project: str, ref: str, public: bool) -> None:
        await self.image(node, project, ref)
        del self.images[project][ref]

    async def pull(self, node: Any, project: str, ref: str, public: bool,
                   limits: Any) -> AsyncIterator[PullEvent]:  # fmt: skip
        layer = "sha256:" + "cd" * 32
        yield PullEvent(layer=layer, status="downloading", done=0, total=4 * MIB)
        await self.go.wait()
        if ref.endswith(":broken"):
            yield PullEvent(error=f"manifest unknown: {ref}")
            return
        yield PullEvent(layer=layer, status="downloading", done=4 * MIB, total=4 * MIB)
        self.images.setdefault(project, {})[ref] = _image(ref)
        yield PullEvent(image=self.images[project][ref])

    async def import_(self, node: Any, project: str, body: AsyncIterator[bytes], *,
                      names: list[str], public: bool, limits: Any) -> list[ImageView]:  # fmt: skip
        data = b"".join([chunk async for chunk in body])
        self.imported.append((data, names))
        self.images.setdefault(project, {})[names[0]] = _image(names[0])
        return [self.images[project][names[0]]]


@pytest.fixture
def node(api: Api, monkeypatch: pytest.MonkeyPatch) -> NodeImages:
    fake = NodeImages()
    monkeypatch.setattr(api.ctl.link, "images", fake.images_of)
    for name in ("image", "delete_image", "pull", "import_"):
        monkeypatch.setattr(api.ctl.link, name, getattr(fake, name))
    return fake


async def test_a_pulls_progress_shows_as_it_comes_then_the_image_is_listed(
    api: Api, node: NodeImages
) -> None:
    member = await signed_in(api, "alpha", "member")
    page = (await member.get("/ui/images")).text
    assert '<form id="pull"' in page and '<form id="import"' in page
    node.go.clear()
    session = {"Cookie": f"hutch_session={member.http.cookies['hutch_session']}"}
    async with served(api) as url, httpx.AsyncClient(base_url=url, headers=session) as browser:
        data = {"csrf": member.csrf, "ref": "docker.io/library/busybox:1.36"}
        async with browser.stream("POST", "/ui/images/pull", data=data) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            seen = ""
            chunks = r.aiter_text()
            while "<progress" not in seen:  # the first step, while the pull still waits
                seen += await anext(chunks)
            assert 'value="0" max="4194304"' in seen and "Pulled" not in seen
            node.go.set()
            async for chunk in chunks:
                seen += chunk
    assert 'class="alert ok">Pulled docker.io/library/busybox:1.36' in seen
    assert seen.rstrip().endswith("</html>")
    page = (await member.get("/ui/images")).text
    assert "<div>docker.io/library/busybox:1.36</div>" in page and "3.0 MiB" in page
    # A pull the node fails ends the page with why; a registry the operator does not allow is
    # refused before any node is asked.
    r = await member.post("/ui/images/pull", {"ref": "docker.io/library/busybox:broken"})
    assert "manifest unknown" in alert(r.text)
    r = await member.post("/ui/images/pull", {"ref": "registry.evil.example/x:1"})
    assert r.status_code == 403 and "is not allowed" in alert(r.text)
    await member.close()


async def test_a_reader_reads_and_cannot_pull_or_remove(api: Api, node: NodeImages) -> None:
    member = await signed_in(api, "alpha", "member")
    assert (await member.post("/ui/images/pull", {"ref": "busybox:1"})).status_code == 200
    reader = await signed_in(api, "alpha", "reader")
    page = (await reader.get("/ui/images")).text
    assert "<div>busybox:1</div>" in page and "<form" not in page.split('<main id="main"')[1]
    for path in ("/ui/images/pull", "/ui/images/remove"):
        r = await reader.post(path, {"ref": "busybox:1"})
        assert r.status_code == 403 and "image.write needs the member role" in alert(r.text)
    # Another project's images are not alpha's to see or remove.
    beta = await signed_in(api, "beta", "member")
    assert "busybox:1" not in (await beta.get("/ui/images")).text
    r = await beta.post("/ui/images/remove", {"ref": "busybox:1"})
    assert r.status_code == 404 and "busybox:1" in alert(r.text)
    # In use by a machine: the page says which, and removes it only when asked again.
    token = await api.token("alpha", "member")
    assert (await api.machine(token, name="uses", image="busybox:1")).status_code == 201
    r = await member.post("/ui/images/remove", {"ref": "busybox:1"})
    assert r.status_code == 409 and "machine uses" in alert(r.text)
    assert '<form id="remove-anyway"' in r.text
    assert "<div>busybox:1</div>" in (await member.get("/ui/images")).text
    r = await member.post("/ui/images/remove", {"ref": "busybox:1", "force": "true"})
    assert r.status_code == 303
    assert "busybox:1" not in (await member.get("/ui/images")).text
    assert (await member.post("/ui/images/pull", {"ref": ""})).status_code == 400
    for v in (member, reader, beta):
        await v.close()


async def test_an_uploaded_archive_streams_to_the_nodes_once_its_form_is_checked(
    api: Api, node: NodeImages
) -> None:
    archive = bytes(range(256)) * 8192  # 2 MiB: past the 1 MiB that other forms may send
    upload = {"file": ("app.tar", archive, "application/x-tar")}
    member = await signed_in(api, "alpha", "member")
    r = await member.post("/ui/images/import", {"csrf": "forged", "name": "app:1"}, files=upload)
    assert r.status_code == 403 and node.imported == []
    reader = await signed_in(api, "alpha", "reader")
    r = await reader.post("/ui/images/import", {"name": "app:1"}, files=upload)
    assert r.status_code == 403 and "image.write needs the member role" in alert(r.text)
    assert node.imported == []
    r = await member.post("/ui/images/import", {"name": "app:1"})
    assert r.status_code == 400 and "multipart/form-data" in alert(r.text)
    garbled = {"Content-Type": "multipart/form-data; boundary=xx"}
    r = await member.http.post("/ui/images/import", content=b"garbage", headers=garbled)
    assert r.status_code == 400 and "is not multipart/form-data" in alert(r.text)
    r = await member.post(
        "/ui/images/import", {"name": "app:1"}, files={"other": ("a.tar", b"abc")}
    )
    assert r.status_code == 400 and "no file 'file'" in alert(r.text)
    r = await member.post("/ui/images/import", {"name": "app:1"}, files=upload)
    assert r.status_code == 303 and r.headers["location"] == "/ui/images", r.text
    assert node.imported == [(archive, ["app:1"])]
    assert "<div>app:1</div>" in (await member.get("/ui/images")).text
    await member.close()
    await reader.close()
