import json
import threading
from pathlib import Path

import pytest

from hutch.images.layout import OciLayout
from hutch.images.store import Allowance, ImageStore, Usage
from hutch.images.unpack import TooLarge
from hutch.model.errors import Forbidden, InsufficientStorage, Invalid, NotFound, QuotaExceeded
from tests.images.ocibuild import blob_path, write_oci_layout


def copy_in(store: ImageStore, layout_dir: Path, digest: str) -> None:
    """Copy an image's blobs from a layout into the store, as a pull or an import does."""
    image = OciLayout(layout_dir).image_by_digest(digest)
    manifest = json.loads(blob_path(layout_dir, digest).read_bytes())
    for d in (digest, manifest["config"]["digest"], *(layer.digest for layer in image.layers)):
        with blob_path(layout_dir, d).open("rb") as f:
            store.ingest(f, d)


@pytest.fixture
def two_images(tmp_path: Path, busybox_rootfs: Path) -> tuple[Path, str, str]:
    layout = tmp_path / "layout"
    base = write_oci_layout(layout, [busybox_rootfs], {"Cmd": ["/bin/sh"]}, ref="base")
    extra = tmp_path / "extra"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc" / "motd").write_text("second image\n")
    derived = write_oci_layout(layout, [busybox_rootfs, extra], {"Cmd": ["cat", "/etc/motd"]})
    return layout, base, derived


def test_images_share_blobs_and_names_are_per_project(
    tmp_path: Path, two_images: tuple[Path, str, str]
) -> None:
    layout, base, derived = two_images
    store = ImageStore(tmp_path / "store")
    copy_in(store, layout, base)
    copy_in(store, layout, derived)
    a = store.add_image(base, names=["registry.test/base:1"], project="alpha")
    b = store.add_image(derived, names=["registry.test/app:1"], project="beta", public=True)
    assert a.names == ("registry.test/base:1",) and a.config.cmd == ("/bin/sh",)
    assert (a.layers, b.layers) == (1, 2)
    layers = sorted(p.name for p in (store.root / "blobs" / "sha256").iterdir())
    assert len(layers) == 2 + 2 + 1 + 1  # two manifests, two configs, the shared layer once, one
    # alpha sees its own and the public one; beta does not see alpha's private one
    assert {i.digest for i in store.images("alpha")} == {base, derived}
    assert [i.digest for i in store.images("beta")] == [derived]
    with pytest.raises(NotFound):
        store.resolve("registry.test/base:1", "beta")
    assert store.resolve(a.short_id, "alpha").digest == base
    assert store.resolve(f"registry.test/app@{derived}", "alpha").digest == derived
    # the store is a valid OCI layout: OciLayout reads it back
    index = json.loads((store.root / "index.json").read_text())
    assert {m["digest"] for m in index["manifests"]} == {base, derived}


def test_untag_then_gc_frees_only_what_nothing_uses(
    tmp_path: Path, two_images: tuple[Path, str, str]
) -> None:
    layout, base, derived = two_images
    store = ImageStore(tmp_path / "store")
    for digest, name in ((base, "r.test/base:1"), (derived, "r.test/app:1")):
        copy_in(store, layout, digest)
        store.add_image(digest, names=[name], project="p")
    shared = OciLayout(layout).image_by_digest(base).layers[0].digest
    store.untag("r.test/base:1", "p")
    report = store.gc()
    assert report.images == (base,) and report.blobs == 2  # base's manifest and config
    assert store.has_blob(shared)  # still used by the derived image
    store.untag(derived[:19], "p")  # by id: every name of it
    report = store.gc()
    assert report.images == (derived,)
    assert list((store.root / "blobs" / "sha256").iterdir()) == []
    with pytest.raises(NotFound):
        store.resolve("r.test/app:1", "p")


def test_blobs_enter_only_verified(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    with pytest.raises(Invalid, match="does not match"):
        store.put_blob(b"data", "sha256:" + "0" * 64)
    part = store.partial_path("sha256:" + "1" * 64)
    part.write_bytes(b"corrupt download")
    with pytest.raises(Invalid, match="does not match"):
        store.commit_partial("sha256:" + "1" * 64, len(b"corrupt download"))
    assert not part.exists()
    assert list((store.root / "blobs" / "sha256").iterdir()) == []


def test_an_incomplete_image_is_refused(tmp_path: Path, two_images: tuple[Path, str, str]) -> None:
    layout, base, _ = two_images
    store = ImageStore(tmp_path / "store")
    store.put_blob(blob_path(layout, base).read_bytes(), base)  # the manifest only
    with pytest.raises(Invalid, match=r"missing|incomplete"):
        store.add_image(base, names=["r.test/x:1"], project="p")


def test_a_repeated_layer_counts_twice(tmp_path: Path, busybox_rootfs: Path) -> None:
    layout = tmp_path / "layout"
    digest = write_oci_layout(layout, [busybox_rootfs, busybox_rootfs], {"Cmd": ["sh"]})
    store = ImageStore(tmp_path / "store")
    copy_in(store, layout, digest)
    assert store.add_image(digest, names=["r.test/twice:1"], project="p").layers == 2


def test_gc_waits_for_writers(tmp_path: Path, two_images: tuple[Path, str, str]) -> None:
    layout, base, _ = two_images
    store = ImageStore(tmp_path / "store")
    result: list[int] = []
    with store.session():  # a pull that has written blobs but not added its image yet
        copy_in(store, layout, base)
        collector = threading.Thread(target=lambda: result.append(store.gc().blobs))
        collector.start()
        collector.join(0.3)
        assert collector.is_alive() and store.has_blob(base)  # gc is waiting, blobs untouched
        store.add_image(base, names=["r.test/base:1"], project="p")
    collector.join(5)
    assert result == [0] and store.has_blob(base)


def test_a_name_resolves_to_the_projects_own_then_the_catalogue_never_another_project(
    tmp_path: Path, two_images: tuple[Path, str, str]
) -> None:
    layout, base, derived = two_images
    store = ImageStore(tmp_path / "store")
    copy_in(store, layout, base)
    copy_in(store, layout, derived)
    store.add_image(base, names=["app:1"], project="", public=True)  # the catalogue's
    store.add_image(derived, names=["app:1"], project="p-evil")
    assert store.resolve("app:1", "p-other").digest == base  # not p-evil's
    assert store.resolve("app:1", "p-other").source == "catalogue"
    assert (store.resolve("app:1", "p-evil").digest, store.resolve("app:1", "p-evil").source) == (
        derived,
        "project",
    )
    with pytest.raises(NotFound):
        store.resolve(derived, "p-other")  # nor by digest
    with pytest.raises(Forbidden, match="catalogue"):
        store.untag("app:1", "p-other")  # only the catalogue's own remover takes it away
    assert store.forget("p-evil") == 1
    assert store.resolve("app:1", "p-evil").digest == base
    assert [i.digest for i in store.images("p-evil")] == [base]
    store.untag("app:1", "p-any", public=True)
    with pytest.raises(NotFound):
        store.resolve("app:1", "p-evil")


def test_allowances_count_each_image_once_and_unpacked_bytes_too(
    tmp_path: Path, two_images: tuple[Path, str, str]
) -> None:
    layout, base, derived = two_images
    store = ImageStore(tmp_path / "store")
    copy_in(store, layout, base)
    copy_in(store, layout, derived)
    first = store.add_image(base, names=["a:1"], project="p-a")
    assert first.unpacked > first.size > 0
    tight = Allowance(unpacked=first.unpacked + 100)
    store.add_image(base, names=["a:2"], project="p-a", allowance=tight)  # the same image: free
    with pytest.raises(QuotaExceeded, match="unpacked"):
        store.add_image(derived, names=["b:1"], project="p-a", allowance=tight)
    assert store.usage("p-a") == Usage(first.size, first.unpacked)
    roomy = Allowance(unpacked=3 * first.unpacked)
    store.add_image(derived, names=["b:1"], project="p-b", allowance=roomy)  # its own budget
    with pytest.raises(TooLarge):
        ImageStore(store.root, max_unpacked_bytes=100).add_image(
            derived, names=["c:1"], project="p-c"
        )
    with pytest.raises(InsufficientStorage, match="free"):
        ImageStore(store.root, free_floor=1 << 60).add_image(derived, names=["c:1"], project="p-c")
