import pytest

from hutch.model.machine import env_dict, env_entries


@pytest.mark.parametrize(
    ("mapping", "entries"),
    [({}, ()), ({"A": "1", "B": ""}, ("A=1", "B=")), ({"URL": "a=b&c=d"}, ("URL=a=b&c=d",))],
)
def test_the_environment_s_two_shapes_convert_both_ways(
    mapping: dict[str, str], entries: tuple[str, ...]
) -> None:
    assert env_entries(mapping) == entries
    assert env_dict(entries) == mapping


def test_a_name_s_last_entry_wins() -> None:
    assert env_dict(("A=1", "A=2")) == {"A": "2"}
