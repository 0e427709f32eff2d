"""What an OCI image says about how to run it, and content digests."""

import functools
import re
from dataclasses import dataclass

from hutch.model.errors import Invalid, Unsupported

_DIGEST = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def digest_hex(digest: str) -> str:
    """The hex part of a "sha256:<64 hex>" digest; other algorithms are Unsupported."""
    m = _DIGEST.match(digest)
    if not m:
        raise Invalid(f"{digest!r} is not a content digest: expected 'sha256:<64 hex digits>'")
    algorithm, encoded = m.groups()
    if algorithm != "sha256":
        raise Unsupported(f"digest {digest!r} uses {algorithm}; hutch only verifies sha256")
    if not _SHA256_HEX.match(encoded):
        raise Invalid(f"digest {digest!r} is not 64 lowercase hex digits")
    return encoded


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an OCI image config that runtimes honour.

    Values are as written in the image; runtimes resolve `user` inside the image's root and
    combine `entrypoint` + `cmd` with what the user asked for.
    """

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "KEY=VALUE"
    working_dir: str = ""
    user: str = ""  # as written in the image: "name", "uid", "name:group", "uid:gid"
    stop_signal: str = ""  # e.g. "SIGQUIT"
    exposed_ports: tuple[str, ...] = ()  # e.g. "80/tcp"


# -- references ---------------------------------------------------------------------------------
# The grammar of github.com/distribution/reference, with Docker's normalisation of short names.

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"^(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed, normalised image reference: registry/repository[:tag][@digest]."""

    registry: str  # "docker.io", "127.0.0.1:5000", "registry.example.com"
    repository: str  # "library/busybox", "team/app"
    tag: str = ""  # "" when pinned by digest only
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """The short form people type: busybox:latest rather than docker.io/library/busybox."""
        name = self.name.removeprefix(f"{DEFAULT_REGISTRY}/").removeprefix("library/")
        return str(ImageRef("", name, self.tag, self.digest)).lstrip("/")


def names_registry(text: str) -> bool:
    """Whether the reference names its registry ("registry.test/app", "localhost:5000/app",
    "docker.io/library/busybox"), as opposed to a short name ("busybox", "team/app") that
    Docker would complete with docker.io."""
    first, sep, _ = text.partition("@")[0].partition("/")
    return bool(sep) and (
        "." in first or ":" in first or first == "localhost" or first != first.lower()
    )


@functools.lru_cache(maxsize=4096)  # every machine read checks its image's again
def parse_ref(text: str) -> ImageRef:
    """Parse `text` ("busybox", "host:5000/team/app:1.2", "app@sha256:...") or raise Invalid."""
    if not text or text != text.strip():
        raise Invalid(f"image reference {text!r} is empty or has surrounding spaces")
    rest, _, digest = text.partition("@")
    if digest:
        digest_hex(digest)
    name, tag = rest, ""
    colon, slash = rest.rfind(":"), rest.rfind("/")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise Invalid(f"tag {tag!r} in {text!r} is invalid: use letters, digits, '_', '.', '-'")
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, remainder
        if not _DOMAIN.match(registry):
            raise Invalid(f"registry {registry!r} in {text!r} is not a host name")
    else:
        registry, repository = DEFAULT_REGISTRY, name
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not _PATH.match(repository):
        raise Invalid(
            f"repository {repository!r} in {text!r} is invalid: lowercase letters and digits, "
            "separated by '.', '_', '__', '-' or '/'"
        )
    if len(registry) + 1 + len(repository) > MAX_NAME_LENGTH:
        raise Invalid(f"image name in {text!r} is longer than {MAX_NAME_LENGTH} characters")
    return ImageRef(registry, repository, tag or ("" if digest else DEFAULT_TAG), digest)
