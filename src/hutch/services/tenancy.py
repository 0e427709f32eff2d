"""Projects, quotas, tokens, and turning a bearer secret into a Principal."""

import secrets
import time
from dataclasses import replace

from hutch.model.errors import Forbidden, Invalid, NotFound, Unauthenticated
from hutch.model.machine import Strategy
from hutch.model.tenancy import (
    Principal,
    Project,
    Quota,
    Role,
    Session,
    Token,
    Usage,
    validate_name,
)
from hutch.services.ids import hash_secret, new_id, new_secret
from hutch.services.policy import Action, Policy
from hutch.services.refusals import missing
from hutch.services.streams import Streams
from hutch.store.base import Store, Tx

SESSIONS_PER_TOKEN = 32  # dashboard sign-ins a token keeps at once (browsers, people sharing it)


class Tenancy:
    def __init__(self, store: Store, policy: Policy, streams: Streams | None = None) -> None:
        self.store = store
        self.policy = policy
        self.streams = streams or Streams(store)

    # -- who is calling -------------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> Principal:
        async with self.store.read() as tx:
            return await _principal(tx, secret)

    async def project_for(self, principal: Principal, name: str | None) -> Project:
        """The project a request acts in: a project token's own (naming another is NotFound,
        as if it did not exist); a system token must name one."""
        async with self.store.read() as tx:
            return await _project_for(tx, principal, name)

    async def scope(self, secret: str | None, name: str | None) -> tuple[Principal, Project]:
        """authenticate, then project_for, in one transaction (most requests need both)."""
        async with self.store.read() as tx:
            principal = await _principal(tx, secret)
            return principal, await _project_for(tx, principal, name)

    # -- dashboard sessions ---------------------------------------------------------------------

    async def open_session(self, secret: str | None, lifetime: float) -> tuple[str, Principal]:
        """A dashboard session acting as the token `secret` (checked as `authenticate` checks
        it) for `lifetime` seconds, or until the token expires if sooner; the secret for its
        cookie (the store keeps only its hash)."""
        now = time.time()
        cookie = secrets.token_urlsafe(32)
        async with self.store.write() as tx:
            principal = await _principal(tx, secret)
            expires = now + lifetime
            if principal.expires_at is not None:
                expires = min(expires, principal.expires_at)
            await tx.sessions.prune(now)  # sign-ins are rare: they sweep the ended ones
            session = Session(hash_secret(cookie), principal.token_id, secrets.token_urlsafe(32),
                              now, expires)  # fmt: skip
            await tx.sessions.create(session)
            # Each sign-in is a row: a token's holder (a reader too) signing in without end
            # must not grow the table without end. The oldest sign-in ends first.
            await tx.sessions.keep_newest(principal.token_id, SESSIONS_PER_TOKEN)
        return cookie, principal

    async def session(self, cookie: str | None) -> tuple[Session, Principal]:
        """The session whose cookie holds `cookie`, and who it acts as; Unauthenticated once it
        has ended, or its token was revoked or has expired."""
        async with self.store.read() as tx:
            session = await tx.sessions.get(hash_secret(cookie)) if cookie else None
            if session is None or session.expires_at <= time.time():
                raise Unauthenticated("your session has ended: sign in again")
            # Its token, like every project token, goes when its project is deleted (and its
            # sessions with it): a session's token is always there.
            return session, _acting_as(await tx.tokens.get(session.token_id))

    async def choose_project(self, session: Session, project_id: str) -> Session:
        """The session, acting in `project_id` from now on (a system token's choice; the
        caller found the project with `project_for`)."""
        async with self.store.write() as tx:
            await tx.sessions.choose(session.id, project_id)
        return replace(session, project_id=project_id)

    async def close_session(self, cookie: str | None) -> None:
        """Signed out: the session is gone (nothing if there was none)."""
        if cookie:
            async with self.store.write() as tx:
                await tx.sessions.delete(hash_secret(cookie))

    # -- projects -------------------------------------------------------------------------------

    async def create_project(
        self,
        principal: Principal,
        name: str,
        quota: Quota,
        strategy: Strategy = Strategy.SPREAD,
    ) -> Project:
        Policy.require_system(principal, "create projects")
        project = Project(new_id("p"), validate_name(name, "project"), time.time(), quota, strategy)
        async with self.store.write() as tx:
            await tx.projects.create(project)
        return project

    async def projects(self, principal: Principal) -> list[Project]:
        async with self.store.read() as tx:
            if principal.system:
                return await tx.projects.list()
            assert principal.project_id is not None
            return [await tx.projects.get(principal.project_id)]

    async def delete_project(self, principal: Principal, name: str) -> Project:
        Policy.require_system(principal, "delete projects")
        async with self.store.write() as tx:
            project = await _by_name(tx, name)
            await tx.projects.delete(project.id)
        self.streams.end_project(project.id, f"project {name} was deleted")
        return project

    # Each call below names its project and finds it in the transaction that acts on it: one
    # transaction a request (beside the caller's authentication), and no project that goes away
    # between the finding and the acting.

    async def quota(self, principal: Principal, name: str) -> tuple[Project, Usage]:
        """The project (with its quota) and what its machines hold."""
        async with self.store.read() as tx:
            project = await _project_for(tx, principal, name)
            self.policy.require(principal, Action.QUOTA_READ, project.id)
            return project, await tx.machines.usage(project.id)

    async def set_quota(
        self, principal: Principal, name: str, quota: Quota
    ) -> tuple[Project, Usage]:
        """The project with its new quota, and what its machines hold."""
        async with self.store.write() as tx:
            project = await _project_for(tx, principal, name)
            Policy.require_system(principal, "change quotas")
            project = await tx.projects.set_quota(project.id, quota)
            return project, await tx.machines.usage(project.id)

    async def set_strategy(self, principal: Principal, name: str, strategy: Strategy) -> Project:
        """How the project's machines are placed, unless one asks otherwise."""
        async with self.store.write() as tx:
            project = await _project_for(tx, principal, name)
            Policy.require_system(principal, "change placement strategies")
            return await tx.projects.set_strategy(project.id, strategy)

    # -- tokens ---------------------------------------------------------------------------------

    async def create_token(
        self,
        principal: Principal,
        project_name: str | None,
        role: Role,
        name: str = "",
        expires_in: float | None = None,
    ) -> tuple[Project | None, Token, str]:
        """A new token of the project (None: a system token), and its secret (returned once;
        only its hash is stored)."""
        now = time.time()
        secret = new_secret()
        async with self.store.write() as tx:
            project = None
            if project_name is None:
                Policy.require_system(principal, "create system tokens")
            else:
                project = await _project_for(tx, principal, project_name)
                self.policy.require(principal, Action.TOKEN_MANAGE, project.id)
                if not principal.system and not principal.role.includes(role):
                    raise Forbidden(f"a {principal.role} token cannot create a {role} token")
            token = Token(
                id=new_id("t"),
                name=name,
                project_id=project.id if project else None,
                role=role,
                system=project is None,
                created_at=now,
                expires_at=now + expires_in if expires_in else None,
            )
            await tx.tokens.create(token, hash_secret(secret))
        return project, token, secret

    async def tokens(self, principal: Principal, name: str) -> tuple[Project, list[Token]]:
        async with self.store.read() as tx:
            project = await _project_for(tx, principal, name)
            self.policy.require(principal, Action.TOKEN_MANAGE, project.id)
            return project, await tx.tokens.list(project.id)

    async def revoke_token(self, principal: Principal, name: str, token_id: str) -> Token:
        async with self.store.write() as tx:
            project = await _project_for(tx, principal, name)
            self.policy.require(principal, Action.TOKEN_MANAGE, project.id)
            token = await tx.tokens.get(token_id)
            if token.project_id != project.id:
                raise NotFound(f"no token {token_id!r} in project {project.name}")
            if token.revoked_at is None:
                token = await tx.tokens.revoke(token_id, time.time())
            await tx.sessions.end_token(token_id)
        self.streams.end_token(token_id, "this token was revoked")
        return token

    # -- bootstrap ------------------------------------------------------------------------------

    async def bootstrap(self, project_name: str) -> tuple[Project, str | None]:
        """Make sure `project_name` exists; on an empty store, also mint the first system
        token and return its secret (None when tokens already exist)."""
        async with self.store.write() as tx:
            try:
                project = await tx.projects.by_name(project_name)
            except NotFound:
                project = Project(new_id("p"), validate_name(project_name, "project"),
                                  time.time(), Quota())  # fmt: skip
                await tx.projects.create(project)
            if await tx.tokens.list(None):
                return project, None
            token = Token(new_id("t"), "admin", None, Role.ADMIN, True, time.time())
            secret = new_secret()
            await tx.tokens.create(token, hash_secret(secret))
            return project, secret


async def _by_name(tx: Tx, name: str) -> Project:
    with missing(f"no project {name!r}"):
        return await tx.projects.by_name(name)


async def _principal(tx: Tx, secret: str | None) -> Principal:
    if not secret:
        raise Unauthenticated("no token: send 'Authorization: Bearer <token>'")
    return _acting_as(await tx.tokens.by_hash(hash_secret(secret)))


def _acting_as(token: Token | None) -> Principal:
    """Who `token` makes the caller, if it is still good."""
    if token is None:
        raise Unauthenticated("unknown token")
    if token.revoked_at is not None:
        raise Unauthenticated("this token was revoked")
    if not token.usable(time.time()):
        raise Unauthenticated("this token has expired")
    return Principal(token.id, token.project_id, token.role, token.system, token.expires_at)


async def _project_for(tx: Tx, principal: Principal, name: str | None) -> Project:
    if name is None:
        if principal.project_id is None:
            raise Invalid("a system token must name a project: add ?project=NAME", param="project")
        return await tx.projects.get(principal.project_id)
    project = await _by_name(tx, name)
    if not principal.system and project.id != principal.project_id:
        raise NotFound(f"no project {name!r}")
    return project
