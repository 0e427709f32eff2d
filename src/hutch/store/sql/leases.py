"""Leases (the controllers' leader election): the repository."""

import sqlalchemy as sa

from hutch.store import tables as t
from hutch.store.sql.repo import Repo


class SqlLeases(Repo):
    async def acquire(self, name: str, holder: str, ttl: float, now: float) -> int | None:
        """Hold (or renew) the lease until now + ttl if it is free, expired or already the
        holder's: its term (bumped when the holder changes). None: someone else holds it."""
        lease = t.leases
        stmt = (
            sa.update(lease)
            .where(
                lease.c.name == name,
                sa.or_(lease.c.holder == holder, lease.c.expires_at < now),
            )
            .values(
                holder=holder,
                expires_at=now + ttl,
                term=sa.case((lease.c.holder == holder, lease.c.term), else_=lease.c.term + 1),
            )
            .returning(lease.c.term)
        )
        row = (await self._c.execute(stmt)).first()
        if row is not None:
            term: int = row[0]
            return term
        values = {"name": name, "holder": holder, "term": 1, "expires_at": now + ttl}
        return 1 if await self._insert(lease, values) else None

    async def release(self, name: str, holder: str) -> None:
        lease = t.leases
        await self._c.execute(
            sa.update(lease)
            .where(lease.c.name == name, lease.c.holder == holder)
            .values(expires_at=0.0)
        )
