"""Dead-letter queues: list what the workers refused and why, and replay what can run again.

Every queue `Q` has a dead-letter queue `Q.dlq` (DESIGN §4). A dead letter is the refused message's body, byte
for byte, with `x-decortask-*` headers saying why (see `BrokerTransport.dead_letter`). Bodies are only ever
read with `decortask.message.decode`, which accepts JSON alone: a pickle or YAML body stays opaque bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .admin import fetch, publish_entry, reopen
from .errors import ConfigurationError, DecortaskError, MessageError, StoreError
from .message import Message, decode
from .records import record_from_message
from .security import mask_text
from .states import TaskStatus
from .store.base import ScheduleEntry, TaskRecord
from .transport import DEAD_LETTER_SUFFIX

if TYPE_CHECKING:
    from .app import Decortask
    from .outcomes import Outcome
    from .security import MessageCipher
    from .transport import ConsumerSession, Delivery

logger = logging.getLogger("decortask.deadletters")

REASON = "x-decortask-reason"
DETAIL = "x-decortask-detail"
ORIGINAL_QUEUE = "x-decortask-original-queue"
ORIGINAL_CONTENT_TYPE = "x-decortask-original-content-type"
DEAD_LETTERED_AT = "x-decortask-dead-lettered-at"
#: RabbitMQ's header on a message it dead-lettered itself (e.g. `delivery_limit` of a quorum queue).
BROKER_REASON = "x-first-death-reason"
#: Prefix of the id of a dead letter whose body is not a valid envelope (no task id can be trusted).
RAW_ID_PREFIX = "sha256:"
#: The id shown for a dead letter the broker client cannot read (see `decortask.admin.fetch`).
UNREADABLE = "unreadable"
#: Longest refusal detail a dead letter's log line shows (the dead letter's header keeps 500 characters).
LOGGED_DETAIL_CHARS = 300

REPLAYED = "replayed"
DROPPED = "dropped"
KEPT = "kept"


def dead_letter_queue(queue: str) -> str:
    """The dead-letter queue of `queue`; a name that already ends in `.dlq` is taken as it is."""
    return queue if queue.endswith(DEAD_LETTER_SUFFIX) else queue + DEAD_LETTER_SUFFIX


def raw_id(body: bytes) -> str:
    """The id of a dead letter whose envelope cannot be read: `sha256:` and 16 hex digits of its body."""
    return RAW_ID_PREFIX + hashlib.sha256(body).hexdigest()[:16]


def log_dead_letter(delivery: Delivery, outcome: Outcome) -> None:
    """The one log line of a dead letter, written by the worker once it is published.

    It names the task (id, and name when the store knows it) or, for a body that cannot be read, the id
    `decortask dlq list` shows for it; then the queue, the reason and the refusal's detail (masked). Never
    the body or the arguments.
    """
    if outcome.task_id is None:
        who = f"message {raw_id(delivery.body)}"
    elif outcome.task_name:
        who = f"task {outcome.task_name}[{outcome.task_id}]"
    else:
        who = f"task {outcome.task_id}"
    detail = mask_text(outcome.detail)
    if len(detail) > LOGGED_DETAIL_CHARS:
        detail = detail[:LOGGED_DETAIL_CHARS] + "..."
    logger.error(
        "%s dead-lettered to %s (%s)%s",
        who,
        dead_letter_queue(delivery.queue),
        outcome.reason or "unknown",
        f": {detail}" if detail else "",
    )


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as `decortask dlq list` shows it.

    Attributes:
        id: the envelope's task id when the body is a valid v1 envelope, else `sha256:` and the first 16 hex
            digits of the body's SHA-256 (stable: the same bytes always get the same id).
        queue: the queue the message was refused on (where a replay publishes it).
        reason: why it was refused (`unregistered_task`, `decode_error`, ...).
        detail: the worker's explanation, secrets masked.
        dead_lettered_at: UNIX seconds, or None when the header is missing.
        task: the task name, when the body is a valid envelope.
        size: the body's length in bytes.
        content_type: the content type the message originally had.
        replayable: whether `replay` can publish it again (its body is a valid envelope).
        problem: why it is not replayable, else None.
    """

    id: str
    queue: str
    reason: str
    detail: str
    dead_lettered_at: float | None
    task: str | None
    size: int
    content_type: str
    replayable: bool
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "queue": self.queue,
            "reason": self.reason,
            "detail": self.detail,
            "dead_lettered_at": self.dead_lettered_at,
            "task": self.task,
            "size": self.size,
            "content_type": self.content_type,
            "replayable": self.replayable,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class ReplayOutcome:
    """What `replay` did with one dead letter.

    `action` is `replayed` (published as a fresh attempt, removed from the DLQ), `dropped` (removed without
    publishing, because the task has already been re-run since) or `kept` (left in the DLQ; `detail` says why).
    """

    id: str
    action: str
    detail: str
    attempt: int | None = None


@dataclass
class ReplayReport:
    """Every dead letter `replay` looked at that was asked for, and the requested ids it did not find."""

    outcomes: list[ReplayOutcome] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing asked for was left behind."""
        return not self.missing and all(o.action != KEPT for o in self.outcomes)


def list_dead_letters(app: Decortask, queue: str | None = None, limit: int = 50) -> list[DeadLetter]:
    """Up to `limit` dead letters of `queue` (default: the app's default queue), oldest first where the broker
    keeps order. Nothing is consumed: each message is fetched unacknowledged and given back afterwards.

    Raises:
        BrokerUnavailable: the broker cannot be reached.
    """
    if limit < 1:
        raise ConfigurationError(f"limit must be at least 1, got {limit}")
    dlq = dead_letter_queue(queue or app.settings.default_queue)
    if app.transport.queue_size(dlq) == 0:
        return []  # also avoids declaring a dead-letter queue that does not exist
    session = app.transport.open_consumer([dlq], prefetch=1, consume=False)
    held: list[Delivery] = []
    try:
        # All are held unacked until the end, so each get() returns a different message; requeueing each
        # one at once would hand the same message back again on brokers that requeue at the head.
        letters: list[DeadLetter] = []
        while len(letters) < limit:
            delivery, error = fetch(session, dlq)
            if error is not None:
                letters.append(_unreadable(dlq, error))
                continue
            if delivery is None:
                break
            held.append(delivery)
            letters.append(inspect_dead_letter(delivery, app.settings.max_payload_bytes, app.cipher)[0])
        return letters
    finally:
        _give_back(session, held)


def inspect_dead_letter(
    delivery: Delivery, max_bytes: int | None = None, cipher: MessageCipher | None = None
) -> tuple[DeadLetter, Message | None]:
    """Describe one dead letter; the message too when its body is a valid envelope (decoded as JSON only).

    With `cipher`, encrypted arguments are decrypted and checked, as a worker would.
    """
    headers = delivery.headers
    original_type = _text(headers.get(ORIGINAL_CONTENT_TYPE))
    message: Message | None = None
    problem: str | None = None
    if delivery.refused is not None:
        # e.g. a compressed body: it is never expanded, so it can never be replayed either.
        problem = mask_text(f"{delivery.refused}: {delivery.refused_detail}")
    else:
        try:
            # The original content type, not the DLQ copy's: a body refused as pickle stays refused even if
            # it happens to parse as JSON.
            message = decode(delivery.body, original_type or None, max_bytes, cipher=cipher)
        except MessageError as exc:
            problem = mask_text(f"{exc.reason}: {exc.detail}")
    ident = message.id if message is not None else raw_id(delivery.body)
    letter = DeadLetter(
        id=ident,
        queue=_text(headers.get(ORIGINAL_QUEUE)) or _original_queue(delivery.queue),
        # RabbitMQ's own dead letters (a quorum queue's delivery limit) carry its reason, not decortask's.
        reason=_text(headers.get(REASON)) or _text(headers.get(BROKER_REASON)) or "unknown",
        detail=mask_text(_text(headers.get(DETAIL))) or _broker_detail(headers),
        dead_lettered_at=_number(headers.get(DEAD_LETTERED_AT)),
        task=message.task if message is not None else None,
        size=len(delivery.body),
        content_type=original_type,
        replayable=message is not None,
        problem=problem,
    )
    return letter, message


def replay(app: Decortask, queue: str | None = None, ids: Collection[str] | None = None) -> ReplayReport:
    """Publish dead letters of `queue` again as fresh attempts: those whose id is in `ids`, or all if None.

    For each dead letter with a valid envelope, the task's record becomes PENDING again (a terminal record by
    compare-and-set, a missing one is created), a message for `attempt + 1` with the same id is published to
    the original queue, and only then is the dead letter acked. A dead letter whose body is not a valid
    envelope is reported and left in the DLQ.

    Replaying is idempotent per dead letter. After the ack the dead letter is gone, so a second replay of the
    same id finds nothing. If the process dies between publish and ack, the dead letter comes back: a second
    replay then finds the record PENDING (and publishes a copy of the same attempt, which the receipt rules
    skip as a duplicate once one copy has run) or finds that the task changed after it was dead-lettered
    (and drops the dead letter without publishing).

    Raises:
        ConfigurationError: `ids` is empty.
        BrokerUnavailable: the broker cannot be reached.
    """
    if ids is not None and not ids:
        raise ConfigurationError("give the ids of the dead letters to replay, or replay all of them")
    wanted = set(ids) if ids is not None else None
    report = ReplayReport()
    dlq = dead_letter_queue(queue or app.settings.default_queue)
    budget = app.transport.queue_size(dlq)
    seen: set[str] = set()
    handled: set[str] = set()
    if budget:
        session = app.transport.open_consumer([dlq], prefetch=1, consume=False)
        held: list[Delivery] = []
        try:
            # At most what was there at the start: dead letters arriving meanwhile wait for the next replay,
            # and a message whose hold lapsed (the SQLite broker's lease) is never taken twice in one pass.
            for _ in range(budget):
                delivery, error = fetch(session, dlq)
                if error is not None:
                    if wanted is None:  # held by the session, given back when it closes
                        report.outcomes.append(
                            ReplayOutcome(UNREADABLE, KEPT, _unreadable(dlq, error).detail)
                        )
                    continue
                if delivery is None:
                    break
                letter, message = inspect_dead_letter(delivery, app.settings.max_payload_bytes, app.cipher)
                if wanted is not None and letter.id not in wanted:
                    held.append(delivery)
                    continue
                seen.add(letter.id)
                if message is None:
                    detail = f"not a valid decortask message ({letter.problem}); it cannot be replayed"
                    outcome = ReplayOutcome(letter.id, KEPT, detail)
                elif letter.id in handled:
                    outcome = ReplayOutcome(
                        letter.id, DROPPED, "a copy of this message was already handled above"
                    )
                else:
                    outcome = _replay_one(app, delivery.body, letter, message)
                if outcome.action == KEPT:
                    held.append(delivery)
                else:
                    handled.add(letter.id)
                    session.ack(delivery)
                report.outcomes.append(outcome)
        finally:
            _give_back(session, held)
    if wanted is not None:
        report.missing = sorted(wanted - seen)
    return report


def _replay_one(app: Decortask, body: bytes, letter: DeadLetter, message: Message) -> ReplayOutcome:
    store = app.store
    try:
        record = store.get(message.id)
        if record is None:
            record = _create_record(app, message, letter.queue)
            if record.id != message.id:
                return ReplayOutcome(
                    letter.id,
                    KEPT,
                    f"its idempotency key is held by task {record.id}, which runs instead; "
                    "purge this dead letter once that task has ended",
                )
        if record.status is TaskStatus.PENDING:
            # Created just now, or re-opened by an earlier replay that died before its ack: publish the next
            # attempt. A second copy of that attempt is skipped by the receipt rules, never run twice.
            attempt = record.attempt + 1
            entry = ScheduleEntry.for_attempt(
                record.id,
                attempt,
                queue=letter.queue,
                due_at=time.time(),
                body=_with_attempt(body, attempt),
                priority=message.priority,
            )
            store.add_schedule(entry)
            publish_entry(app, entry, persistent=record.persist)
            return _replayed(letter, record, attempt)
        if letter.dead_lettered_at is not None and record.updated_at > letter.dead_lettered_at:
            # The task changed after this message was refused (a replay whose ack was lost, or `decortask
            # retry`): it has been re-run already, so publishing again would run it once more.
            return ReplayOutcome(
                letter.id,
                DROPPED,
                f"task {record.id} was re-run after it was dead-lettered (now {record.status.value}, "
                f"attempt {record.attempt}); removed without publishing",
            )
        if not record.status.terminal:
            return ReplayOutcome(
                letter.id,
                KEPT,
                f"task {record.id} is {record.status.value}: it is queued or running without this dead "
                "letter; replay it again once the task has ended if it should run once more",
            )
        attempt = record.attempt + 1
        reopen(app, record, _with_attempt(body, attempt), letter.queue)
        return _replayed(letter, record, attempt)
    except DecortaskError as exc:
        # A conflict (the task changed meanwhile) or an outage: this one stays; the others go on.
        return ReplayOutcome(letter.id, KEPT, mask_text(str(exc)))


def _replayed(letter: DeadLetter, record: TaskRecord, attempt: int) -> ReplayOutcome:
    logger.info(
        "dead letter %s replayed: task %s attempt %d on %s", letter.id, record.id, attempt, letter.queue
    )
    return ReplayOutcome(letter.id, REPLAYED, f"attempt {attempt} published to {letter.queue}", attempt)


def _create_record(app: Decortask, message: Message, queue: str) -> TaskRecord:
    """A PENDING record for a dead letter whose record is gone (expired, or a foreign producer's task)."""
    record = record_from_message(message, queue)
    try:
        return app.store.create(record)
    except StoreError:
        # Created by someone else between get() and create(): use theirs.
        existing = app.store.get(message.id)
        if existing is None:
            raise
        return existing


def _with_attempt(body: bytes, attempt: int) -> bytes:
    """The dead letter's body with only `attempt` changed; every other field is kept as it was.

    Re-encoding through `Message` would drop fields it does not model (an encrypted `enc` payload among
    them). `decode()` has already accepted this body as a JSON object, so it is read here as plain JSON
    (never anything else) and written back as JSON.
    """
    data = json.loads(body)
    data["attempt"] = attempt
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _unreadable(dlq: str, error: str) -> DeadLetter:
    return DeadLetter(
        id=UNREADABLE,
        queue=_original_queue(dlq),
        reason=UNREADABLE,
        detail=f"the broker client could not read this message ({error}); it can only be purged",
        dead_lettered_at=None,
        task=None,
        size=0,
        content_type="",
        replayable=False,
        problem=error,
    )


def _give_back(session: ConsumerSession, held: list[Delivery]) -> None:
    """Requeue what was fetched but not settled, then close; closing returns anything a requeue missed."""
    try:
        for delivery in held:
            with contextlib.suppress(Exception):  # a dead connection returns its unacked messages by itself
                session.requeue(delivery)
    finally:
        session.close()


def _original_queue(dlq: str) -> str:
    return dlq[: -len(DEAD_LETTER_SUFFIX)] if dlq.endswith(DEAD_LETTER_SUFFIX) else dlq


def _broker_detail(headers: dict[str, Any]) -> str:
    """What a dead letter RabbitMQ made itself says: `delivery_limit` is the quorum queue's backstop."""
    if _text(headers.get(BROKER_REASON)) == "delivery_limit":
        return (
            "RabbitMQ dead-lettered it: the message went back to its quorum queue more often than the "
            "queue's x-delivery-limit (workers that died or gave it back); its task record says what became of it"
        )
    return ""


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(_text(value)) if value is not None else None
    except ValueError:
        return None
