from hutch.client import AsyncClient as AsyncClient
from hutch.client import Client as Client

__version__: str
__all__ = ["AsyncClient", "Client", "__version__"]
