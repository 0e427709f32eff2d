"""The node agent's FastAPI application: its API (`agent/nodeapi.py`) over a `NodeAgent`."""

from fastapi import FastAPI

from hutch.agent import nodeapi, snapshotapi, volumeapi
from hutch.agent.node import NodeAgent
from hutch.http import problems


def create_node_app(agent: NodeAgent) -> FastAPI:
    app = FastAPI(title="hutch node agent", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.agent = agent
    problems.install(app)
    app.include_router(nodeapi.router)
    app.include_router(volumeapi.router)
    app.include_router(snapshotapi.router)
    return app
