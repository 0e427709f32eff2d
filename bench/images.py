"""Image benchmark: hutch pull + unpack + root disk, against skopeo copy + umoci unpack + the
same disk build, on one multi-layer image served by a local docker-registry.

In one run, alternating, median of N cold runs each (empty store and caches every time):
  hutch_cold          pull into the store, unpack, build the erofs root disk
  skopeo_umoci_cold   skopeo copy to an OCI layout, umoci unpack, the same erofs build
(and hutch once more with its scaffold tree on the cache's disk instead of tmpfs), then, on
hutch's last cold store:
  hutch_warm          the same image again (manifest check only, everything cached)
  shared_layers       a second image sharing all but its top layer
The last line printed is one JSON object with the figures.

    make bench            or    .venv/bin/python -m bench.images [--runs N]  (from the repo root)
"""

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hutch import config
from hutch.agent.images import staging_for
from hutch.images.busybox import build_busybox_rootfs
from hutch.images.pull import pull
from hutch.images.registry import RegistryClient, RegistryConfig
from hutch.images.rootdisk import build_root_disk
from hutch.images.rootfs import prepare_image
from hutch.images.staging import Staging
from hutch.images.store import ImageStore
from hutch.model.units import format_bytes
from tests.images.ocibuild import write_oci_layout
from tests.images.registry_server import Registry

# Real trees of this host make the layers: many small files (Python's standard library, Perl,
# locale data) and a top layer with a few MiB of incompressible data.
LOWER_LAYERS = (("usr/lib/python3.11",), ("usr/share/perl", "usr/share/i18n"))


def stage(dest: Path, trees: tuple[str, ...]) -> Path:
    for rel in trees:
        shutil.copytree(Path("/") / rel, dest / rel, symlinks=True)
    return dest


def top_layer(dest: Path, seed: int) -> Path:
    (dest / "app").mkdir(parents=True)
    (dest / "app" / "blob.bin").write_bytes(os.urandom(4 << 20))
    for i in range(200):
        (dest / "app" / f"config-{i}.txt").write_text(f"setting {i} of build {seed}\n" * 20)
    return dest


def build_images(work: Path) -> tuple[Path, int]:
    base = build_busybox_rootfs(work / "l0")
    lowers = [stage(work / f"l{i + 1}", trees) for i, trees in enumerate(LOWER_LAYERS)]
    layout = work / "layout"
    config = {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]}
    for tag, seed in (("1", 1), ("2", 2)):
        top = top_layer(work / f"top{seed}", seed)
        write_oci_layout(layout, [base, *lowers, top], config, ref=tag)
    unpacked = sum(
        f.lstat().st_size
        for d in (base, *lowers, work / "top1")
        for f in d.rglob("*")
        if f.is_file() and not f.is_symlink()  # busybox's applets are links to one binary
    )
    return layout, unpacked


async def hutch_pull(
    ref: str, registry: str, store_dir: Path, cache: Path, staging: Staging | None
) -> float:
    """Pull and prepare a micro-VM root disk; `staging` as hutch's `unpack_staging` setting."""
    start = time.monotonic()
    store = ImageStore(store_dir)
    async with RegistryClient({registry: RegistryConfig(insecure=True)}) as client:
        image = await pull(ref, store, client, project="bench")
    await asyncio.to_thread(
        prepare_image,
        store.layout(),
        store.image(image.digest),
        cache,
        disk=True,
        staging=staging,
    )
    return time.monotonic() - start


def skopeo_umoci(ref: str, work: Path) -> float:
    layout, bundle = work / "oci", work / "bundle"
    work.mkdir(parents=True)
    start = time.monotonic()
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{layout}:1",
        ],
        check=True,
    )
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:1", str(bundle)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    build_root_disk(bundle / "rootfs", work / "root.erofs")
    return time.monotonic() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="cold runs per tool (median)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hbi", dir="/var/tmp"))
    registry = Registry(work / "registry").start()
    try:
        layout, unpacked = build_images(work / "src")
        for tag in ("1", "2"):
            registry.push(layout, tag, f"bench/app:{tag}")
        ref1, ref2 = f"{registry.host}/bench/app:1", f"{registry.host}/bench/app:2"
        blobs = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
        print(f"image: 4 layers, {format_bytes(unpacked)} unpacked; layout {format_bytes(blobs)}",
              file=sys.stderr)  # fmt: skip

        hutch, on_disk, skopeo = [], [], []
        staging = staging_for(config.load())
        for i in range(args.runs):
            run = work / f"run{i}"
            on_disk.append(
                await hutch_pull(ref1, registry.host, run / "s2", run / "c2", staging=None)
            )
            hutch.append(
                await hutch_pull(ref1, registry.host, run / "store", run / "cache", staging)
            )
            skopeo.append(skopeo_umoci(ref1, run / "skopeo"))
            print(f"cold run {i + 1}: hutch {hutch[-1]:.2f}s, skopeo+umoci {skopeo[-1]:.2f}s",
                  file=sys.stderr)  # fmt: skip
            if i < args.runs - 1:
                shutil.rmtree(run)
        last = work / f"run{args.runs - 1}"
        warm = [
            await hutch_pull(ref1, registry.host, last / "store", last / "cache", staging)
            for _ in range(3)
        ]
        shared = await hutch_pull(ref2, registry.host, last / "store", last / "cache", staging)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)

    cold, other, warm_s = (
        statistics.median(hutch),
        statistics.median(skopeo),
        statistics.median(warm),
    )
    figures = {
        "hutch_cold_s": round(cold, 3),
        "skopeo_umoci_cold_s": round(other, 3),
        "ratio": round(cold / other, 3),
        "hutch_warm_s": round(warm_s, 4),
        "warm_vs_cold": round(warm_s / cold, 4),
        "shared_layers_s": round(shared, 3),
        "hutch_cold_unpack_on_disk_s": round(statistics.median(on_disk), 3),
        "unpacked_bytes": unpacked,
        "runs": args.runs,
    }
    print(f"{'':<40} {'median':>8} {'min':>8} {'max':>8}")
    for label, values in (
        ("hutch pull + unpack + erofs (cold)", hutch),
        ("  the same, scaffold on disk, not tmpfs", on_disk),
        ("skopeo + umoci + erofs (cold)", skopeo),
    ):
        low, high = min(values), max(values)
        print(f"{label:<40} {statistics.median(values):>7.2f}s {low:>7.2f}s {high:>7.2f}s")
    print(f"{'hutch, same image again (warm)':<40} {warm_s:>7.3f}s")
    print(f"{'hutch, image sharing all but the top':<40} {shared:>7.2f}s")
    print(f"ratio hutch/skopeo+umoci: {figures['ratio']}  warm/cold: {figures['warm_vs_cold']:.1%}")
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
