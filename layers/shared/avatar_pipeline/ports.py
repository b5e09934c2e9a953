"""The small interfaces the domain needs from the outside world; adapters/ implements them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from avatar_pipeline.domain.models import (
    Notification,
    PairSlot,
    PresignedUrl,
    ProviderJob,
    ProviderName,
    ProviderQuota,
    S3Object,
    SubmissionRequest,
    Task,
    TaskOutcome,
)

if TYPE_CHECKING:  # only named in annotations: who never validates media (webhook, finalize) never loads Pillow
    from avatar_pipeline.domain.events import TaskStateChange
    from avatar_pipeline.domain.media_checks import RandomAccessSource


class ConflictError(Exception):
    """A conditional write lost: someone else changed the record since it was read."""


class SpendLimitReachedError(Exception):
    """Admitting the task would take the day's estimated spend past the limit."""


@dataclass(frozen=True)
class Charge:
    """An admission's estimated cost, counted against the spend of `day` (which must stay within `limit`)."""

    day: str
    amount: Decimal
    limit: Decimal


class TaskRepository(Protocol):
    def get(self, task_id: str) -> Task | None: ...

    def create(self, task: Task) -> bool:
        """Store a new task; False when a task with that id already exists."""
        ...

    def replace(self, new: Task, *, expected: Task) -> None:
        """Write `new` only if the stored record still has `expected`'s status and version.

        Raises ConflictError otherwise.
        """
        ...

    def get_slot(self, job: str) -> PairSlot | None: ...

    def save_slot(self, new: PairSlot, *, expected: PairSlot | None) -> None:
        """Write the job's slot only if the stored one is still `expected` (same version; absent when None).

        Raises ConflictError otherwise.
        """
        ...

    def save_slot_and_create(self, new: PairSlot, *, expected: PairSlot, task: Task) -> bool:
        """Atomically: the slot as `save_slot` would write it, and a new task. False when the task already exists
        (then nothing is written); ConflictError when the slot changed."""
        ...

    def due(self, now: datetime, limit: int) -> tuple[list[Task], list[PairSlot]]:
        """Records that need attention (in flight or unannounced) whose next check is at or before `now`."""
        ...

    def list_job(self, job: str) -> tuple[PairSlot | None, list[Task]]: ...

    # --- admission ---------------------------------------------------------------------------------------------
    def queue_head(self, provider: ProviderName, limit: int) -> list[str]:
        """The ids of the tasks first in `provider`'s line (QUEUED, oldest place first). The index behind it may lag
        a moment behind the tasks themselves: read each task before acting on it."""
        ...

    def queue_length(self, provider: ProviderName) -> int:
        """How many tasks wait in `provider`'s line."""
        ...

    def get_quota(self, provider: ProviderName) -> ProviderQuota | None: ...

    def save_quota(self, new: ProviderQuota, *, expected: ProviderQuota | None) -> None:
        """Write the quota record only if the stored one is still `expected` (absent when None); else ConflictError."""
        ...

    def admit(
        self,
        claimed: Task,
        *,
        expected: Task,
        quota: ProviderQuota,
        expected_quota: ProviderQuota | None,
        charge: Charge | None,
    ) -> None:
        """Atomically: the task as claimed for submission (if still `expected`), the quota with it admitted (if still
        `expected_quota`) and, with a charge, the day's spend raised within its limit. ConflictError when the task or
        the quota changed, SpendLimitReachedError when the charge does not fit; nothing is written then."""
        ...

    def spent_on(self, day: str) -> Decimal:
        """The estimated spend admitted on that UTC day."""
        ...


class EventPublisher(Protocol):
    def publish(self, changes: Sequence[TaskStateChange]) -> None:
        """Put the task state change events on the bus, in order, or raise (none after a failed one is put)."""
        ...


class MediaStore(Protocol):
    def presigned_get(self, obj: S3Object, expires_in: int) -> PresignedUrl:
        """A GET link to the object, signed for `expires_in` seconds (at most SigV4's 7 days), with the moment it
        really stops working: earlier than asked when the credentials that signed it expire first."""
        ...

    def unchanged(self, obj: S3Object) -> bool:
        """Whether the object is still there with the ETag it had (False once overwritten or deleted)."""
        ...

    def read_small_object(self, bucket: str, key: str, max_bytes: int) -> bytes | None:
        """The whole object if it exists and is at most `max_bytes`; None if it does not exist."""
        ...

    def describe(self, bucket: str, key: str) -> S3Object | None:
        """The object as it is now (its ETag and size; nothing of it read), or None if it does not exist."""
        ...

    def source(self, obj: S3Object) -> RandomAccessSource:
        """The object's bytes, read on demand (validation reads headers and tails, not whole files)."""
        ...

    def copy_from_url(
        self, url: str, bucket: str, key: str, max_bytes: int, keep_alive: Callable[[], None]
    ) -> S3Object:
        """Stream a download from an allowed host into S3 (multipart, constant memory) and check it is a whole MP4.

        `keep_alive` is called as bytes flow; whatever it raises ends the copy (and is raised again), leaving no
        partial upload behind. Raises OutputUnusableError (permanent) or OutputCopyInterruptedError (worth retrying).
        """
        ...

    def discard_partial_copies(self, bucket: str, key: str) -> int:
        """Abort unfinished multipart uploads to `key` (left by copies that died); returns how many."""
        ...


class Notifier(Protocol):
    def publish(self, notification: Notification) -> str:
        """Publish one notification; returns the message id."""
        ...


class VideoProvider(Protocol):
    name: str
    # Every callback URL carries its task's token, which the domain checks first. "signature": parse_callback also
    # verifies the provider's signature (WaveSpeed signs its webhooks). "query": callbacks are unsigned, so what they
    # say is only a hint, confirmed by asking the provider (fetch).
    callback_auth: Literal["signature", "query"]

    def submit(self, request: SubmissionRequest) -> ProviderJob: ...

    def fetch(self, provider_task_id: str) -> ProviderJob: ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes, now: datetime) -> ProviderJob:
        """Authenticate and parse a callback. Raises WebhookAuthError or WebhookPayloadError."""
        ...

    def delivery_id(self, headers: Mapping[str, str]) -> str | None:
        """The id the provider gives a callback delivery and keeps on its retries; None when it gives none."""
        ...

    # Whether `find_by_task` can find a job by the task id we sent with it (CometAPI keeps it as external_task_id).
    finds_by_task: bool

    def find_by_task(self, task_id: str) -> ProviderJob | None:
        """The job made for our task `task_id` (after a submission whose answer was lost); None when there is none.
        Raises ProviderError when the provider cannot answer now."""
        ...


OutcomeT = TypeVar("OutcomeT", bound=str)


class DeliveryLog(Protocol):
    def once(self, delivery_id: str, process: Callable[[], OutcomeT]) -> tuple[OutcomeT, bool]:
        """Process a delivery once: `(what process returned, False)` the first time; for a delivery whose id was
        processed before, `(what it returned then, True)` without calling `process` again.

        An id is remembered only once `process` has returned: when it raises, nothing is kept and a retry of the
        delivery is processed afresh. Raises DeliveryInProgressError while another delivery with the same id is
        being processed.
        """
        ...


class Waker(Protocol):
    def wake(self, provider: ProviderName, at: datetime) -> None:
        """Have the dispatcher look at `provider`'s line again at `at` (or soon after)."""
        ...


class UsageMeter(Protocol):
    def record_submission(self, provider: str, estimated_cost_usd: str | None) -> None:
        """A task was accepted by `provider` (and will be billed): count it and add up its estimated cost."""
        ...

    def record_outcome(self, outcome: TaskOutcome) -> None:
        """A task ended and was announced (once per ending): count it by status and stage, and time it."""
        ...

    def record_spend_limit_reached(self, provider: str) -> None:
        """A task of `provider`'s line could not be sent: the day's spend limit is reached (an alarm watches this)."""
        ...
