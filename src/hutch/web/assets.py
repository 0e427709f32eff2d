"""The dashboard's front-end assets (htmx and its SSE extension, xterm.js, uPlot): fetched from
the npm registry by `hutch setup`, never committed, pinned by version and by the registry's own
sha512 integrity (`dist.integrity`), so a registry or mirror that serves other bytes fails setup
instead of reaching a browser.

npm fetches the tarballs (`npm pack`: no scripts run, nothing installed), so the host's npm
configuration (registry mirror, proxy, CA) applies. Each tarball is checked against the pinned
integrity before a byte of it is unpacked; its `package/` contents then go into
`<cache_dir>/VENDOR_DIR/<dir>/`, which the dashboard serves at /ui/static/vendor
(`hutch.web.install`). Only regular files and directories are unpacked, each inside that
directory: a link, a device or a path that leaves it refuses the whole package.
"""

import base64
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hutch.model.errors import Unavailable

VENDOR_DIR = "ui/vendor"  # under the cache dir
MARKER = ".integrity"  # in a package's directory: the integrity it was unpacked from
NPM_TIMEOUT = 300.0  # seconds for npm to fetch them all (it retries a failing registry)


@dataclass(frozen=True, slots=True)
class Package:
    """One npm package at one version, as the templates use it."""

    dir: str  # its directory under VENDOR_DIR, and so its URL under /ui/static/vendor
    name: str  # the npm name, scoped or not
    version: str
    integrity: str  # "sha512-<base64>": the registry's dist.integrity for this version
    files: tuple[str, ...]  # what the templates load: each must be in the tarball

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


# Integrities read from the registry's metadata (`npm view NAME@VERSION dist.integrity`) when
# pinned: a new version is a new line here, with its own.
PACKAGES = (
    Package(
        "htmx", "htmx.org", "2.0.11",
        "sha512-Thx/WtpeOQqSrqBCw/A1cwGJGg4UrVa3+sW0GmrM3p4gJgO89ecH4qtbnyzDDWFvBTqjnIMCgELTNt636dtamA==",
        ("dist/htmx.min.js",),
    ),
    Package(
        "htmx-ext-sse", "htmx-ext-sse", "2.2.4",
        "sha512-LJmxVhykyflBWgh5PvbRidcyuqMHlgfajmmzumvKctv9puvsufeH6OaejSMZTNTnEI8O2wXXn4ZZtBdpEMqmEQ==",
        ("dist/sse.min.js",),
    ),
    Package(
        "xterm", "@xterm/xterm", "6.0.0",
        "sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg==",
        ("lib/xterm.js", "css/xterm.css"),
    ),
    Package(
        "xterm-addon-fit", "@xterm/addon-fit", "0.11.0",
        "sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g==",
        ("lib/addon-fit.js",),
    ),
    Package(
        "uplot", "uplot", "1.6.32",
        "sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        ("dist/uPlot.iife.min.js", "dist/uPlot.min.css"),
    ),
)  # fmt: skip


def integrity_of(data: bytes) -> str:
    """`data`'s Subresource Integrity string, as npm writes it (sha512, base64)."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch(
    cache_dir: Path,
    *,
    packages: Iterable[Package] = PACKAGES,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """Every package in `packages` unpacked and checked under `cache_dir`/VENDOR_DIR, which is
    returned. A package already there from its pinned integrity, with its files, is not fetched
    again. Raises Unavailable when npm cannot fetch them, or a tarball is not the pinned one or
    is not safe to unpack; what was there before is then left as it was."""
    vendor = cache_dir / VENDOR_DIR
    vendor.mkdir(parents=True, exist_ok=True)
    wanted = [p for p in packages if not _present(vendor / p.dir, p)]
    if not wanted:
        return vendor
    log(f"fetching {', '.join(p.spec for p in wanted)} with npm")
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=vendor) as tmp:
        tarballs = _npm_pack(wanted, Path(tmp))
        for package in wanted:
            _install(vendor, package, _checked(package, tarballs[package.spec]))
    return vendor


def _present(where: Path, package: Package) -> bool:
    marker = where / MARKER
    return (
        marker.is_file()
        and marker.read_text().strip() == package.integrity
        and all((where / f).is_file() for f in package.files)
    )


def _npm_pack(packages: list[Package], into: Path) -> dict[str, Path]:
    """The packages' tarballs, as the registry serves them, by spec (one npm run for all)."""
    specs = [p.spec for p in packages]
    command = ["npm", "pack", *specs, "--json", "--ignore-scripts", "--pack-destination", str(into)]
    try:
        done = subprocess.run(
            command, cwd=into, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise Unavailable(
            "npm is not installed (apt-get install npm): hutch setup fetches the dashboard's "
            "front-end packages with it"
        ) from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"npm took over {NPM_TIMEOUT:.0f} s to fetch {' '.join(specs)}") from None
    errors = [line for line in done.stderr.splitlines() if line.startswith("npm error")]
    if done.returncode != 0:
        raise Unavailable(
            f"npm could not fetch the dashboard's {' '.join(specs)} from its registry "
            f"(`npm config get registry`): {' / '.join(errors[:3]) or done.stderr.strip()}"
        )
    packed = {entry["id"]: into / entry["filename"] for entry in json.loads(done.stdout)}
    missing = [s for s in specs if s not in packed]
    if missing:
        raise Unavailable(f"npm pack gave no tarball for {' '.join(missing)}")
    return packed


def _checked(package: Package, tarball: Path) -> bytes:
    """The tarball's bytes, if they are the pinned ones."""
    data = tarball.read_bytes()
    got = integrity_of(data)
    if got != package.integrity:
        raise Unavailable(
            f"the npm registry's {package.spec} is not the pinned one: its sha512 integrity is "
            f"{got}, hutch pins {package.integrity}; nothing was unpacked"
        )
    return data


def _install(vendor: Path, package: Package, tarball: bytes) -> None:
    """Unpack into a directory beside the package's, then put it in the package's place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{package.dir}-", dir=vendor))
    try:
        _unpack(tarball, staging, package)
        missing = [f for f in package.files if not (staging / f).is_file()]
        if missing:
            raise Unavailable(f"{package.spec} has no {', '.join(missing)}")
        (staging / MARKER).write_text(package.integrity + "\n")
        staging.chmod(0o755)  # mkdtemp's is 0700: the directory is served
        target = vendor / package.dir
        old = vendor / f".{package.dir}.old"
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(tarball: bytes, into: Path, package: Package) -> None:
    """The tarball's files, less its top directory (`package/`, as npm unpacks it), into
    `into`; nothing but regular files and directories, none outside it, none twice."""
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member in tar:
            path = _inside(member.name, package)
            if not (member.isdir() or (member.isfile() and path)):
                raise Unavailable(
                    f"{package.spec}'s tarball holds {member.name!r}, not a plain file: "
                    "refused (links and devices are never unpacked)"
                )
            try:
                _write(tar, member, into / path)
            except FileExistsError:
                raise Unavailable(f"{package.spec}'s tarball holds {member.name!r} twice") from None


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    if member.isdir():
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    source = tar.extractfile(member)
    assert source is not None  # a regular file's
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with source, target.open("xb") as out:
        shutil.copyfileobj(source, out)
    target.chmod(0o644)


def _inside(name: str, package: Package) -> str:
    """A member's path below the tarball's top directory; refused if it could land outside
    the package's directory (absolute, with a `..`, with a backslash)."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts:
        raise Unavailable(f"{package.spec}'s tarball holds {name!r}, outside its directory")
    return "/".join(p for p in parts[1:] if p not in ("", "."))
