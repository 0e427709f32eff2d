"""The controller's FastAPI application, over a `Controller` (`hutch.controller`)."""

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from hutch import __version__
from hutch.api.routes import (
    billing,
    images,
    machines,
    metrics,
    networks,
    nodes,
    pools,
    projects,
    snapshots,
    volumes,
)
from hutch.config import Settings
from hutch.controller import Controller, bootstrap, build_controller, leading_work
from hutch.http import problems
from hutch.http.limits import BodyDeadline, BodyLimit, NoNul


def create_app(ctl: Controller, settings: Settings | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ctl.store.open()
        if settings is not None:
            await bootstrap(ctl, settings)
        async with leading_work(ctl):
            yield
        await ctl.link.close()
        await ctl.store.close()

    app = FastAPI(
        title="hutch",
        version=__version__,
        description="Run OCI images, each workload in its own micro-VM. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.controller = ctl
    problems.install(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(NoNul)
    timeout = (settings.body_timeout if settings is not None
               else Settings.model_fields["body_timeout"].default)  # fmt: skip
    app.add_middleware(BodyDeadline, timeout=timeout)
    for router in (
        projects.router,
        machines.router,
        metrics.router,
        networks.router,
        volumes.router,
        snapshots.router,
        pools.router,
        billing.router,
        images.router,
        nodes.public,
        nodes.agents,
    ):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The API description, as committed in docs/openapi.json."""
    doc: dict[str, Any] = create_app(build_controller(settings)).openapi()
    return doc


if __name__ == "__main__":  # python -m hutch.api.app > docs/openapi.json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(openapi_document(Settings(state_dir=Path(tmp))), indent=1, sort_keys=True))
