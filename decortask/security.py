"""Secret masking (one sanitizer for logs, banners, errors, pages and commands), argument encryption."""

from __future__ import annotations

import inspect
import math
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

    from .registry import Registry
    from .store.base import TaskRecord

#: The lookbehind starts a scheme only where a word starts: without it, every position inside a long run of
#: letters (a base64 blob in an exception message) rescans the run, and masking took minutes.
_USERINFO_PASSWORD = re.compile(
    r"(?<![a-zA-Z0-9+.\-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@"
)
MASK = "****"
#: The words that make a name secret-looking (`password`, `DB_PASSWORD`, `csrf_token`, `X-Api-Key`, ...).
_SECRET_WORD = (
    r"(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credentials?|auth)"
)
_SECRET_NAME = re.compile(rf"(?i){_SECRET_WORD}")
#: `password=...`, `token: ...`, `'password': '...'`, `Authorization: Bearer ...` in free text (exception
#: messages, log lines). The name may carry more words (`db_password`, `secret_key`, but not `author`); its
#: closing quote is allowed so JSON and Python dict reprs match; a quoted value is masked up to its quote.
_SECRET_ASSIGNMENT = re.compile(
    rf"(?i)(?P<key>{_SECRET_WORD}(?:[_.-][a-z0-9]+){{0,3}}|authorization)"  # bounded: linear time
    r"(?P<sep>['\"]?[ \t]*(?P<op>[=:])[ \t]*)"
    r"(?:(?P<quote>['\"])(?P<quoted>(?:(?!(?P=quote)).)*)(?P=quote)"
    r"|(?P<scheme>(?:bearer|basic|token|digest)[ \t]+)?(?P<value>[^\s,;&'\"]+))"
)
#: After `token:`, a lowercase word that a sentence continues: the words of a message, not a value
#: ("no CSRF token: send the X-CSRF-Token header"). A value after `=` is always masked.
_PROSE_WORD = re.compile(r"[a-z]+")
#: A password is often a plain lowercase word ("password: letmein is wrong"), so after these names the
#: value is masked even when a sentence seems to go on; decortask's own messages never use them that way.
_PASSWORD_WORD = re.compile(r"(?i)pass(?:word|wd)|pwd|secret|credential")
_SENTENCE_GOES_ON = re.compile(r"[ \t]+[A-Za-z]")
#: What help texts put where a value goes (`Bearer <token>`, `token=...`): no value to mask.
_PLACEHOLDER = re.compile(r"(?:<[^<>\s]*>|\.\.\.)[)\]}'\"`.]*")


def mask_url(url: str) -> str:
    """`url` with any password replaced by `****`; safe to log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", url)
    # libpq and redis-py also take the password as a query parameter (`?password=...`, `sslpassword=`).
    query = "&".join(
        f"{field.split('=', 1)[0]}={MASK}"
        if "=" in field and is_secret_name(field.split("=", 1)[0])
        else field
        for field in parts.query.split("&")
    )
    if parts.password is None:
        if query == parts.query:
            return url
        # Not urlunsplit: it turns an empty host's `postgresql:///db` into `postgresql:/db`.
        return f"{url.partition('?')[0]}?{query}" + (f"#{parts.fragment}" if parts.fragment else "")
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:{MASK}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def is_secret_name(name: str) -> bool:
    """Whether a field, keyword or parameter name looks like it holds a secret (`api_key`, `db_password`)."""
    return _SECRET_NAME.search(name) is not None


def mask_fields(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `values` with secret-looking keys masked and secrets inside strings masked."""
    masked: dict[str, Any] = {}
    for key, value in values.items():
        if is_secret_name(key):
            masked[key] = MASK
        elif isinstance(value, str):
            masked[key] = mask_text(value)
        else:
            masked[key] = value
    return masked


def mask_text(text: str) -> str:
    """Mask URL passwords and `password=...`-style secrets inside free text (errors, log lines).

    The value is masked, never the words around it: `token: <value>` and `password=<value>` are masked,
    while a sentence that goes on after `token:` with lowercase words (decortask's own advice, "without a
    token: anyone who can reach that address") is left alone. A value with a digit, a capital or a symbol is
    masked even inside a sentence.
    """
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_ASSIGNMENT.sub(_mask_assignment, text)


def _mask_assignment(match: re.Match[str]) -> str:
    head = f"{match['key']}{match['sep']}"
    if match["quote"] is not None:
        return f"{head}{match['quote']}{MASK}{match['quote']}"
    scheme, value = match["scheme"] or "", match["value"]
    if _PLACEHOLDER.fullmatch(value) or not any(char.isalnum() for char in value):
        return match[0]
    if (
        match["op"] == ":"
        and _PASSWORD_WORD.search(match["key"]) is None
        and _is_prose([*scheme.split(), value], match.string, match.end())
    ):
        return match[0]
    return f"{head}{scheme}{MASK}"


def _is_prose(words: list[str], text: str, end: int) -> bool:
    """Whether the words after `token:` are a sentence: lowercase words, and more than one of them."""
    if not all(_PROSE_WORD.fullmatch(word) for word in words):
        return False
    return len(words) > 1 or _SENTENCE_GOES_ON.match(text, end) is not None


def scrub(value: Any) -> Any:
    """A JSON-ready copy of `value` with secrets masked: secret-looking keys, URL passwords, `password=...`.

    What every page and command that shows stored data (arguments, results, logs) passes it through.
    """
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # NaN is not JSON a browser can parse
    if isinstance(value, dict):
        return {
            str(k): MASK if is_secret_name(str(k)) else scrub(v)
            for k, v in value.items()  # keys too may hold text
        }
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return mask_text(str(value))


def masked_args(record: TaskRecord, registry: Registry | None) -> list[Any]:
    """`record.args` scrubbed, and masked by parameter name where the task is defined in this process.

    A secret passed by position (`login("alice", "hunter2")` for `def login(user, password)`) is masked when
    `registry` defines the task; the task named by the record is only looked up, never imported.
    """
    args: list[Any] = scrub(record.args)
    task = registry.find(record.name) if registry is not None else None
    if task is None:
        return args
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p.name for p in task.signature.parameters.values() if p.kind in positional]
    for index, name in enumerate(names[: len(args)]):
        if is_secret_name(name):
            args[index] = MASK
    return args


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
