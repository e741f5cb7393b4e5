"""The wire envelope (DESIGN §5): a versioned JSON object, validated field by field on receipt.

With encryption on, `args`/`kwargs` travel inside `enc`, a Fernet token over `{"v", "task", "id", "args",
"kwargs"}`; the receiver checks the inner `v`, `task` and `id` against the envelope.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .errors import ArgumentEncodingError, MessageError, PayloadTooLargeError

if TYPE_CHECKING:
    from .security import MessageCipher

VERSION = 1
CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: Limits on `meta`, the string map middleware attaches to a message (checked at enqueue and on receipt).
MAX_META_ENTRIES = 32
MAX_META_KEY = 128
MAX_META_VALUE = 4096


@dataclass(frozen=True)
class Message:
    """One task invocation as it travels through the broker.

    Times (`eta`, `expires`, `created_at`) are UNIX seconds (UTC). `attempt` is the attempt this message
    delivers, starting at 1. `cipher` is not part of the envelope: when set, `encode()` encrypts the
    arguments with it. `decode()` sets it from the receiving app, and `dataclasses.replace` keeps it, so a
    retry or a deferred copy built from a received message is encrypted again without its builder knowing.
    """

    id: str
    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    eta: float | None = None
    expires: float | None = None
    created_at: float = 0.0
    idempotency_key: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    priority: int = 0
    parent_id: str | None = None
    root_id: str | None = None
    workflow: dict[str, Any] | None = None
    #: String metadata attached by middleware at enqueue (e.g. trace propagation headers); see
    #: `Middleware.before_enqueue`. Sent only when non-empty.
    meta: dict[str, str] = field(default_factory=dict)
    v: int = VERSION
    cipher: MessageCipher | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:
        # Arguments that travel encrypted must not reach a log line or a traceback through a repr either.
        hidden = ("args", "kwargs") if self.cipher is not None else ()
        shown = (
            f"{f.name}={'<encrypted>' if f.name in hidden else repr(getattr(self, f.name))}"
            for f in fields(self)
            if f.repr
        )
        return f"Message({', '.join(shown)})"

    def to_dict(self) -> dict[str, Any]:
        envelope: dict[str, Any] = {
            "v": self.v,
            "id": self.id,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "attempt": self.attempt,
            "eta": self.eta,
            "expires": self.expires,
            "created_at": self.created_at,
            "idempotency_key": self.idempotency_key,
            "tags": self.tags,
            "priority": self.priority,
            "parent_id": self.parent_id,
            "root_id": self.root_id,
            "workflow": self.workflow,
        }
        if self.meta:
            envelope["meta"] = self.meta
        return envelope

    def encode(self, max_bytes: int | None = None, cipher: MessageCipher | None = None) -> bytes:
        """The JSON body, with `args`/`kwargs` encrypted into `enc` when `cipher` (or `self.cipher`) is set.

        Raises:
            ArgumentEncodingError: an argument is not JSON; the message names which.
            PayloadTooLargeError: the body is over `max_bytes` (measured after encryption).
        """
        cipher = cipher or self.cipher
        # Checked before dumping: json.dumps would silently turn {1: "a"} into {"1": "a"}.
        where = find_unencodable(self.args, "args") or find_unencodable(self.kwargs, "kwargs")
        body = ""
        if where is None:
            try:
                envelope = self.to_dict()
                if cipher is not None:
                    # v, task and id are sealed with the arguments, so a token moved onto another
                    # envelope is detected on receipt.
                    secret = {
                        "v": self.v,
                        "task": self.task,
                        "id": self.id,
                        "args": envelope.pop("args"),
                        "kwargs": envelope.pop("kwargs"),
                    }
                    if self.workflow:  # the later steps' arguments are arguments too
                        secret["workflow"], envelope["workflow"] = self.workflow, None
                    envelope["enc"] = cipher.encrypt(_dumps(secret).encode(CONTENT_ENCODING))
                body = _dumps(envelope)
            except (TypeError, ValueError) as exc:
                where = f"a field ({exc})"
        if where is not None:
            raise ArgumentEncodingError(
                f"task {self.task}: {where} cannot be sent as JSON; pass JSON types only "
                "(str, int, float, bool, None, list, dict with str keys), e.g. an id instead of an object"
            )
        data = body.encode(CONTENT_ENCODING)
        if max_bytes is not None and len(data) > max_bytes:
            raise PayloadTooLargeError(
                f"task {self.task}: message is {len(data)} bytes, over the {max_bytes}-byte limit "
                "(max_payload_bytes); store large data elsewhere and pass a reference"
            )
        return data


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def find_unencodable(value: Any, path: str) -> str | None:
    """The path of the first value inside `value` that JSON cannot carry faithfully, or None."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} (a non-finite float)"
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = find_unencodable(item, f"{path}[{index}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} (key {key!r} is not a str)"
            found = find_unencodable(item, f"{path}[{key!r}]")
            if found:
                return found
        return None
    return f"{path} (a {type(value).__name__})"


def encode_json_value(value: Any, what: str) -> Any:
    """Check that `value` survives JSON unchanged in kind; returns it. Used for results."""
    where = find_unencodable(value, what)
    if where is not None:
        raise ArgumentEncodingError(f"{where} cannot be stored as JSON; return JSON types only")
    return value


_OPTIONAL_FLOAT = ("eta", "expires")
_OPTIONAL_STR = ("idempotency_key", "parent_id", "root_id")


def decode(
    body: bytes | str,
    content_type: str | None,
    max_bytes: int | None = None,
    cipher: MessageCipher | None = None,
) -> Message:
    """Parse and validate a received body, decrypting `enc` with `cipher`.

    Raises:
        MessageError: with the dead-letter reason; `integrity_error` (carrying the envelope's id) when `enc`
            cannot be decrypted or checked, or when a plaintext message reaches a `cipher` that refuses it.
    """
    if content_type is not None and content_type.split(";", 1)[0].strip().lower() != CONTENT_TYPE:
        raise MessageError("content_type_not_allowed", f"content type {content_type!r} is never deserialized")
    if max_bytes is not None and len(body) > max_bytes:
        raise MessageError(
            "payload_too_large",
            f"{len(body)} bytes is over the {max_bytes}-byte limit",
            task_id=envelope_id(body, max_bytes),
        )
    try:
        data = json.loads(body)
    except RecursionError:
        raise MessageError("decode_error", "body nests JSON too deeply to parse") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError("decode_error", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("invalid_envelope", "body must be a JSON object")
    version = data.get("v")
    if type(version) is not int:
        raise MessageError("invalid_envelope", "field 'v' must be an integer")
    if version != VERSION:
        raise MessageError("unsupported_version", f"envelope version {version} is not supported (this is v1)")
    message_id: str = _field(data, "id", str, required=True)
    task: str = _field(data, "task", str, required=True)
    if data.get("enc") is None:
        if cipher is not None and not cipher.accept_plaintext:
            raise MessageError(
                "integrity_error",
                "the message is not encrypted and this worker accepts only encrypted arguments "
                "(setting accept_plaintext allows plaintext)",
                task_id=message_id,
            )
        args, kwargs = _field(data, "args", list, default=[]), _field(data, "kwargs", dict, default={})
        workflow = _field(data, "workflow", dict)
    else:
        args, kwargs, workflow = _decrypt_arguments(data, version, message_id, task, cipher)
    return Message(
        v=version,
        id=message_id,
        task=task,
        args=args,
        kwargs=kwargs,
        attempt=_attempt(data),
        eta=_number(data, "eta"),
        expires=_number(data, "expires"),
        created_at=_number(data, "created_at") or 0.0,
        idempotency_key=_field(data, "idempotency_key", str),
        tags=_tags(data),
        priority=_priority(data),
        parent_id=_field(data, "parent_id", str),
        root_id=_field(data, "root_id", str),
        workflow=workflow,
        meta=_meta(data),
        cipher=cipher,
    )


_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, at: int) -> int:
    found = _SPACE.match(text, at)
    return found.end() if found else at


def envelope_id(body: bytes | str, budget: int) -> str | None:
    """The task id of an envelope too large to decode, read from its first `budget` bytes; None if unreadable.

    The top-level fields are read in order, up to `id`, within no more bytes than the worker would parse
    for a message it accepts (decortask's own envelopes put `id` second, after `v`); no other field is
    kept. A refused message whose id this finds fails its task instead of leaving it PENDING.
    """
    head = body[:budget]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    decoder = json.JSONDecoder()
    try:
        at = _skip_space(text, 0)
        if text[at : at + 1] != "{":
            return None
        at += 1
        while True:
            at = _skip_space(text, at)
            key, at = decoder.raw_decode(text, at)
            at = _skip_space(text, at)
            if type(key) is not str or text[at : at + 1] != ":":
                return None
            at = _skip_space(text, at + 1)
            value, at = decoder.raw_decode(text, at)
            if key == "v" and value != VERSION:
                return None
            if key == "id":
                return value if type(value) is str and value else None
            at = _skip_space(text, at)
            if text[at : at + 1] != ",":
                return None
            at += 1
    except (ValueError, RecursionError):  # cut off within the budget, or not JSON
        return None


def _decrypt_arguments(
    data: dict[str, Any], version: int, message_id: str, task: str, cipher: MessageCipher | None
) -> tuple[list[Any], dict[str, Any], dict[str, Any] | None]:
    """`args`, `kwargs` and `workflow` from `enc`, after checking the sealed `v`, `task` and `id` match the
    envelope."""

    # Details name what failed, never the token, the plaintext or a key: they end up in logs and headers.
    def refused(detail: str) -> MessageError:
        return MessageError("integrity_error", detail, task_id=message_id)

    token = data["enc"]
    if cipher is None:
        raise refused("the message is encrypted ('enc') but this worker has no encryption_keys")
    if type(token) is not str:
        raise refused("field 'enc' must be a string (a Fernet token)")
    if data.get("args") is not None or data.get("kwargs") is not None or data.get("workflow") is not None:
        # Plaintext beside a token would be ambiguous: never guess which arguments were meant.
        raise refused("an encrypted message must not also carry 'args', 'kwargs' or 'workflow'")
    plaintext = cipher.decrypt(token)
    if plaintext is None:
        raise refused(
            "'enc' cannot be decrypted: tampered with, or made with a key this worker does not have"
        )
    try:
        inner = json.loads(plaintext)
    except (ValueError, UnicodeDecodeError, RecursionError):
        inner = None
    if not isinstance(inner, dict):
        raise refused("the decrypted 'enc' is not a JSON object")
    sealed = (inner.get("v"), inner.get("task"), inner.get("id"))
    if type(sealed[0]) is not int or sealed != (version, task, message_id):
        raise refused(
            "the encrypted arguments were sealed for another task, id or version than this envelope"
        )
    args = [] if inner.get("args") is None else inner["args"]
    kwargs = {} if inner.get("kwargs") is None else inner["kwargs"]
    workflow = inner.get("workflow")
    if (
        type(args) is not list
        or type(kwargs) is not dict
        or (workflow is not None and type(workflow) is not dict)
    ):
        raise refused(
            "the decrypted 'enc' must hold 'args' as an array, 'kwargs' and 'workflow' (if any) as objects"
        )
    return args, kwargs, workflow


def _field(data: dict[str, Any], name: str, kind: type, required: bool = False, default: Any = None) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise MessageError("invalid_envelope", f"field {name!r} is missing")
        return default
    if type(value) is not kind:
        raise MessageError("invalid_envelope", f"field {name!r} must be a {kind.__name__}")
    if kind is str and required and not value:
        raise MessageError("invalid_envelope", f"field {name!r} must not be empty")
    return value


def _number(data: dict[str, Any], name: str) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MessageError("invalid_envelope", f"field {name!r} must be a number (UNIX seconds) or null")
    return float(value)


def _attempt(data: dict[str, Any]) -> int:
    value = data.get("attempt", 1)
    if type(value) is not int or value < 1:
        raise MessageError("invalid_envelope", "field 'attempt' must be an integer >= 1")
    return value


def _priority(data: dict[str, Any]) -> int:
    value = data.get("priority", 0)
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value <= 9:
        raise MessageError("invalid_envelope", "field 'priority' must be an integer 0..9")
    return value


def _tags(data: dict[str, Any]) -> dict[str, str]:
    value = data.get("tags")
    if value is None:
        return {}
    if type(value) is not dict or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise MessageError("invalid_envelope", "field 'tags' must be an object of strings")
    return value


def _meta(data: dict[str, Any]) -> dict[str, str]:
    value = data.get("meta")
    if value is None:
        return {}
    if (
        type(value) is not dict
        or len(value) > MAX_META_ENTRIES
        or not all(
            isinstance(k, str)
            and isinstance(v, str)
            and 0 < len(k) <= MAX_META_KEY
            and len(v) <= MAX_META_VALUE
            for k, v in value.items()
        )
    ):
        raise MessageError(
            "invalid_envelope",
            f"field 'meta' must be an object of at most {MAX_META_ENTRIES} strings "
            f"(keys up to {MAX_META_KEY}, values up to {MAX_META_VALUE} characters)",
        )
    return value
