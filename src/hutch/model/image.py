"""What an OCI image says about how to run it, and content digests."""

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
