import dataclasses

import pytest

from hutch.model.errors import Invalid, Unsupported
from hutch.model.image import ImageConfig, digest_hex

HEX = "0123456789abcdef" * 4


def test_digest_hex() -> None:
    assert digest_hex(f"sha256:{HEX}") == HEX


@pytest.mark.parametrize(
    "digest", ["", "sha256", f"sha256-{HEX}", f"sha256:{HEX}/x", f"sha256:{HEX} ", "sha256:"]
)
def test_digest_hex_refuses_malformed_digests(digest: str) -> None:
    with pytest.raises(Invalid):
        digest_hex(digest)


@pytest.mark.parametrize("digest", ["sha256:ABCD", f"sha256:{HEX.upper()}", f"sha256:{HEX}00"])
def test_digest_hex_wants_64_lowercase_hex_digits(digest: str) -> None:
    with pytest.raises(Invalid, match="64 lowercase hex digits"):
        digest_hex(digest)


def test_digest_hex_only_verifies_sha256() -> None:
    with pytest.raises(Unsupported, match="sha512; hutch only verifies sha256"):
        digest_hex("sha512:" + HEX * 2)


def test_image_config_is_empty_by_default_and_frozen() -> None:
    config = ImageConfig()
    assert (config.entrypoint, config.cmd, config.env, config.exposed_ports) == ((), (), (), ())
    assert (config.working_dir, config.user, config.stop_signal) == ("", "", "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.user = "root"  # type: ignore[misc]
