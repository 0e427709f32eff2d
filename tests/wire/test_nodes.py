"""The join token's codec: what the controller issues, the agent reads and the controller checks."""

import pytest

from hutch.model.errors import Invalid
from hutch.wire.nodes import JoinToken

KEY = b"controller secret"
PIN = "ab" * 32


@pytest.mark.parametrize("pin", ["", PIN])
def test_a_token_round_trips_through_its_text(pin: str) -> None:
    token = JoinToken.issue(KEY, 1_900_000_000, pin)
    text = token.encode()
    assert text.startswith("hjt.1900000000.") and text.count(".") == (4 if pin else 3)
    assert JoinToken.parse(text) == token
    assert token.ca_pin == pin and token.signed_by(KEY)


def test_two_tokens_of_one_second_differ() -> None:
    assert JoinToken.issue(KEY, 5).encode() != JoinToken.issue(KEY, 5).encode()


def test_the_signature_covers_the_expiry_and_the_nonce_but_not_the_pin() -> None:
    token = JoinToken.issue(KEY, 1_900_000_000)
    assert not token.signed_by(b"another controller")
    assert not JoinToken(token.expires + 1, token.nonce, token.mac).signed_by(KEY)
    assert not JoinToken(token.expires, "0" * 16, token.mac).signed_by(KEY)
    assert JoinToken(token.expires, token.nonce, token.mac, PIN).signed_by(KEY)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "starts with hjt."),
        ("a-plain-join-secret", "starts with hjt."),
        ("xyz.1.2.3", "starts with hjt."),
        ("hjt", "4 or 5 parts .*not 1"),
        ("hjt.1.2", "4 or 5 parts .*not 3"),
        ("hjt.1.2.3.4.5", "4 or 5 parts .*not 6"),
        ("hjt.soon.nonce.mac", "expiry is a number of seconds, not 'soon'"),
        ("hjt.-5.nonce.mac", "expiry is a number"),
        ("hjt.١٢.nonce.mac", "expiry is a number"),  # digits, but not ASCII ones
    ],
)
def test_what_is_not_a_token_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(Invalid, match=why):
        JoinToken.parse(text)
