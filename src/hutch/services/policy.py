"""Who may do what: the least role each action needs, in code, overridable by a policy file.

The file (the `policy_file` setting) is TOML mapping action names to roles, for example
`"machine.exec" = "admin"` to keep exec for admins. Unknown actions or roles in it are refused
at start, so a typo cannot silently widen access.
"""

import tomllib
from enum import StrEnum
from pathlib import Path

from hutch.model.errors import Forbidden, Invalid
from hutch.model.tenancy import Principal, Role


class Action(StrEnum):
    PROJECT_READ = "project.read"
    QUOTA_READ = "quota.read"
    TOKEN_MANAGE = "token.manage"
    MACHINE_READ = "machine.read"
    MACHINE_WRITE = "machine.write"  # create, start, stop, kill, restart, delete
    MACHINE_EXEC = "machine.exec"
    IMAGE_READ = "image.read"
    IMAGE_WRITE = "image.write"  # pull, import, delete
    EVENT_READ = "event.read"
    NETWORK_READ = "network.read"  # networks and security groups
    NETWORK_WRITE = "network.write"
    VOLUME_READ = "volume.read"  # volumes and their snapshots
    VOLUME_WRITE = "volume.write"  # create, delete, extend, snapshot, restore, import, export
    BILLING_READ = "billing.read"  # usage, invoices, its prices and budget


DEFAULT_POLICY: dict[Action, Role] = {
    Action.PROJECT_READ: Role.READER,
    Action.QUOTA_READ: Role.READER,
    Action.TOKEN_MANAGE: Role.ADMIN,
    Action.MACHINE_READ: Role.READER,
    Action.MACHINE_WRITE: Role.MEMBER,
    Action.MACHINE_EXEC: Role.MEMBER,
    Action.IMAGE_READ: Role.READER,
    Action.IMAGE_WRITE: Role.MEMBER,
    Action.EVENT_READ: Role.READER,
    Action.NETWORK_READ: Role.READER,
    Action.NETWORK_WRITE: Role.MEMBER,
    Action.VOLUME_READ: Role.READER,
    Action.VOLUME_WRITE: Role.MEMBER,
    Action.BILLING_READ: Role.READER,
}


class Policy:
    def __init__(self, overrides: dict[Action, Role] | None = None) -> None:
        self._roles = {**DEFAULT_POLICY, **(overrides or {})}

    @staticmethod
    def load(path: Path | None) -> "Policy":
        if path is None:
            return Policy()
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))  # TOML is UTF-8
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise Invalid(f"policy file {path}: {e}") from None
        overrides: dict[Action, Role] = {}
        for key, value in doc.items():
            try:
                overrides[Action(key)] = Role(value)
            except ValueError:
                raise Invalid(
                    f"policy file {path}: {key!r} = {value!r} is not an action and a role "
                    f"(actions: {', '.join(Action)}; roles: {', '.join(Role)})"
                ) from None
        return Policy(overrides)

    def role_for(self, action: Action) -> Role:
        return self._roles[action]

    @staticmethod
    def require_system(principal: Principal, what: str) -> None:
        """Forbidden unless `principal` is a system token (projects, quotas, nodes)."""
        if not principal.system:
            raise Forbidden(f"only system tokens may {what}")

    def allows(self, principal: Principal, action: Action, project_id: str) -> bool:
        """May `principal` do `action` in `project_id`? (What the dashboard shows.)"""
        return principal.can(self._roles[action], project_id)

    def require(self, principal: Principal, action: Action, project_id: str) -> None:
        """Forbidden unless `principal` may do `action` in `project_id`. The caller has already
        made sure the project is the principal's own (else it answers NotFound)."""
        if not self.allows(principal, action, project_id):
            role = self._roles[action]
            raise Forbidden(f"{action} needs the {role} role; this token is {principal.role}")
