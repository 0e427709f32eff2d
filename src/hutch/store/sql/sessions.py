"""Dashboard sessions: the repository and its rows."""

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from hutch.model.errors import Conflict, NotFound
from hutch.model.tenancy import Session
from hutch.store import tables as t
from hutch.store.sql.repo import Repo, from_row

_S = t.web_sessions.c


class SqlSessions(Repo):
    async def create(self, session: Session) -> None:
        if await self._insert(t.web_sessions, dataclasses.asdict(session)):
            return
        if not await self._exists(t.tokens, t.tokens.c.id == session.token_id):
            raise NotFound(f"token {session.token_id!r} not found")
        raise Conflict("a session with that id already exists")

    async def get(self, session_id: str) -> Session | None:
        row = await self._one(sa.select(t.web_sessions).where(_S.id == session_id))
        return None if row is None else _to_session(row)

    async def choose(self, session_id: str, project_id: str) -> None:
        await self._c.execute(
            sa.update(t.web_sessions).where(_S.id == session_id).values(project_id=project_id)
        )

    async def delete(self, session_id: str) -> None:
        await self._c.execute(sa.delete(t.web_sessions).where(_S.id == session_id))

    async def end_token(self, token_id: str) -> int:
        result = await self._c.execute(sa.delete(t.web_sessions).where(_S.token_id == token_id))
        return int(result.rowcount or 0)

    async def prune(self, now: float) -> int:
        result = await self._c.execute(sa.delete(t.web_sessions).where(_S.expires_at <= now))
        return int(result.rowcount or 0)

    async def keep_newest(self, token_id: str, keep: int) -> int:
        newest = (
            sa.select(_S.id).where(_S.token_id == token_id)
            .order_by(_S.created_at.desc(), _S.id).limit(keep)
        )  # fmt: skip
        result = await self._c.execute(
            sa.delete(t.web_sessions).where(_S.token_id == token_id, _S.id.not_in(newest))
        )
        return int(result.rowcount or 0)


def _to_session(r: Row[Any]) -> Session:
    return from_row(Session, r)
