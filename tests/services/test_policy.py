"""The role table: what each role may do, system tokens, and policy files that override it."""

import re
from pathlib import Path

import pytest

from hutch.model.errors import Forbidden, Invalid
from hutch.model.tenancy import Principal, Role
from hutch.services.policy import DEFAULT_POLICY, Action, Policy

READER = {
    Action.PROJECT_READ,
    Action.QUOTA_READ,
    Action.MACHINE_READ,
    Action.IMAGE_READ,
    Action.EVENT_READ,
    Action.NETWORK_READ,
    Action.VOLUME_READ,
    Action.BILLING_READ,
}
MEMBER = READER | {
    Action.MACHINE_WRITE,
    Action.MACHINE_EXEC,
    Action.IMAGE_WRITE,
    Action.NETWORK_WRITE,
    Action.VOLUME_WRITE,
}
ADMIN = set(Action)
MAY = {Role.READER: READER, Role.MEMBER: MEMBER, Role.ADMIN: ADMIN}


def allowed(policy: Policy, principal: Principal, action: Action, project_id: str) -> bool:
    try:
        policy.require(principal, action, project_id)
    except Forbidden:
        return False
    return True


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "policy.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_every_action_has_a_default_role() -> None:
    assert set(DEFAULT_POLICY) == set(Action)
    policy = Policy()
    assert {a: policy.role_for(a) for a in Action} == DEFAULT_POLICY


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("action", list(Action))
def test_default_table(role: Role, action: Action) -> None:
    principal = Principal("t1", "p1", role)
    assert allowed(Policy(), principal, action, "p1") == (action in MAY[role])


def test_only_admins_manage_tokens() -> None:
    policy = Policy()
    member = Principal("t1", "p1", Role.MEMBER)
    with pytest.raises(Forbidden) as e:
        policy.require(member, Action.TOKEN_MANAGE, "p1")
    assert e.value.message == "token.manage needs the admin role; this token is member"
    policy.require(Principal("t2", "p1", Role.ADMIN), Action.TOKEN_MANAGE, "p1")


@pytest.mark.parametrize("role", list(Role))
def test_no_role_reaches_another_project(role: Role) -> None:
    principal = Principal("t1", "p1", role)
    assert not any(allowed(Policy(), principal, a, "p2") for a in Action)


def test_system_tokens_may_do_anything_anywhere() -> None:
    system = Principal("t0", None, Role.READER, system=True)
    strict = Policy(dict.fromkeys(Action, Role.ADMIN))
    for policy in (Policy(), strict):
        assert all(allowed(policy, system, a, p) for a in Action for p in ("p1", "p2"))


def test_load_without_a_file_is_the_default() -> None:
    policy = Policy.load(None)
    assert {a: policy.role_for(a) for a in Action} == DEFAULT_POLICY


def test_a_policy_file_can_tighten_an_action(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, '"machine.exec" = "admin"\n'))
    member = Principal("t1", "p1", Role.MEMBER)
    assert not allowed(policy, member, Action.MACHINE_EXEC, "p1")
    assert allowed(policy, Principal("t2", "p1", Role.ADMIN), Action.MACHINE_EXEC, "p1")
    # Only the named action changes.
    assert allowed(policy, member, Action.MACHINE_WRITE, "p1")
    assert {a: r for a, r in DEFAULT_POLICY.items() if policy.role_for(a) != r} == {
        Action.MACHINE_EXEC: Role.MEMBER
    }


def test_a_policy_file_can_loosen_an_action(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, '"token.manage" = "member"\n"image.write" = "reader"\n'))
    assert allowed(policy, Principal("t1", "p1", Role.MEMBER), Action.TOKEN_MANAGE, "p1")
    assert allowed(policy, Principal("t2", "p1", Role.READER), Action.IMAGE_WRITE, "p1")
    assert not allowed(policy, Principal("t2", "p1", Role.READER), Action.MACHINE_WRITE, "p1")


def test_an_empty_policy_file_is_the_default(tmp_path: Path) -> None:
    policy = Policy.load(write(tmp_path, "# nothing overridden\n"))
    assert {a: policy.role_for(a) for a in Action} == DEFAULT_POLICY


def test_overrides_do_not_leak_into_the_default() -> None:
    Policy({Action.MACHINE_READ: Role.ADMIN})
    assert DEFAULT_POLICY[Action.MACHINE_READ] is Role.READER
    assert Policy().role_for(Action.MACHINE_READ) is Role.READER


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('"machine.teleport" = "member"\n', "'machine.teleport'"),
        ('"machine.exec" = "owner"\n', "'owner'"),
        ('"machine.exec" = "Admin"\n', "'Admin'"),
        ('"machine.exec" = 3\n', "'machine.exec' = 3"),
        # Unquoted, the dotted name is a table: "machine" is no action.
        ('machine.exec = "admin"\n', "'machine'"),
    ],
)
def test_a_bad_entry_is_refused_naming_it(tmp_path: Path, text: str, names: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(Invalid) as e:
        Policy.load(path)
    message = e.value.message
    assert message.startswith(f"policy file {path}: ")
    assert names in message
    assert "roles: reader, member, admin" in message
    assert "machine.exec" in message.split("actions: ")[1]  # lists what is valid


def test_one_bad_entry_refuses_the_whole_file(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="'nope'"):
        Policy.load(write(tmp_path, '"machine.exec" = "admin"\n"nope" = "admin"\n'))


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '"machine.exec" = admin\n')
    with pytest.raises(Invalid, match=rf"^policy file {re.escape(str(path))}: .*line 1"):
        Policy.load(path)


def test_a_missing_policy_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(Invalid, match=rf"^policy file {re.escape(str(path))}: .*No such file"):
        Policy.load(path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="policy file"):
        Policy.load(write(tmp_path, b'"machine.exec" = "admin" # \xff\n'))
