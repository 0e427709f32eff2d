"""Identifiers and secrets."""

import hashlib
import secrets

TOKEN_PREFIX = "hutch_"


def new_id(kind: str) -> str:
    """A short random id with a kind prefix: m-3f9a0c1b2d4e (machines), p-..., t-..., n-..."""
    return f"{kind}-{secrets.token_hex(6)}"


def new_secret() -> str:
    """A bearer secret: 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """What the store keeps. Secrets are random 256-bit values, so a plain (fast, indexable)
    SHA-256 is as strong as a slow password hash would be."""
    return hashlib.sha256(secret.encode()).hexdigest()
