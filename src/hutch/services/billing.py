"""Prices, usage, invoices and budgets (the arithmetic is hutch.model.prices').

The leader closes every project's invoice of each period that ended: it is priced from the
usage ledger (`store.usage`) with the book as it is at closing, carries the credits granted
before, and is stored once (a unique project + period: two leaders never close it twice). A
closed invoice never changes; a correction is a credit on the next one. The current period's
invoice is a draft, priced when asked.

Budgets: every `budget_interval`, the leader looks at each budget's project's draft total; at
80 % and at 100 % it appends the event `budget.80` / `budget.100` (once each per period,
recorded in the budget's row in the same transaction), and at 100 % with `stop` it stops the
project's machines, and stops again at each look what the project started since, until the
budget is raised or removed or the period ends.
"""

import asyncio
import logging
import time
import tomllib
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from hutch.model.errors import Invalid, NotFound
from hutch.model.prices import (
    Budget,
    Credit,
    Invoice,
    PriceBook,
    Prices,
    budget_level,
    credit_line,
    money,
    period_of,
    total,
    usage_lines,
)
from hutch.model.tenancy import Principal, Project
from hutch.model.usage import By, UsageTotal
from hutch.services.ids import new_id
from hutch.services.machines import Machines
from hutch.services.notify import pause
from hutch.services.policy import Action, Policy
from hutch.store.base import NewEvent, Store, Tx

log = logging.getLogger("hutch.billing")
PERIOD = 10.0  # seconds between the leader's looks for invoices to close
BUDGET_PERIOD = 60.0  # seconds between its looks at budgets: how late a budget's event may be
MAX_SPAN = 366 * 86400.0  # the longest since..until a usage query may ask for


def load_book(path: Path) -> PriceBook:
    """The price book in a TOML file (the `prices_file` setting), its numbers read as exact
    decimals; Invalid naming the file."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise Invalid(f"prices file {path}: {e}") from None
    try:
        return PriceBook.parse(doc.get("prices", doc))
    except Invalid as e:
        raise Invalid(f"prices file {path}: {e}") from None


def check_span(since: float | None, until: float | None) -> None:
    if since is not None and until is not None and since > until:
        raise Invalid("since is after until", param="since")


class Billing:
    def __init__(
        self, store: Store, policy: Policy, machines: Machines, *, period: str = "month",
        interval: float = PERIOD, budget_interval: float = BUDGET_PERIOD,
    ) -> None:  # fmt: skip
        self.store = store
        self.policy = policy
        self.machines = machines
        self.period = period
        self.interval = interval
        self.budget_interval = budget_interval

    # -- prices ---------------------------------------------------------------------------------

    async def book(self, principal: Principal) -> PriceBook:
        Policy.require_system(principal, "read the whole price book")
        async with self.store.read() as tx:
            return await tx.billing.book()

    async def prices(self, principal: Principal, project: Project) -> Prices:
        """The project's effective prices."""
        self.policy.require(principal, Action.BILLING_READ, project.id)
        async with self.store.read() as tx:
            return (await tx.billing.book()).effective(project.name)

    async def set_book(self, principal: Principal | None, book: PriceBook) -> None:
        """None: the controller itself (its prices file, at start)."""
        if principal is not None:
            Policy.require_system(principal, "set prices")
        async with self.store.write() as tx:
            await tx.billing.set_book(book, time.time())

    # -- usage ----------------------------------------------------------------------------------

    async def usage(
        self, principal: Principal, project: Project, since: float | None, until: float | None,
        by: By,
    ) -> list[UsageTotal]:  # fmt: skip
        self.policy.require(principal, Action.BILLING_READ, project.id)
        check_span(since, until)
        async with self.store.read() as tx:
            return await tx.usage.totals(project.id, since, until, by)

    # -- invoices -------------------------------------------------------------------------------

    async def draft(self, principal: Principal, project: Project) -> Invoice:
        """The current period's invoice as it stands (open: it changes until closed)."""
        self.policy.require(principal, Action.BILLING_READ, project.id)
        now = time.time()
        start, end = period_of(now, self.period)
        async with self.store.read() as tx:
            return await _priced(tx, project, start, end)

    async def invoices(self, principal: Principal, project: Project, limit: int = 100,
                       before: float | None = None) -> list[Invoice]:  # fmt: skip
        self.policy.require(principal, Action.BILLING_READ, project.id)
        async with self.store.read() as tx:
            return await tx.billing.invoices(project.id, limit, before)

    async def invoice(self, principal: Principal, project: Project, ref: str) -> Invoice:
        """A closed invoice by id, or `draft` for the current period's."""
        if ref == "draft":
            return await self.draft(principal, project)
        self.policy.require(principal, Action.BILLING_READ, project.id)
        async with self.store.read() as tx:
            found = await tx.billing.invoice(project.id, ref)
        if found is None:
            raise NotFound(f"no invoice {ref!r} in project {project.name}")
        return found

    async def credit(
        self, principal: Principal, project: Project, amount: str, reason: str
    ) -> Credit:
        """A credit on the project's next closed invoice."""
        Policy.require_system(principal, "grant credits")
        value = money(amount, "amount")
        if not value:
            raise Invalid("amount: a credit must be more than 0", param="amount")
        if not reason.strip():
            raise Invalid("reason: say why the credit is granted", param="reason")
        credit = Credit(new_id("cr"), project.id, value, reason.strip(), time.time())
        async with self.store.write() as tx:
            await tx.projects.get(project.id)
            await tx.billing.add_credit(credit)
        return credit

    async def close_due(self, now: float) -> int:
        """The leader's: close each project's invoices of the periods that ended by `now`
        (from its last closed one, or its creation). How many were closed."""
        current = period_of(now, self.period)[0]
        async with self.store.read() as tx:  # one look: most projects have nothing due
            projects = await tx.projects.list()
            closed_until = await tx.billing.closed_until()
        closed = 0
        for project in projects:
            start = period_of(closed_until.get(project.id, project.created_at), self.period)[0]
            while start < current:
                end = period_of(start, self.period)[1]
                closed += await self._close(project, start, end, now)
                start = end
        return closed

    async def _close(self, project: Project, start: float, end: float, now: float) -> int:
        # Priced in a read transaction (seconds for a large project: no writer waits on it),
        # closed in a short write.
        async with self.store.read() as tx:
            draft = await _priced(tx, project, start, end)
        async with self.store.write() as tx:
            # The pending credits are read in the writer's transaction that marks them carried:
            # a credit is on one invoice only.
            credits = await tx.billing.pending_credits(project.id, end)
            lines = (*draft.lines, *(credit_line(c.amount, c.reason) for c in credits))
            invoice = replace(draft, id=new_id("in"), lines=lines, total=total(lines),
                              closed_at=now)  # fmt: skip
            if not await tx.billing.close(invoice):
                return 0  # another leader closed it
            await tx.billing.carry([c.id for c in credits], invoice.id)
            return 1

    # -- budgets --------------------------------------------------------------------------------

    async def budget(self, principal: Principal, project: Project) -> Budget | None:
        self.policy.require(principal, Action.BILLING_READ, project.id)
        async with self.store.read() as tx:
            return await tx.billing.budget(project.id)

    async def set_budget(
        self, principal: Principal, project: Project, amount: str, stop: bool
    ) -> Budget:
        Policy.require_system(principal, "set budgets")
        value = money(amount, "amount")
        if not value:
            raise Invalid("amount: a budget must be more than 0", param="amount")
        budget = Budget(project.id, value, stop)
        async with self.store.write() as tx:
            await tx.projects.get(project.id)
            await tx.billing.set_budget(budget)
        return budget

    async def delete_budget(self, principal: Principal, project: Project) -> None:
        Policy.require_system(principal, "remove budgets")
        async with self.store.write() as tx:
            await tx.billing.delete_budget(project.id)

    async def check_budgets(self, now: float) -> int:
        """The leader's: announce the thresholds budgets passed (see the module's docstring),
        stopping the machines of projects whose budget says so. How many were announced."""
        async with self.store.read() as tx:
            budgets = await tx.billing.budgets()
        start, end = period_of(now, self.period)
        announced = 0
        for budget in budgets:
            async with self.store.read() as tx:
                project = await tx.projects.get(budget.project_id)
                spent = (await _priced(tx, project, start, end)).total
                currency = (await tx.billing.book()).currency
            level = budget_level(spent, budget.amount)
            stopping = level == 100 and budget.stop
            message = f"{spent} {currency} spent of a budget of {budget.amount} this period"
            message += f" ({level} %)"
            if stopping:
                message += ": the project's machines are stopped"
            if not level or (budget.period_start == start and budget.level >= level):
                if stopping:  # announced: what the project started since is stopped again
                    await self.machines.stop_project(project.id, f"budget spent: {message}")
                continue
            async with self.store.write() as tx:
                if not await tx.billing.mark_budget(project.id, start, level):
                    continue  # another leader announced it meanwhile
                await tx.events.append(
                    [NewEvent(project.id, f"budget.{level}", project.id, str(level), message, now)]
                )
            announced += 1
            if stopping:
                await self.machines.stop_project(project.id, f"budget spent: {message}")
        return announced

    async def run(self, leading: Callable[[], bool], stop: asyncio.Event) -> None:
        checked = 0.0  # when budgets were last looked at
        while not stop.is_set():
            if leading():
                try:
                    now = time.time()
                    await self.close_due(now)
                    # Pricing a project's month is the invoice's work (bench/metering.py part
                    # 3: seconds for 10,000 machines): budgets are looked at less often.
                    if now - checked >= self.budget_interval:
                        checked = now
                        await self.check_budgets(now)
                except Exception:
                    log.exception("closing invoices or checking budgets failed")
            await pause(stop, self.interval)


async def _priced(tx: Tx, project: Project, start: float, end: float) -> Invoice:
    """The project's open invoice of [start, end): its usage priced by the book as it is now."""
    prices = (await tx.billing.book()).effective(project.name)
    lines = usage_lines(prices, await tx.usage.by_labels(project.id, start, end))
    return Invoice("", project.id, start, end, prices.currency, tuple(lines), total(lines))
