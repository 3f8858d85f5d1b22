"""API keys: a client sends its key in a header; keys are compared in constant time.

Keys are configured as client name → key (settings.api_keys); the name, never the key,
goes into the access log. Serving without keys is possible only when settings say so
(allow_no_keys, the demo), and the server announces it when it starts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from core.settings import Settings
from serving.errors import ApiError

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"
# The key as an OpenAPI security scheme: every operation that depends on require_key lists
# it, so Swagger UI's Authorize button sends the key. serving.openapi writes the header the
# server really reads (settings.api_key_header) into the published scheme; the check below
# reads that header itself.
KEY_SCHEME = APIKeyHeader(name="X-API-Key", scheme_name="ApiKey", auto_error=False)


class ServeConfigError(RuntimeError):
    """The server cannot start as configured."""


class KeyCheck:
    def __init__(self, settings: Settings) -> None:
        self.header = settings.api_key_header
        self._keys = [
            (name, key.get_secret_value().encode()) for name, key in settings.api_keys.items()
        ]
        if not self._keys and not settings.allow_no_keys:
            raise ServeConfigError(
                "no API keys configured: set "
                'STEELSIGHT_API_KEYS=\'{"mes": "<a long random key>"}\' '
                "or, for a demo on a closed machine only, STEELSIGHT_ALLOW_NO_KEYS=true "
                "(`steelsight serve --allow-no-keys`)"
            )

    @property
    def open(self) -> bool:
        return not self._keys

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self._keys}

    def announce(self) -> None:
        if self.open:
            log.warning(
                "SERVING WITHOUT API KEYS (allow_no_keys): anyone who can reach this port "
                "can call the API; configure STEELSIGHT_API_KEYS for anything but a demo"
            )
        else:
            log.info(
                "API keys required in header %s for %d client(s): %s",
                self.header,
                len(self._keys),
                ", ".join(name for name, _ in self._keys),
            )

    def client(self, sent: str | None) -> str | None:
        """The name of the client whose key was sent; None when no key matches. Every key
        is compared, so the time taken does not tell which one came close."""
        if self.open:
            return ANONYMOUS
        given = (sent or "").encode()
        found = None
        for name, key in self._keys:
            if hmac.compare_digest(given, key):
                found = name
        return found


def require_key(request: Request, _scheme: str | None = Security(KEY_SCHEME)) -> str:
    """FastAPI dependency: the calling client's name, or 401."""
    check: KeyCheck = request.app.state.server.keys
    client = check.client(request.headers.get(check.header))
    if client is None:
        missing = check.header not in request.headers
        raise ApiError(
            401,
            "unauthorized",
            f"{'no' if missing else 'an invalid'} API key in header {check.header}: send the key "
            "your plant administrator configured for this client",
            check.header,
            {"WWW-Authenticate": f'ApiKey header="{check.header}"'},
        )
    request.state.client = client
    return client


class LoginRequired(Exception):
    """A page asked for without a session: answered with a redirect to the login form."""


def page_client(request: Request) -> str:
    """FastAPI dependency of the quality page: the client whose key was given at the
    login form (kept in the signed session cookie), or LoginRequired. A client whose key
    was removed from the settings since is logged out."""
    check: KeyCheck = request.app.state.server.keys
    if check.open:
        return ANONYMOUS
    client = request.session.get("client")
    if client not in check.names:
        request.session.clear()
        raise LoginRequired()
    request.state.client = client
    return client


def session_secret(settings: Settings) -> str:
    """What signs the page's session cookie: derived from the configured keys, so every
    server process signs alike and changing the keys ends every session. Without keys (a
    demo) nobody logs in, and a random secret will do."""
    keys = sorted(f"{name}={key.get_secret_value()}" for name, key in settings.api_keys.items())
    if not keys:
        return secrets.token_hex(32)
    return hashlib.sha256(("steelsight-session\n" + "\n".join(keys)).encode()).hexdigest()
