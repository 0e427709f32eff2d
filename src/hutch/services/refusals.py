"""Refusals from the store, said in the service's words: which object, in which project.

The store says what it could not find or change by id; the service knows the name the caller
gave and the project it looked in, and says that instead."""

import contextlib
from collections.abc import Iterator

from hutch.model.errors import Conflict, NotFound


@contextlib.contextmanager
def missing(message: str) -> Iterator[None]:
    """A NotFound inside becomes one saying `message` ("no network 'web' in project a")."""
    try:
        yield
    except NotFound:
        raise NotFound(message) from None


@contextlib.contextmanager
def about(what: str) -> Iterator[None]:
    """A Conflict inside is said about `what` ("network web: 2 machines are on it")."""
    try:
        yield
    except Conflict as e:
        raise Conflict(f"{what}: {e.message}") from None
