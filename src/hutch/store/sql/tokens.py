"""API tokens (only their secrets' hashes are stored): the repository and its rows."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict, NotFound
from hutch.model.tenancy import Role, Token
from hutch.store import tables as t
from hutch.store.sql.repo import Repo, from_row


class SqlTokens(Repo):
    async def create(self, token: Token, secret_hash: str) -> None:
        # Its columns are its fields (as _to_token reads them back), and the secret's hash.
        values = {**dataclasses.asdict(token), "role": token.role.value, "secret_hash": secret_hash}
        if await self._insert(t.tokens, values):
            return
        if token.project_id is not None and not await self._exists(
            t.projects, t.projects.c.id == token.project_id
        ):
            raise NotFound(f"project {token.project_id!r} not found")
        if await self._exists(t.tokens, t.tokens.c.secret_hash == secret_hash):
            raise Conflict("a token with that secret already exists")
        raise Conflict(f"a token with id {token.id!r} already exists")

    async def by_hash(self, secret_hash: str) -> Token | None:
        row = await self._one(_BY_HASH, {"hash": secret_hash})
        return None if row is None else _to_token(row)

    async def get(self, token_id: str) -> Token:
        stmt = sa.select(t.tokens).where(t.tokens.c.id == token_id)
        return _to_token(await self._found(stmt, "token", token_id))

    async def list(self, project_id: str | None) -> list[Token]:
        where = (
            t.tokens.c.project_id.is_(None)
            if project_id is None
            else t.tokens.c.project_id == project_id
        )
        stmt = sa.select(t.tokens).where(where).order_by(t.tokens.c.created_at, t.tokens.c.id)
        return [_to_token(r) for r in await self._c.execute(stmt)]

    async def usable(
        self, token_ids: Sequence[str], project_ids: Sequence[str], now: float
    ) -> tuple[set[str], set[str]]:
        tok, prj = t.tokens.c, t.projects.c
        tokens = sa.select(sa.literal("t").label("kind"), tok.id).where(
            tok.id.in_(token_ids),
            tok.revoked_at.is_(None),
            sa.or_(tok.expires_at.is_(None), tok.expires_at > now),
        )
        projects = sa.select(sa.literal("p").label("kind"), prj.id).where(prj.id.in_(project_ids))
        rows: Sequence[Any] = (await self._c.execute(sa.union_all(tokens, projects))).all()
        return {r[1] for r in rows if r[0] == "t"}, {r[1] for r in rows if r[0] == "p"}

    async def revoke(self, token_id: str, at: float) -> Token:
        """Revoked from `at`; revoking again keeps the first time."""
        stmt = (
            sa.update(t.tokens)
            .where(t.tokens.c.id == token_id)
            .values(revoked_at=sa.func.coalesce(t.tokens.c.revoked_at, at))
            .returning(*t.tokens.c)
        )
        return _to_token(await self._found(stmt, "token", token_id))


def _to_token(r: Row[Any]) -> Token:
    return from_row(Token, r, role=Role(r.role))


# Built once: every request asks (SQLAlchemy keeps the statement's cache key on it).
_BY_HASH = sa.select(t.tokens).where(t.tokens.c.secret_hash == sa.bindparam("hash"))
