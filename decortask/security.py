"""Secret masking (one sanitizer for every log line, banner and error) and payload limits."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

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


def mask_text(text: str) -> str:
    """Mask URL passwords and `password=...`-style secrets inside free text (errors, log lines)."""
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_ASSIGNMENT.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
