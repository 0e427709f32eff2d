"""The controller's composition root: its parts built from settings (the store, the services,
the link to nodes), the background work of the leader, and a new store's first admin token.

The API (`hutch.api`) serves a `Controller`; the CLI builds one and runs it."""

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from hutch.config import Settings
from hutch.files import write_private
from hutch.http import tls
from hutch.model.metrics import Tier
from hutch.services.billing import Billing, load_book
from hutch.services.health import Health
from hutch.services.images import Images
from hutch.services.leader import Leadership
from hutch.services.lifetimes import Lifetimes
from hutch.services.machines import Machines
from hutch.services.metering import Metering
from hutch.services.networks import Networks, Pool
from hutch.services.nodelink import NodeLink
from hutch.services.nodes import Nodes
from hutch.services.notify import POOLS, SCHEDULER, Notifier
from hutch.services.policy import Policy
from hutch.services.pools import Pools
from hutch.services.retention import Retention
from hutch.services.scheduling import Scheduler
from hutch.services.snapshots import Snapshots
from hutch.services.streams import Streams
from hutch.services.telemetry import Telemetry
from hutch.services.tenancy import Tenancy
from hutch.services.volumes import Volumes
from hutch.store import open_store
from hutch.store.base import Store

log = logging.getLogger("hutch.controller")


@dataclass
class Controller:
    store: Store
    notifier: Notifier
    link: NodeLink  # the services' calls to nodes; closed with the controller
    tenancy: Tenancy
    machines: Machines
    nodes: Nodes
    images: Images
    leadership: Leadership
    scheduler: Scheduler
    health: Health
    retention: Retention  # purges destroyed machines
    lifetimes: Lifetimes  # ends machines whose timeout ran out
    streams: Streams  # long-lived streams, ended when their token or project goes
    networks: Networks  # networks and security groups
    volumes: Volumes  # volumes and their snapshots
    snapshots: Snapshots  # machine snapshots (`run --from` clones them)
    pools: Pools  # warm pools, kept filled by the leader
    telemetry: Telemetry  # nodes' samples in, machines' metric history out (pruned by the leader)
    metering: Metering  # the usage ledger: nodes' samples counted, storage accrued by the leader
    billing: Billing  # prices, usage, invoices (closed by the leader), budgets
    ca_pem: str | None = None  # when serving HTTPS


def secret_file(path: Path) -> str:
    """The secret in `path`, made (random, mode 0600) the first time."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def join_secret_of(settings: Settings) -> str:
    """The long-lived join secret: the setting, else one made in the state directory."""
    return settings.join_secret or secret_file(settings.state_dir / "join.secret")


def build_controller(settings: Settings) -> Controller:
    settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = open_store(settings.database_url or f"sqlite:///{settings.state_dir / 'controller.db'}")
    policy = Policy.load(settings.policy_file)
    notifier = Notifier()
    controller_secret = settings.controller_secret or secret_file(
        settings.state_dir / "controller.secret"
    )
    join_secret = join_secret_of(settings)
    link = NodeLink(controller_secret.encode())
    ca_pem = tls.ensure_ca(settings.state_dir / "tls").read_text() if settings.tls else None
    pin = tls.pin_of(ca_pem.encode()) if ca_pem else ""
    # Where this controller listens and the addresses its certificate names: every node blocks
    # them to its machines (the agents add the address they reach the controller at).
    listen_host = settings.listen.rpartition(":")[0].strip("[]")
    node_service = Nodes(
        store, notifier, join_secret, controller_secret.encode(), pin,
        addresses=(listen_host, *settings.tls_names),
    )  # fmt: skip
    spool_dir = settings.state_dir / "spool"
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    image_service = Images(
        store, node_service, link, policy, settings.registry_names(), spool_dir=spool_dir,
        max_bytes=settings.max_unpacked_bytes, free_floor=settings.image_free_floor,
    )  # fmt: skip
    network_service = Networks(
        store, policy, Pool(settings.network_pool4, settings.network_prefix4)
    )
    machine_service = Machines(
        store, policy, notifier, link, image_service, networks=network_service
    )
    streams = Streams(store, per_token=settings.streams_per_token)
    metering = Metering(store, settings.storage_interval)
    snapshots = Snapshots(store, link, policy)
    return Controller(
        store=store,
        notifier=notifier,
        link=link,
        tenancy=Tenancy(store, policy, streams),
        machines=machine_service,
        nodes=node_service,
        images=image_service,
        leadership=Leadership(store, settings.leader_lease),
        scheduler=Scheduler(store, notifier),
        health=Health(node_service, machine_service, settings.node_grace),
        retention=Retention(store, settings.machine_retention),
        lifetimes=Lifetimes(machine_service),
        streams=streams,
        networks=network_service,
        volumes=Volumes(store, link, policy),
        snapshots=snapshots,
        pools=Pools(store, policy, notifier, machine_service, snapshots),
        telemetry=Telemetry(
            store,
            policy,
            [
                Tier(settings.metrics_fine, settings.metrics_fine_keep),
                Tier(settings.metrics_coarse, settings.metrics_coarse_keep),
            ],
            metering,
        ),
        metering=metering,
        billing=Billing(
            store,
            policy,
            machine_service,
            period=settings.invoice_period,
            interval=settings.billing_interval,
            budget_interval=settings.budget_interval,
        ),
        ca_pem=ca_pem,
    )


@contextlib.asynccontextmanager
async def leading_work(ctl: Controller) -> AsyncIterator[None]:
    """In the background: the leader's lease, and what the leader does (the scheduler, node
    health, the purge of destroyed machines, machines' timeouts, warm pools, the storage
    accrual), each idle while this controller does not lead; and on every controller, the check
    of its open streams' tokens.
    They are stopped between two transactions, never cancelled inside one."""
    stop = asyncio.Event()
    leading = ctl.leadership.leading
    tasks = [
        asyncio.create_task(ctl.leadership.run(stop)),
        asyncio.create_task(ctl.scheduler.run(leading, stop)),
        asyncio.create_task(ctl.health.run(leading, stop)),
        asyncio.create_task(ctl.retention.run(leading, stop)),
        asyncio.create_task(ctl.lifetimes.run(leading, stop)),
        asyncio.create_task(ctl.pools.run(leading, stop)),
        asyncio.create_task(ctl.telemetry.run(leading, stop)),
        asyncio.create_task(ctl.metering.run(leading, stop)),
        asyncio.create_task(ctl.billing.run(leading, stop)),
        asyncio.create_task(ctl.streams.run(stop)),
    ]
    try:
        yield
    finally:
        stop.set()
        ctl.notifier.notify(SCHEDULER, POOLS)
        await asyncio.gather(*tasks, return_exceptions=True)


async def bootstrap(ctl: Controller, settings: Settings) -> None:
    """On a new store: the default project and a system admin token, written to
    `state_dir/admin-token` (mode 0600) for the operator. The `prices_file` setting's book,
    when set, replaces the stored one on every start."""
    if settings.prices_file is not None:
        await ctl.billing.set_book(None, load_book(settings.prices_file))
    _, secret = await ctl.tenancy.bootstrap(settings.project)
    if secret is None:
        return
    path = settings.state_dir / "admin-token"
    write_private(path, secret + "\n")
    log.info("system admin token written to %s", path)
