"""In-memory implementations of the ports in `avatar_pipeline.ports`, for fast unit tests of the services.

They keep the semantics the real adapters promise (conditional writes, `if_not_exists` on pair slots, the sparse
"due" index, the providers' lines and the one-transaction admission), store copies so a caller can never change a
stored record by mutating what it got back, and hold a lock so tests can race threads against them. The task table
also keeps its stream (every task write, old and new), so a test can run the dispatcher as the deployed stack does.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
from avatar_pipeline.config import Settings
from avatar_pipeline.domain.callback_tokens import CallbackTokens
from avatar_pipeline.domain.errors import DeliveryInProgressError
from avatar_pipeline.domain.media_checks import BytesSource
from avatar_pipeline.domain.models import (
    HOLDING_STATUSES,
    MAX_PRESIGNED_URL_SECONDS,
    Notification,
    PairSlot,
    PresignedUrl,
    ProviderJob,
    ProviderJobStatus,
    ProviderName,
    ProviderQuota,
    S3Object,
    SubmissionRequest,
    Task,
    TaskOutcome,
    TaskStatus,
)
from avatar_pipeline.domain.pairing import AUDIO_EXTENSIONS
from avatar_pipeline.ports import Charge, ConflictError, OutcomeT, SpendLimitReachedError
from avatar_pipeline.services.admission import on_line_changes
from avatar_pipeline.services.context import PipelineContext
from support.callback_key import CALLBACK_KEY

AUDIO_SUFFIXES = tuple(AUDIO_EXTENSIONS)


@functools.cache
def sample_image() -> bytes:
    return make_sample_portrait()


@functools.cache
def sample_audio() -> bytes:
    return make_sample_speech(3.0)


BUCKET = "avatar-media-unit"
T0 = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)

TEST_ENV: dict[str, str] = {
    "TASK_TABLE_NAME": "avatar-tasks-unit",
    "MEDIA_BUCKET": BUCKET,
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:avatar-unit",
    "WEBHOOK_BASE_URL": "https://hooks.example.test/v1",
    "WAVESPEED_SECRET_ID": "avatar-wavespeed-unit",
}

Scripted = Any  # a result to return, an exception (instance or class) to raise, or a callable producing either


def _play(result: Scripted) -> Any:
    if isinstance(result, BaseException):
        raise result
    if isinstance(result, type) and issubclass(result, BaseException):
        raise result()
    if callable(result):
        return _play(result())
    return result


class _Script:
    """Results handed out in order; when one is left it keeps being handed out."""

    def __init__(self) -> None:
        self._results: list[Scripted] = []

    def add(self, results: Iterable[Scripted]) -> None:
        self._results.extend(results)

    def __bool__(self) -> bool:
        return bool(self._results)

    def next(self) -> Scripted:
        return self._results.pop(0) if len(self._results) > 1 else self._results[0]


# --- the task table ------------------------------------------------------------------------------------------


class InMemoryTaskRepository:
    """`ports.TaskRepository` in a dict, with the DynamoDB adapter's conditional-write semantics."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.tasks: dict[str, Task] = {}
        self.slots: dict[str, PairSlot] = {}
        self.quotas: dict[str, ProviderQuota] = {}
        self.spend: dict[str, Decimal] = {}
        # The table's stream: every task write as (the record before, the record after), oldest first.
        self.stream: list[tuple[Task | None, Task]] = []
        self.replace_calls = 0
        self.conflicts = 0
        self._failures: dict[str, list[BaseException]] = {}

    def fail_next(self, method: str, error: BaseException | None = None) -> None:
        """Make the next call of `method` raise (as a throttled or unreachable table would), changing nothing."""
        if not callable(getattr(self, method, None)):
            raise AttributeError(method)
        self._failures.setdefault(method, []).append(error or RuntimeError(f"DynamoDB {method} failed"))

    def _maybe_fail(self, method: str) -> None:
        pending = self._failures.get(method)
        if pending:
            raise pending.pop(0)

    # tasks
    def get(self, task_id: str) -> Task | None:
        with self.lock:
            self._maybe_fail("get")
            task = self.tasks.get(task_id)
            return task.model_copy(deep=True) if task else None

    def create(self, task: Task) -> bool:
        with self.lock:
            self._maybe_fail("create")
            if task.task_id in self.tasks:
                return False
            self._write(task)
            return True

    def _write(self, task: Task) -> None:
        """Store a task (the caller holds the lock and checked the condition), and pass the change to the stream."""
        self.stream.append((self.tasks.get(task.task_id), task.model_copy(deep=True)))
        self.tasks[task.task_id] = task.model_copy(deep=True)

    def _check_task(self, new: Task, expected: Task) -> None:
        stored = self.tasks.get(new.task_id)
        if stored is None or stored.status != expected.status or stored.version != expected.version:
            self.conflicts += 1
            raise ConflictError(f"task {new.task_id} changed since version {expected.version}")

    def replace(self, new: Task, *, expected: Task) -> None:
        with self.lock:
            self._maybe_fail("replace")
            self.replace_calls += 1
            self._check_task(new, expected)
            self._write(new)

    # pair slots
    def get_slot(self, job: str) -> PairSlot | None:
        with self.lock:
            self._maybe_fail("get_slot")
            slot = self.slots.get(job)
            return slot.model_copy(deep=True) if slot else None

    def _check_slot(self, new: PairSlot, expected: PairSlot | None) -> None:
        stored = self.slots.get(new.job)
        if (stored is None) != (expected is None) or (stored and expected and stored.version != expected.version):
            self.conflicts += 1
            raise ConflictError(f"slot of job {new.job} changed")

    def save_slot(self, new: PairSlot, *, expected: PairSlot | None) -> None:
        with self.lock:
            self._maybe_fail("save_slot")
            self._check_slot(new, expected)
            self.slots[new.job] = new.model_copy(deep=True)

    def save_slot_and_create(self, new: PairSlot, *, expected: PairSlot, task: Task) -> bool:
        with self.lock:
            self._maybe_fail("save_slot_and_create")
            self._check_slot(new, expected)
            if task.task_id in self.tasks:
                return False
            self.slots[new.job] = new.model_copy(deep=True)
            self._write(task)
            return True

    # queries
    def due(self, now: datetime, limit: int) -> tuple[list[Task], list[PairSlot]]:
        with self.lock:
            self._maybe_fail("due")
            found: list[tuple[datetime, Task | PairSlot]] = []
            for task in self.tasks.values():
                at = task.next_check_at or task.updated_at
                if task.needs_attention and at <= now:
                    found.append((at, task))
            for slot in self.slots.values():
                if slot.waiting_since is not None and slot.next_check_at is not None and slot.next_check_at <= now:
                    found.append((slot.next_check_at, slot))
            found.sort(key=lambda pair: pair[0])  # the index is sorted by next_check_at
            picked = [record.model_copy(deep=True) for _, record in found[:limit]]
            return [r for r in picked if isinstance(r, Task)], [r for r in picked if isinstance(r, PairSlot)]

    def list_job(self, job: str) -> tuple[PairSlot | None, list[Task]]:
        with self.lock:
            slot = self.slots.get(job)
            tasks = [task.model_copy(deep=True) for task in self.tasks.values() if task.job == job]
            return (slot.model_copy(deep=True) if slot else None), tasks

    # admission
    def queue_head(self, provider: ProviderName, limit: int) -> list[str]:
        with self.lock:
            self._maybe_fail("queue_head")
            return [task.task_id for task in self._line(provider)[:limit]]

    def queue_length(self, provider: ProviderName) -> int:
        with self.lock:
            self._maybe_fail("queue_length")
            return len(self._line(provider))

    def _line(self, provider: ProviderName) -> list[Task]:
        """The `queue` index: QUEUED tasks of `provider`, by place (when they joined the line, then their id)."""
        queued = [
            task for task in self.tasks.values() if task.status is TaskStatus.QUEUED and task.provider == provider
        ]
        for task in queued:
            assert task.queued_at is not None, f"QUEUED task {task.task_id} has no place in line"
        return sorted(queued, key=lambda task: f"{task.queued_at.isoformat()}#{task.task_id}")  # type: ignore[union-attr]

    def get_quota(self, provider: ProviderName) -> ProviderQuota | None:
        with self.lock:
            self._maybe_fail("get_quota")
            quota = self.quotas.get(provider)
            return quota.model_copy(deep=True) if quota else None

    def _check_quota(self, new: ProviderQuota, expected: ProviderQuota | None) -> None:
        stored = self.quotas.get(new.provider)
        if (stored is None) != (expected is None) or (stored and expected and stored.version != expected.version):
            self.conflicts += 1
            raise ConflictError(f"quota of {new.provider} changed")

    def save_quota(self, new: ProviderQuota, *, expected: ProviderQuota | None) -> None:
        with self.lock:
            self._maybe_fail("save_quota")
            self._check_quota(new, expected)
            self.quotas[new.provider] = new.model_copy(deep=True)

    def admit(
        self,
        claimed: Task,
        *,
        expected: Task,
        quota: ProviderQuota,
        expected_quota: ProviderQuota | None,
        charge: Charge | None,
    ) -> None:
        """All or nothing, as the DynamoDB transaction: a changed task or quota is a conflict (reported before a
        spend that does not fit, as the adapter reads the cancellation reasons), then the day's spend."""
        with self.lock:
            self._maybe_fail("admit")
            self._check_task(claimed, expected)
            self._check_quota(quota, expected_quota)
            # The adapter's condition to the letter: what was spent on the day (if anything was) leaves room for the
            # charge. (So the day's first charge is not compared with the limit.)
            spent = self.spend.get(charge.day) if charge is not None else None
            if charge is not None and spent is not None and spent > charge.limit - charge.amount:
                raise SpendLimitReachedError(f"the spend limit of {charge.day} is reached")
            self._write(claimed)
            self.quotas[quota.provider] = quota.model_copy(deep=True)
            if charge is not None:
                self.spend[charge.day] = self.spend.get(charge.day, Decimal(0)) + charge.amount

    def spent_on(self, day: str) -> Decimal:
        with self.lock:
            self._maybe_fail("spent_on")
            return self.spend.get(day, Decimal(0))

    # test helpers
    def take_stream(self) -> list[tuple[Task | None, Task]]:
        """The stream records since the last call (each is read once, as a stream consumer would)."""
        with self.lock:
            records, self.stream = self.stream, []
            return records

    def all_tasks(self) -> list[Task]:
        with self.lock:
            return [task.model_copy(deep=True) for task in self.tasks.values()]

    def only_task(self) -> Task:
        tasks = self.all_tasks()
        assert len(tasks) == 1, f"expected exactly one task, found {len(tasks)}: {[t.status for t in tasks]}"
        return tasks[0]

    def put(self, task: Task) -> Task:
        """Store a task as it is (any status), overwriting what was there."""
        with self.lock:
            self._write(task)
        return task

    def holders(self, provider: ProviderName) -> set[str]:
        """The tasks holding `provider`'s render slots, as its quota record says."""
        quota = self.get_quota(provider)
        return set(quota.holders) if quota else set()

    def line(self, provider: ProviderName) -> list[str]:
        """Every task id in `provider`'s line, first first."""
        with self.lock:
            return [task.task_id for task in self._line(provider)]


# --- media ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    url: str
    bucket: str
    key: str
    max_bytes: int


class FakeMediaStore:
    """`ports.MediaStore` over a dict of objects; downloads are scripted per URL.

    Links are signed at `clock()` (the world's clock in a `make_world`); set `credentials_expire_at` to sign them with
    credentials that expire then, as short-lived ones do.
    """

    def __init__(self, clock: Callable[[], datetime] = lambda: T0) -> None:
        self.clock = clock
        self.credentials_expire_at: datetime | None = None
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str], bytes] = {}
        self.copies: list[Copy] = []
        self.discarded: list[tuple[str, str]] = []
        self.keep_alive: Callable[[], None] = lambda: None
        self.presigned: list[tuple[S3Object, int]] = []
        # Keys overwritten or deleted since their upload event (the fake keeps no ETags of its own).
        self.changed: set[tuple[str, str]] = set()
        self._downloads: dict[str, _Script] = {}

    def put_object(self, bucket: str, key: str, body: bytes | str) -> None:
        self.objects[(bucket, key)] = body.encode() if isinstance(body, str) else body

    def script_download(self, url: str, *results: bytes | BaseException | type[BaseException]) -> None:
        """What `copy_from_url(url)` gets on successive calls: the video's bytes, or an exception to raise."""
        self._downloads.setdefault(url, _Script()).add(results)

    def presigned_get(self, obj: S3Object, expires_in: int) -> PresignedUrl:
        with self.lock:
            self.presigned.append((obj, expires_in))
        # As S3MediaStore computes it: the earliest of its own expiry, SigV4's 7 days and its credentials' expiry.
        ends = [self.clock() + timedelta(seconds=min(expires_in, MAX_PRESIGNED_URL_SECONDS))]
        if self.credentials_expire_at is not None:
            ends.append(self.credentials_expire_at)
        return PresignedUrl(
            url=f"https://presigned.test/{obj.bucket}/{obj.key}?expires={expires_in}", expires_at=min(ends)
        )

    def unchanged(self, obj: S3Object) -> bool:
        return (obj.bucket, obj.key) not in self.changed

    def read_small_object(self, bucket: str, key: str, max_bytes: int) -> bytes | None:
        data = self.objects.get((bucket, key))
        if data is None:
            return None
        if len(data) > max_bytes:  # as S3MediaStore does
            raise ValueError(f"s3://{bucket}/{key} is {len(data)} bytes, more than the {max_bytes} bytes allowed")
        return data

    def describe(self, bucket: str, key: str) -> S3Object | None:
        data = self.objects.get((bucket, key))
        if data is None:
            return None
        return S3Object(bucket=bucket, key=key, etag=hashlib.md5(data).hexdigest(), size=len(data))  # noqa: S324

    def source(self, obj: S3Object) -> BytesSource:
        """The stored bytes; an upload no test stored is a valid sample of its kind (by extension), so tests about
        pairing need not carry media."""
        data = self.objects.get((obj.bucket, obj.key))
        if data is None:
            data = sample_audio() if obj.key.lower().endswith(AUDIO_SUFFIXES) else sample_image()
        return BytesSource(data)

    def discard_partial_copies(self, bucket: str, key: str) -> int:
        with self.lock:
            self.discarded.append((bucket, key))
        return 0

    def copy_from_url(
        self, url: str, bucket: str, key: str, max_bytes: int, keep_alive: Callable[[], None] = lambda: None
    ) -> S3Object:
        with self.lock:
            # A scripted download (a callable) may call it, as bytes flowing through a real copy would.
            self.keep_alive = keep_alive
            self.copies.append(Copy(url, bucket, key, max_bytes))
            script = self._downloads.get(url)
            if not script:
                raise AssertionError(f"no download scripted for {url}")
            result = script.next()
        data = _play(result)
        with self.lock:
            self.objects[(bucket, key)] = data
        return S3Object(bucket=bucket, key=key, etag=hashlib.md5(data).hexdigest(), size=len(data))  # noqa: S324


# --- notifications -------------------------------------------------------------------------------------------


class RecordingNotifier:
    """`ports.Notifier` that keeps what it published; `fail_next()` makes the next publish raise."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published: list[Notification] = []
        self._failures: list[BaseException] = []
        self._ids = itertools.count(1)

    def fail_next(self, error: BaseException | None = None) -> None:
        self._failures.append(error or RuntimeError("SNS is unavailable"))

    def publish(self, notification: Notification) -> str:
        with self.lock:
            if self._failures:
                raise self._failures.pop(0)
            self.published.append(notification.model_copy(deep=True))
            return f"msg-{next(self._ids)}"


# --- callback deliveries -------------------------------------------------------------------------------------


class InMemoryDeliveryLog:
    """`ports.DeliveryLog` in a dict: an id is claimed while its delivery is processed and remembered only once that
    returned, as the Powertools Idempotency adapter does."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed: dict[str, Any] = {}  # delivery id -> what processing it returned
        self._in_progress: set[str] = set()

    def once(self, delivery_id: str, process: Callable[[], OutcomeT]) -> tuple[OutcomeT, bool]:
        with self.lock:
            if delivery_id in self.processed:
                return self.processed[delivery_id], True
            if delivery_id in self._in_progress:
                raise DeliveryInProgressError(f"delivery {delivery_id} is being processed")
            self._in_progress.add(delivery_id)
        try:
            outcome = process()
        finally:
            with self.lock:
                self._in_progress.discard(delivery_id)
        with self.lock:
            self.processed[delivery_id] = outcome
        return outcome, False


# --- usage ---------------------------------------------------------------------------------------------------


class RecordingMeter:
    """`ports.UsageMeter` that keeps what it is told."""

    def __init__(self) -> None:
        self.submissions: list[tuple[str, str | None]] = []
        self.outcomes: list[TaskOutcome] = []
        self.spend_limit_reached: list[str] = []

    def record_submission(self, provider: str, estimated_cost_usd: str | None) -> None:
        self.submissions.append((provider, estimated_cost_usd))

    def record_outcome(self, outcome: TaskOutcome) -> None:
        self.outcomes.append(outcome)

    def record_spend_limit_reached(self, provider: str) -> None:
        self.spend_limit_reached.append(provider)


# --- the dispatcher's wake-ups -------------------------------------------------------------------------------


class RecordingWaker:
    """`ports.Waker` that keeps each wake-up asked for; the test delivers it (or not) by calling the dispatcher."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, datetime]] = []

    def wake(self, provider: ProviderName, at: datetime) -> None:
        with self.lock:
            self.calls.append((provider, at))


# --- the provider --------------------------------------------------------------------------------------------


class ScriptedProvider:
    """`ports.VideoProvider` named "wavespeed" whose answers are scripted call by call.

    Unscripted, `submit` accepts (QUEUED, id "ws-<n>") and `fetch` answers QUEUED. A callback's delivery id is its
    ``webhook-id`` header, as WaveSpeed's.
    """

    name = "wavespeed"
    callback_auth: Literal["signature", "query"] = "signature"

    def __init__(self, name: str = "wavespeed", callback_auth: Literal["signature", "query"] = "signature") -> None:
        self.name = name
        self.callback_auth = callback_auth
        self.lock = threading.Lock()
        self.submissions: list[SubmissionRequest] = []
        self.fetches: list[str] = []
        self.callbacks: list[bytes] = []
        self._submit = _Script()
        self._fetch = _Script()
        self._callback = _Script()
        self._find = _Script()
        self.finds: list[str] = []
        self.finds_by_task = False
        self._ids = itertools.count(1)

    @property
    def submit_count(self) -> int:
        return len(self.submissions)

    def script_submit(self, *results: ProviderJob | BaseException | type[BaseException]) -> None:
        self._submit.add(results)

    def script_fetch(self, *results: ProviderJob | BaseException | type[BaseException]) -> None:
        self._fetch.add(results)

    def script_callback(self, *results: ProviderJob | BaseException | type[BaseException]) -> None:
        self._callback.add(results)

    def submit(self, request: SubmissionRequest) -> ProviderJob:
        with self.lock:
            self.submissions.append(request)
            number = next(self._ids)
            result = self._submit.next() if self._submit else None
        if result is None:
            return ProviderJob(provider_task_id=f"ws-{number}", status=ProviderJobStatus.QUEUED)
        return _play(result)  # type: ignore[no-any-return]

    def fetch(self, provider_task_id: str) -> ProviderJob:
        with self.lock:
            self.fetches.append(provider_task_id)
            result = self._fetch.next() if self._fetch else None
        if result is None:
            return ProviderJob(provider_task_id=provider_task_id, status=ProviderJobStatus.QUEUED)
        return _play(result)  # type: ignore[no-any-return]

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderJob:
        with self.lock:
            self.callbacks.append(body)
            if not self._callback:
                raise AssertionError("no callback scripted")
            result = self._callback.next()
        return _play(result)  # type: ignore[no-any-return]

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("webhook-id")

    def script_find(self, *results: ProviderJob | BaseException | None) -> None:
        """Make it a provider that finds jobs by our task id, answering these in turn (None: no such job)."""
        self.finds_by_task = True
        self._find.add(results)

    def find_by_task(self, task_id: str) -> ProviderJob | None:
        with self.lock:
            self.finds.append(task_id)
            result = self._find.next() if self._find else None
        return None if result is None else _play(result)  # type: ignore[no-any-return]


# --- time ----------------------------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when told; call it (it is the context's `clock`) or read `now`."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


# --- assembly ------------------------------------------------------------------------------------------------


def make_settings(**env: str) -> Settings:
    """Settings as `Settings.from_env` reads them, with test values for the required variables."""
    return Settings.from_env({**TEST_ENV, **env})


def callback_query(provider: str, task_id: str) -> dict[str, str]:
    """The query of the task's callback URL, as the test contexts would have made it."""
    return {"task_id": task_id, "token": CallbackTokens(lambda: [CALLBACK_KEY]).token_for(provider, task_id)}


def make_context(**overrides: Any) -> PipelineContext:
    """A PipelineContext on fresh fakes. Override any part: settings (Settings, or a dict of environment
    variables merged into the test environment), tasks, media, notifier, provider, providers, meter, deliveries,
    waker, callback_tokens, clock."""
    settings = overrides.pop("settings", None)
    if not isinstance(settings, Settings):
        settings = make_settings(**(settings or {}))
    provider = overrides.pop("provider", None) or ScriptedProvider()
    clock = overrides.pop("clock", None) or FakeClock()
    parts: dict[str, Any] = {
        "tasks": InMemoryTaskRepository(),
        "media": FakeMediaStore(clock),
        "notifier": RecordingNotifier(),
        "providers": {provider.name: provider},
        "meter": RecordingMeter(),
        "deliveries": InMemoryDeliveryLog(),
        "waker": RecordingWaker(),
        "callback_tokens": CallbackTokens(lambda: [CALLBACK_KEY]),
        "clock": clock,
    }
    unknown = set(overrides) - set(parts)
    if unknown:
        raise TypeError(f"make_context() got unexpected overrides {sorted(unknown)}")
    parts.update(overrides)
    return PipelineContext(settings=settings, **parts)


@dataclass
class World:
    """A context and typed handles on its fakes."""

    ctx: PipelineContext
    tasks: InMemoryTaskRepository
    media: FakeMediaStore
    notifier: RecordingNotifier
    provider: ScriptedProvider
    clock: FakeClock
    deliveries: InMemoryDeliveryLog
    meter: RecordingMeter
    waker: RecordingWaker


def make_world(**overrides: Any) -> World:
    ctx = make_context(**overrides)
    assert isinstance(ctx.tasks, InMemoryTaskRepository)
    assert isinstance(ctx.media, FakeMediaStore)
    assert isinstance(ctx.notifier, RecordingNotifier)
    assert isinstance(ctx.clock, FakeClock)
    assert isinstance(ctx.deliveries, InMemoryDeliveryLog)
    assert isinstance(ctx.meter, RecordingMeter)
    assert isinstance(ctx.waker, RecordingWaker)
    provider = ctx.providers["wavespeed"]
    assert isinstance(provider, ScriptedProvider)
    return World(ctx, ctx.tasks, ctx.media, ctx.notifier, provider, ctx.clock, ctx.deliveries, ctx.meter, ctx.waker)


# --- the dispatcher on the table's stream --------------------------------------------------------------------


def line_changes(
    records: Iterable[tuple[Task | None, Task]],
) -> tuple[dict[ProviderName, set[str]], dict[ProviderName, set[str]]]:
    """What the dispatcher's stream handler reads from task writes: the tasks that left their provider (their render
    slots are free) and the lines a task joined."""
    released: dict[ProviderName, set[str]] = {}
    lines: dict[ProviderName, set[str]] = {}
    for old, new in records:
        if old is not None and old.status in HOLDING_STATUSES and new.status not in HOLDING_STATUSES:
            released.setdefault(old.provider, set()).add(old.task_id)
        if new.status is TaskStatus.QUEUED:
            lines.setdefault(new.provider, set()).add(new.task_id)
    return released, lines


def run_dispatcher(w: World, time_left: timedelta = timedelta(minutes=5)) -> Counter[str]:
    """Deliver the task table's stream to the dispatcher until it has nothing more to say (its own writes are
    stream records too); what it did, added up."""
    actions: Counter[str] = Counter()
    for _ in range(20):
        released, lines = line_changes(w.tasks.take_stream())
        if not released and not lines:
            return actions
        actions.update(on_line_changes(w.ctx, released, lines, lambda: time_left).actions)
    raise AssertionError("the dispatcher kept changing the table")


def upload(key: str, etag: str = "etag-1", size: int = 100_000, bucket: str = BUCKET) -> S3Object:
    """An S3 object as an ObjectCreated event describes it."""
    return S3Object(bucket=bucket, key=key, etag=f'"{etag}"', size=size)
