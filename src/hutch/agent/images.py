"""The node's images: pull, import, export and remove, against this host's store.

Removing an image also frees its unpacked root and root disks, unless a sandbox on this host
still runs on them.
"""

import os
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hutch.agent.sandbox import Roots
from hutch.config import Settings
from hutch.images.archive import export_archive, import_archive
from hutch.images.pull import PullProgress, pull
from hutch.images.registry import RegistryClient, RegistryConfig
from hutch.images.rootfs import drop_prepared
from hutch.images.staging import Staging
from hutch.images.store import Allowance, GcReport, ImageStore, StoredImage
from hutch.model.errors import Invalid, Unavailable
from hutch.model.image import digest_hex


def open_store(settings: Settings) -> ImageStore:
    return ImageStore(
        settings.state_dir / "images",
        free_floor=settings.image_free_floor,
        max_unpacked_bytes=settings.max_unpacked_bytes,
    )


def roots_for(settings: Settings) -> Roots:
    """Roots from this host's store and paths, prepared in its cache."""
    return Roots(
        settings.cache_dir,
        settings.max_unpacked_bytes,
        open_store(settings),
        settings.project,
        staging=staging_for(settings),
    )


def staging_for(settings: Settings) -> Staging | None:
    """Where micro-VM roots are unpacked on their way to a disk (what bench/images.py measures,
    too), and how much of it all of this host's preparations may hold at once."""
    if settings.unpack_staging is None:
        return None
    return Staging.memory_share(settings.unpack_staging, settings.unpack_staging_share)


def registry_configs(
    settings: Settings, credentials: tuple[str, str, str] | None = None
) -> dict[str, RegistryConfig]:
    """Per-registry settings; `credentials` (registry, user, password) override one entry."""
    configs = {
        host: RegistryConfig(
            mirrors=tuple(r.mirrors),
            insecure=r.insecure,
            ca_file=r.ca_file,
            username=r.username,
            password=r.password,
        )
        for host, r in settings.registries.items()
    }
    if credentials is not None:
        host, user, password = credentials
        base = configs.get(host, RegistryConfig())
        configs[host] = RegistryConfig(
            mirrors=base.mirrors,
            insecure=base.insecure,
            ca_file=base.ca_file,
            username=user,
            password=password,
        )
    return configs


def registry_client(
    settings: Settings, credentials: tuple[str, str, str] | None = None
) -> RegistryClient:
    """A client for this host's pulls: only to the registries the settings allow."""
    return RegistryClient(registry_configs(settings, credentials), allow=settings.registry_allow)


async def pull_image(
    settings: Settings,
    ref: str,
    *,
    project: str,
    public: bool = False,
    credentials: tuple[str, str, str] | None = None,
    progress: Callable[[PullProgress], None] | None = None,
    allowance: Allowance | None = None,
) -> StoredImage:
    store = open_store(settings)
    async with registry_client(settings, credentials) as client:
        with store.session():
            return await pull(
                ref, store, client, project=project, public=public, progress=progress,
                allowance=allowance,
            )  # fmt: skip


def import_image(
    settings: Settings,
    stream: BinaryIO,
    *,
    project: str,
    public: bool,
    names: tuple[str, ...],
    allowance: Allowance | None = None,
) -> list[StoredImage]:
    store = open_store(settings)
    with store.session():
        return import_archive(
            stream,
            store,
            project=project,
            public=public,
            names=names,
            max_bytes=settings.max_unpacked_bytes,
            allowance=allowance,
        )


def import_layout(
    settings: Settings, layout: Path, *, project: str, public: bool, names: tuple[str, ...]
) -> list[StoredImage]:
    """Import an OCI image layout directory: it is streamed as an archive through
    `import_image`, so it gets exactly the same checks."""
    if not (layout / "oci-layout").is_file():
        raise Invalid(f"{layout} is a directory but not an OCI image layout (no oci-layout file)")
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def write_tar() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|") as tar:
                for name in ("oci-layout", "index.json", "blobs"):
                    if (layout / name).exists():
                        tar.add(layout / name, arcname=name)
        except BrokenPipeError:
            pass  # the importer stopped reading: its own error says why
        except BaseException as e:  # re-raised below
            failure.append(e)

    writer = threading.Thread(target=write_tar, name="layout-tar", daemon=True)
    writer.start()
    with os.fdopen(read_fd, "rb") as stream:
        try:
            return import_image(settings, stream, project=project, public=public, names=names)
        finally:
            stream.close()
            writer.join()
            if failure:
                raise Unavailable(f"cannot read {layout}: {failure[0]}")


def export_image(settings: Settings, ref: str, out: BinaryIO, *, project: str) -> StoredImage:
    store = open_store(settings)
    image = store.resolve(ref, project)
    export_archive(store, image.digest, out, name=image.names[0] if image.names else None)
    return image


@dataclass(frozen=True, slots=True)
class Removal:
    image: StoredImage
    gc: GcReport
    cache_bytes: int  # unpacked roots and root disks freed
    kept_in_use: tuple[str, ...]  # digests whose prepared roots a sandbox still runs on


def remove_image(
    settings: Settings,
    ref: str,
    *,
    project: str,
    roots_in_use: Iterable[str],
    public: bool = False,
) -> Removal:
    """Untag, collect what nothing names any more, and free prepared roots nobody runs on."""
    store = open_store(settings)
    image = store.untag(ref, project, public=public)
    return Removal(image, *_collect(settings, store, roots_in_use))


def forget_project(settings: Settings, project: str, *, roots_in_use: Iterable[str]) -> int:
    """A deleted project's names go, and what only they held: how many names."""
    store = open_store(settings)
    forgotten = store.forget(project)
    _collect(settings, store, roots_in_use)
    return forgotten


def _collect(
    settings: Settings, store: ImageStore, roots_in_use: Iterable[str]
) -> tuple[GcReport, int, tuple[str, ...]]:
    report = store.gc()
    in_use = set(roots_in_use)
    freed, kept = 0, []
    for digest in report.images:
        name = digest_hex(digest)
        if any(Path(p).name.startswith(name) for p in in_use):
            kept.append(digest)
            continue
        freed += drop_prepared(settings.cache_dir, digest)
    return report, freed, tuple(kept)
