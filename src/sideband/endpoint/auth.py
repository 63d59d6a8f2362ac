"""Who may talk to an endpoint: the loopback rule and per-endpoint bearer tokens.

Tokens are generated per endpoint (never derived from Ray's cluster token, which sideband
neither reads nor exposes) and published in the cluster's registry so that members can call.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sideband.errors import EndpointStartError

logger = logging.getLogger("sideband.endpoint")

AUTH_MODES = ("auto", "token", None)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to anything: treat it as reachable.
        return False


@dataclass(frozen=True)
class AuthPolicy:
    """The resolved auth of one endpoint: ``token`` is None when requests need no token."""

    token: str | None

    @property
    def required(self) -> bool:
        return self.token is not None

    def header_ok(self, header: str | None) -> bool:
        """Check an ``Authorization`` header value in constant time."""
        if self.token is None:
            return True
        if not header:
            return False
        return hmac.compare_digest(header.encode(), f"Bearer {self.token}".encode())


def check_mode(auth: Any, token: str | None) -> None:
    """Validate ``auth``/``token`` arguments at decoration time, where the mistake was made."""
    if auth not in AUTH_MODES:
        raise ValueError(f"auth must be 'auto', 'token' or None, not {auth!r}")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        raise ValueError("token must be a string of at least 16 characters")
    if token is not None and auth is None:
        raise ValueError("token= was given together with auth=None; drop one of them")


def resolve(auth: str | None, token: str | None, host: str, what: str) -> AuthPolicy:
    """Decide the token of an endpoint about to bind ``host``.

    ``auth="auto"``: no token on loopback, a generated one elsewhere. ``auth="token"``: always a
    token (``token`` or a generated one). ``auth=None``: no token, with a warning off loopback.
    """
    if token is not None:
        return AuthPolicy(token)
    if auth == "token" or (auth == "auto" and not is_loopback(host)):
        return AuthPolicy(secrets.token_urlsafe(32))
    if auth is None and not is_loopback(host):
        logger.warning(
            "%s binds %s with auth=None: anyone who can reach this address can call the actor. "
            "Drop auth=None to require a bearer token.",
            what,
            host,
        )
    return AuthPolicy(None)


def make_ssl_context(factory: Callable[[], ssl.SSLContext] | None, what: str) -> Any:
    """Build the server's SSLContext inside the actor (contexts cannot be pickled)."""
    if factory is None:
        return None
    try:
        ctx = factory()
    except Exception as e:
        raise EndpointStartError(f"{what}: ssl_context factory failed: {e!r}") from e
    if not isinstance(ctx, ssl.SSLContext):
        raise EndpointStartError(f"{what}: ssl_context factory returned {type(ctx).__name__}")
    return ctx


def check_ssl_arg(ssl_context: Any) -> None:
    """Reject an SSLContext instance early: Ray must pickle the class, and contexts cannot be."""
    if isinstance(ssl_context, ssl.SSLContext):
        raise TypeError(
            "ssl_context must be a zero-argument function returning an ssl.SSLContext (it runs "
            "inside the actor), not an SSLContext: contexts cannot be sent to the actor."
        )
    if ssl_context is not None and not callable(ssl_context):
        raise TypeError("ssl_context must be a zero-argument function returning an SSLContext")
