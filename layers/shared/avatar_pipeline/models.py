"""The pipeline's records and messages, as pydantic models: one definition per boundary."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class TaskStatus(StrEnum):
    WAITING_FOR_PAIR = "WAITING_FOR_PAIR"
    SUBMITTING = "SUBMITTING"
    SUBMITTED = "SUBMITTED"
    PROCESSING = "PROCESSING"
    OUTPUT_READY = "OUTPUT_READY"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.REJECTED, TaskStatus.FAILED, TaskStatus.TIMED_OUT})

ProviderName = Literal["wavespeed", "cometapi"]
Mode = Literal["std", "pro"]
MediaRole = Literal["image", "audio"]


class S3Object(BaseModel):
    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    etag: str = ""
    size: int = 0
    # From the S3 event: orders the writes to one key and tells a new upload of the same bytes from a repeated
    # delivery of the same event. Empty when the event carries none.
    sequencer: str = ""

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def file_name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def same_upload(self, other: S3Object | None) -> bool:
        """The same write of the same object (a repeated event), not merely the same bytes."""
        return other is not None and (self.key, self.etag, self.sequencer) == (other.key, other.etag, other.sequencer)

    def older_than(self, other: S3Object | None) -> bool:
        """An earlier write of the same key than `other` (S3 sequencers compare once padded to equal length)."""
        if other is None or other.key != self.key or not self.sequencer or not other.sequencer:
            return False
        width = max(len(self.sequencer), len(other.sequencer))
        return self.sequencer.rjust(width, "0") < other.sequencer.rjust(width, "0")


class JobOptions(BaseModel):
    """What a user may set in `job.json` next to the media files."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, max_length=2500)
    mode: Mode | None = None
    provider: ProviderName | None = None
    # May the task move to the other provider when this one is unavailable? (Default: the stack's setting.)
    failover: bool | None = None


class Transition(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    at: datetime
    from_status: TaskStatus | None = Field(default=None, alias="from")
    to_status: TaskStatus = Field(alias="to")
    reason: str


class Task(BaseModel):
    """One paid unit of work: one image + one audio clip → one video. Stored in the task table."""

    task_id: str
    job: str
    status: TaskStatus
    version: int = 0
    provider: ProviderName
    mode: Mode
    prompt: str | None = None
    image: S3Object | None = None
    audio: S3Object | None = None
    provider_task_id: str | None = None
    # For providers whose callbacks are unsigned: the secret in this task's callback URL (never logged).
    callback_token: str | None = Field(default=None, repr=False)
    failover_allowed: bool = False
    failed_over_from: ProviderName | None = None
    audio_ms: int | None = None
    # Decimal as text: the table stores no floats.
    estimated_cost_usd: str | None = None
    provider_output_url: str | None = None
    output: S3Object | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    last_news_at: datetime | None = None
    next_check_at: datetime | None = None
    lease_until: datetime | None = None
    submit_attempts: int = 0
    # Set only when the provider answered that it did not take the submission: then a retry is safe.
    submit_retry_at: datetime | None = None
    finalize_attempts: int = 0
    notify_lease_until: datetime | None = None
    notified_at: datetime | None = None
    history: list[Transition] = Field(default_factory=list)

    @property
    def needs_attention(self) -> bool:
        """In flight, or finished but not yet announced: the poller must keep an eye on it."""
        return not self.status.is_terminal or self.notified_at is None


class PairSlot(BaseModel):
    """One job's halves waiting to become a task; once cut, they move to `used_*` (a task consumed them)."""

    job: str
    version: int = 0
    image: S3Object | None = None
    audio: S3Object | None = None
    used_image: S3Object | None = None
    used_audio: S3Object | None = None
    created_at: datetime | None = None
    waiting_since: datetime | None = None
    next_check_at: datetime | None = None

    @property
    def is_complete(self) -> bool:
        return self.image is not None and self.audio is not None


class ProviderJobStatus(StrEnum):
    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class ProviderJob(BaseModel):
    """A provider's view of one task, normalised across providers."""

    provider_task_id: str
    # Our task id as the provider echoes it back, where it has one (CometAPI's external_task_id).
    external_id: str | None = None
    status: ProviderJobStatus
    output_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class SubmissionRequest(BaseModel):
    task_id: str
    image_url: str
    audio_url: str
    prompt: str | None
    mode: Mode
    webhook_url: str


class Notification(BaseModel):
    """The JSON body of the one SNS message each task produces when it ends."""

    job: str
    task_id: str
    status: TaskStatus
    reason: str | None = None
    inputs: dict[str, str]
    output: str | None = None
    download_url: str | None = None
    provider: ProviderName
    provider_task_id: str | None = None
    estimated_cost_usd: str | None = None
    created_at: datetime
    completed_at: datetime

    @property
    def subject(self) -> str:
        titles = {
            TaskStatus.COMPLETED: "Your talking-avatar video is ready",
            TaskStatus.REJECTED: "Your upload was rejected",
            TaskStatus.FAILED: "Your talking-avatar video failed",
            TaskStatus.TIMED_OUT: "Your talking-avatar video timed out",
        }
        # SNS caps subjects at 100 characters.
        return f"{titles[self.status]}: {self.job}"[:100]

    @property
    def email_text(self) -> str:
        """The same facts for people reading an email."""
        lines = [self.subject, "", f"Job: {self.job}", f"Status: {self.status.value}"]
        if self.reason:
            lines.append(f"Reason: {self.reason}")
        if self.download_url:
            lines += ["", "Download (link expires):", self.download_url]
        if self.output:
            lines.append(f"Stored at: {self.output}")
        if self.estimated_cost_usd:
            lines.append(f"Estimated provider cost: ${self.estimated_cost_usd}")
        lines += ["", "Inputs:", *(f"  {role}: {uri}" for role, uri in self.inputs.items())]
        lines += ["", f"Task {self.task_id} ({self.provider}), started {self.created_at:%Y-%m-%d %H:%M:%S} UTC"]
        return "\n".join(lines)


EndStage = Literal["pairing", "input", "submission", "provider", "copy", "done"]

# Where a task was when it ended, by the status it left: what a failure or time-out is counted under.
_STAGE_LEFT: dict[TaskStatus | None, EndStage] = {
    TaskStatus.WAITING_FOR_PAIR: "pairing",
    TaskStatus.SUBMITTING: "submission",
    TaskStatus.SUBMITTED: "provider",
    TaskStatus.PROCESSING: "provider",
    TaskStatus.OUTPUT_READY: "copy",
    TaskStatus.FINALIZING: "copy",
}


class TaskOutcome(BaseModel):
    """How a task ended, for metrics: its status, the stage it ended in, and how long it took."""

    model_config = ConfigDict(frozen=True)

    status: TaskStatus
    stage: EndStage
    provider: ProviderName
    end_to_end_seconds: float
    provider_seconds: float | None = None  # from the submission to the finished video, when there was one

    @classmethod
    def of(cls, task: Task) -> TaskOutcome:
        if not task.status.is_terminal or not task.history:
            raise ValueError(f"task {task.task_id} has not ended")
        ended = task.history[-1]
        stage: EndStage
        if task.status is TaskStatus.COMPLETED:
            stage = "done"
        elif task.status is TaskStatus.REJECTED:
            stage = "input"
        else:
            stage = _STAGE_LEFT.get(ended.from_status, "input")
        submitted = next((step.at for step in task.history if step.to_status is TaskStatus.SUBMITTING), None)
        finished = next((step.at for step in task.history if step.to_status is TaskStatus.OUTPUT_READY), None)
        return cls(
            status=task.status,
            stage=stage,
            provider=task.provider,
            end_to_end_seconds=(ended.at - task.created_at).total_seconds(),
            provider_seconds=(finished - submitted).total_seconds() if submitted and finished else None,
        )
