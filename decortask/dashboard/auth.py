"""Who may use the dashboard: the access token, login sessions, CSRF tokens and the Origin and Host checks.

A request is let in by `Authorization: Bearer TOKEN` or by the session cookie the login form sets. Without a
token the dashboard serves only a loopback address, and then checks the `Host` header so that a web page
cannot reach it through DNS rebinding. Every POST must carry the CSRF token of its session (header
`X-CSRF-Token`, or the `csrf_token` form field) and, when a browser sends one, an `Origin` or `Referer` of
the dashboard itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import ConfigurationError

SESSION_COOKIE = "decortask_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
#: How long a login lasts.
SESSION_TTL = 12 * 3600.0
#: Most logged-in sessions kept; the oldest is forgotten first (each login makes one).
MAX_SESSIONS = 1000
#: Failed logins allowed per client address within LOGIN_WINDOW seconds before it must wait.
MAX_FAILED_LOGINS = 10
LOGIN_WINDOW = 60.0
#: `Host` names a token-less (loopback) dashboard answers to.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name to bind to) only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve a dashboard without a token anywhere but on loopback.

    Raises:
        ConfigurationError: `host` is not a loopback address and `token` is empty.
    """
    if token is not None and not token:
        raise ConfigurationError("the dashboard token is empty: give a long random one, or none on loopback")
    if token is None and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without a token: anyone who can reach that "
            "address could cancel and re-run tasks. Pass --token (or set DECORTASK_DASHBOARD_TOKEN), "
            "or bind to 127.0.0.1"
        )


@dataclass(frozen=True)
class Caller:
    """An admitted request: how it proved itself (`bearer`, `session` or `open`) and its session id."""

    method: str
    session: str | None


class Guard:
    """Admits requests and issues and checks sessions and CSRF tokens for one dashboard.

    Args:
        token: the access token; None leaves the dashboard open (allowed on loopback only).
        allowed_origins: extra origins POSTs may come from (`https://ops.example.com`), for a dashboard
            behind a proxy that rewrites the Host header.
    """

    def __init__(self, token: str | None, allowed_origins: tuple[str, ...] = ()) -> None:
        self._token = token.encode() if token is not None else None
        self._secret = secrets.token_bytes(32)
        self._sessions: dict[str, float] = {}
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self.allowed_origins = frozenset(_origin_netloc(o) for o in allowed_origins)

    @property
    def requires_token(self) -> bool:
        return self._token is not None

    # -- admission -----------------------------------------------------------------------------------------

    def admit(self, headers: dict[str, str], cookies: dict[str, str]) -> Caller | None:
        """The caller, or None when the request proves nothing (answer 401)."""
        session = cookies.get(SESSION_COOKIE) or None
        if self._token is None:
            return Caller("open", session)
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            return Caller("bearer", session) if self.token_matches(value.strip()) else None
        if session is not None and self._session_alive(session):
            return Caller("session", session)
        return None

    def host_allowed(self, host_header: str) -> bool:
        """An open (token-less) dashboard answers only to loopback names: a DNS-rebinding page cannot read it."""
        if self._token is not None:
            return True
        return _host_name(host_header) in LOOPBACK_NAMES

    def token_matches(self, supplied: str) -> bool:
        if self._token is None:
            return False
        # Both sides hashed first: compare_digest then also hides the token's length.
        return hmac.compare_digest(
            hashlib.sha256(supplied.encode()).digest(), hashlib.sha256(self._token).digest()
        )

    # -- sessions ------------------------------------------------------------------------------------------

    def login_blocked(self, client: str) -> bool:
        """Whether `client` (an address) failed to log in MAX_FAILED_LOGINS times within LOGIN_WINDOW."""
        now = time.time()
        with self._lock:
            recent = [t for t in self._failures.get(client, ()) if t > now - LOGIN_WINDOW]
            if recent:
                self._failures[client] = recent
            else:
                self._failures.pop(client, None)
            return len(recent) >= MAX_FAILED_LOGINS

    def login(self, supplied: str, client: str = "") -> str | None:
        """A new logged-in session id when `supplied` is the token, else None (and the failure is counted).

        A fresh id on every login, so a session id planted before login (session fixation) never gains rights.
        """
        if not self.token_matches(supplied):
            with self._lock:
                if len(self._failures) >= MAX_SESSIONS:  # bounded: forget everyone's old failures first
                    self._failures.clear()
                self._failures.setdefault(client, []).append(time.time())
            return None
        session = new_session_id()
        with self._lock:
            now = time.time()
            self._sessions = {s: t for s, t in self._sessions.items() if t > now}
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions, key=self._sessions.__getitem__)]
            self._sessions[session] = now + SESSION_TTL
        return session

    def logout(self, session: str | None) -> None:
        if session is not None:
            with self._lock:
                self._sessions.pop(session, None)

    def _session_alive(self, session: str) -> bool:
        with self._lock:
            expires = self._sessions.get(session)
        return expires is not None and expires > time.time()

    # -- CSRF ----------------------------------------------------------------------------------------------

    def csrf_token(self, caller_session: str | None) -> str:
        """The CSRF token for a session (or for cookie-less bearer clients); derived, so nothing is stored."""
        basis = caller_session if caller_session is not None else "bearer-without-session"
        return hmac.new(self._secret, b"csrf:" + basis.encode(), hashlib.sha256).hexdigest()

    def csrf_problem(
        self, caller: Caller, supplied: str | None, origin: str | None, referer: str | None, host: str
    ) -> str | None:
        """Why a POST fails the CSRF checks, or None when it passes."""
        if not supplied:
            return (
                "this POST has no CSRF token: send the X-CSRF-Token header with the csrf_token from "
                "GET /api/session (the page does this for you; reload it)"
            )
        if caller.session is None and caller.method != "bearer":
            return "this POST has no session: load the page (or GET /api/session) first, keeping its cookie"
        if not hmac.compare_digest(supplied.encode(), self.csrf_token(caller.session).encode()):
            return "this POST's CSRF token does not belong to this session: reload the page and try again"
        if origin == "null":  # sandboxed frames and some redirects: no way to tell where it came from
            return "this POST comes from an opaque origin; send it from the dashboard page"
        source = origin or referer
        if source:
            if _origin_netloc(source) not in {host.lower(), *self.allowed_origins}:
                return (
                    f"this POST comes from another site ({_origin_netloc(source) or 'unknown'}), not from the "
                    "dashboard; if the dashboard sits behind a proxy, list its public origin in allowed_origins"
                )
        elif caller.method != "bearer":
            # Browsers send Origin with every POST: a browser POST without either header is not trusted.
            return "this POST names no Origin or Referer; send it from the dashboard page"
        return None


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def _origin_netloc(value: str) -> str:
    """`host:port` of an origin or URL, lowercased (empty if it has none)."""
    try:
        return urlsplit(value.strip()).netloc.lower()
    except ValueError:
        return ""


def _host_name(host_header: str) -> str:
    """The name in a Host header, without the port (`[::1]:8000` gives `[::1]`)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value
