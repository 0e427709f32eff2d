import dataclasses

import pytest

from hutch.model.errors import Invalid, Unsupported
from hutch.model.image import ImageConfig, digest_hex, parse_ref

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


# -- references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("team/app:1.2", "docker.io/team/app:1.2"),
        ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
        ("localhost/a/b/c:v1", "localhost/a/b/c:v1"),
        ("reg.example.com:443/x__y.z-w:t_1.0", "reg.example.com:443/x__y.z-w:t_1.0"),
        ("app@sha256:" + "a" * 64, "docker.io/library/app@sha256:" + "a" * 64),
        ("app:v1@sha256:" + "b" * 64, "docker.io/library/app:v1@sha256:" + "b" * 64),
        ("[::1]:5000/img", "[::1]:5000/img:latest"),
    ],
)
def test_references_parse_and_normalise(text: str, expected: str) -> None:
    assert str(parse_ref(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" busybox", "spaces"),
        ("Busybox", "invalid"),
        ("../etc/passwd", "not a host name"),
        ("/abs/path", "invalid"),
        ("a//b", "invalid"),
        ("a/../b", "invalid"),
        ("app:bad/tag", "not a host name"),
        ("app:" + "t" * 129, "tag"),
        ("app@sha256:short", "64"),
        ("app@md5:" + "a" * 32, "sha256"),
        ("reg.example.com/" + "a" * 250, "longer than"),
        ("bad_host.com/app", "not a host name"),
    ],
)
def test_bad_references_are_refused(text: str, message: str) -> None:
    with pytest.raises((Invalid, Unsupported), match=message):
        parse_ref(text)


def test_reference_parts_and_familiar_form() -> None:
    ref = parse_ref("busybox:1.36")
    assert (ref.registry, ref.repository, ref.tag, ref.reference) == (
        "docker.io", "library/busybox", "1.36", "1.36",
    )  # fmt: skip
    assert ref.familiar() == "busybox:1.36"
    pinned = parse_ref("127.0.0.1:5000/app@sha256:" + "c" * 64)
    assert pinned.reference == pinned.digest and pinned.tag == ""
    assert pinned.familiar() == "127.0.0.1:5000/app@sha256:" + "c" * 64
