"""Secret masking (one sanitizer for logs, banners and errors), payload limits, argument encryption."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

_USERINFO_PASSWORD = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@"
)
MASK = "****"
#: `password=...`, `token: ...` and the like, in free text (exception messages, log lines).
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(?P<key>password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth)(?P<sep>\s*[=:]\s*)"
    r"(?P<value>[^\s,;&'\"]+)"
)


def mask_url(url: str) -> str:
    """`url` with any password replaced by `****`; safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:{MASK}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_SECRET_KEY = re.compile(r"(?i)(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|auth)")


def mask_fields(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `values` with secret-looking keys masked and secrets inside strings masked."""
    masked: dict[str, Any] = {}
    for key, value in values.items():
        if _SECRET_KEY.search(key):
            masked[key] = MASK
        elif isinstance(value, str):
            masked[key] = mask_text(value)
        else:
            masked[key] = value
    return masked


def mask_text(text: str) -> str:
    """Mask URL passwords and `password=...`-style secrets inside free text (errors, log lines)."""
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_ASSIGNMENT.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)


# -- argument encryption (the optional `crypto` extra) ------------------------------------------------------


def split_keys(raw: str) -> list[str]:
    """The keys in a comma-separated `encryption_keys` value, newest first; blanks around commas are dropped."""
    return [key.strip() for key in raw.split(",")] if raw.strip() else []


def _multi_fernet(keys: list[str]) -> MultiFernet:
    # Imported here, not at module level: `cryptography` is an optional dependency, needed only with keys set.
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise ConfigurationError(
            "setting encryption_keys is set but the 'cryptography' package is not installed: "
            "pip install 'decortask[crypto]'"
        ) from None
    fernets = []
    for index, key in enumerate(keys):
        try:
            fernets.append(Fernet(key))
        except (ValueError, TypeError):
            # `from None` and no key text: the error must never carry key material into a log.
            raise ConfigurationError(
                f"setting encryption_keys: the key at index {index} (0-based, newest first) is not a valid "
                "Fernet key; generate one with cryptography.fernet.Fernet.generate_key()"
            ) from None
    return MultiFernet(fernets)


def check_keys(raw: str) -> None:
    """Raise `ConfigurationError` unless every key in `raw` is a valid Fernet key (no-op when `raw` is empty)."""
    keys = split_keys(raw)
    if keys:
        _multi_fernet(keys)


class MessageCipher:
    """Encrypts task arguments with the newest key and decrypts with any configured key (key rotation).

    Args:
        keys: comma-separated Fernet keys, newest first (the `encryption_keys` setting).
        accept_plaintext: whether a receiver also takes messages without `enc` (the `accept_plaintext` setting).
    """

    def __init__(self, keys: str, *, accept_plaintext: bool = False) -> None:
        parsed = split_keys(keys)
        if not parsed:
            raise ConfigurationError("setting encryption_keys is empty: a cipher needs at least one key")
        self._fernet = _multi_fernet(parsed)
        self.accept_plaintext = accept_plaintext

    def __repr__(self) -> str:
        return "<MessageCipher>"  # never the keys

    def encrypt(self, plaintext: bytes) -> str:
        """A Fernet token (ASCII) for `plaintext`, made with the newest key."""
        return self._fernet.encrypt(plaintext).decode("ascii")

    def decrypt(self, token: str) -> bytes | None:
        """The plaintext, or None when the token was tampered with or made with a key this cipher lacks."""
        from cryptography.fernet import InvalidToken

        try:
            # No ttl: a message may wait in the schedule (countdown, retry backoff) for any length of time.
            return self._fernet.decrypt(token.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            return None
