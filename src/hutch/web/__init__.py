"""The dashboard at /ui: server-rendered pages over the same services, with the same policy,
as the API (a sibling of `hutch.api`, never importing it).

`install(app, ctl, settings)` mounts it on the controller's app (hutch/cli/servers.py, and the
tests). Each page group is one module of `hutch.web.pages` with a `router`; PAGES lists them.
"""

import logging

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from hutch.config import Settings
from hutch.controller import Controller
from hutch.web import assets, render
from hutch.web.pages import (
    auth,
    billing,
    images,
    live,
    machines,
    networks,
    nodes,
    projects,
    snapshots,
    volumes,
)

log = logging.getLogger("hutch.web")

PAGES = (
    auth,
    machines,
    live,
    images,
    networks,
    volumes,
    snapshots,
    projects,
    nodes,
    billing,
)
STATIC = render.HERE / "static"


def install(app: FastAPI, ctl: Controller, settings: Settings) -> None:
    """Serve the dashboard from `app`: /ui's pages, /ui/static (ours), /ui/static/vendor (what
    `hutch setup` fetched from npm; without it the pages still read, without live parts)."""
    app.state.web_settings = settings
    render.install(app)
    vendor = settings.cache_dir / assets.VENDOR_DIR
    if vendor.is_dir():
        app.mount("/ui/static/vendor", StaticFiles(directory=vendor), name="ui-vendor")
    else:
        log.warning("no dashboard assets in %s (run hutch setup): pages work without "
                    "live updates, the shell and charts", vendor)  # fmt: skip
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")
    for module in PAGES:
        app.include_router(module.router)
