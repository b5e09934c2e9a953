"""The pipeline's records and messages, as pydantic models: one definition per boundary."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from avatar_pipeline.providers.registry import PROVIDERS


def utcnow() -> datetime:
    return datetime.now(UTC)


class TaskStatus(StrEnum):
    WAITING_FOR_PAIR = "WAITING_FOR_PAIR"
    # Paired and checked, waiting its turn for the provider account's quota: not sent, not paid.
    QUEUED = "QUEUED"
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
# The statuses in which a task holds one of its provider's render slots: it is (or may be) at the provider.
HOLDING_STATUSES = frozenset({TaskStatus.SUBMITTING, TaskStatus.SUBMITTED, TaskStatus.PROCESSING})


def _one_of(names: Iterable[str]) -> str:
    quoted = [f"'{name}'" for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _registered_provider(value: object) -> object:
    if not (isinstance(value, str) and value in PROVIDERS):
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": _one_of(PROVIDERS)})
    return value


def _offered_model(value: object) -> object:
    if not (isinstance(value, str) and value in PROVIDERS.model_names()):
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": _one_of(PROVIDERS.model_names())}
        )
    return value


# Before failover_targets, a task could only move between these two.
_FIRST_TWO = {"wavespeed": ("cometapi",), "cometapi": ("wavespeed",)}
# Before models had names, a task named its Kling tier (`mode`): each provider's Kling avatar model of that tier.
_KLING_VERSION_BEFORE_MODELS = {"wavespeed": "v1", "cometapi": "v1", "fal": "v2"}
KLING_TIERS = ("std", "pro")

# A registered provider's name (providers/registry.py), and a model one of them offers; refused as a Literal of
# them would be.
ProviderName = Annotated[str, BeforeValidator(_registered_provider)]
ModelName = Annotated[str, BeforeValidator(_offered_model)]
KlingTier = Literal["std", "pro"]
# A model's options as a job gives them (job.json's `options`) and as they are sent.
ModelOptions = dict[str, str | int | bool]
# The app's own keys and values (job.json's `metadata`), echoed in the task's events and its notification, as
# MediaConvert's userMetadata is: at most 20, short texts.
AppMetadata = Annotated[
    dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=256)]],
    Field(max_length=20),
]
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
    model: ModelName | None = None
    # The short form for Kling: its standard or pro model (of the default model's Kling version, else v1).
    mode: KlingTier | None = None
    # The model's own settings (resolution, seed...), as the model names them.
    options: ModelOptions = Field(default_factory=dict, max_length=20)
    provider: ProviderName | None = None
    # The providers to try, in order of preference: the pair goes to the first, and moves on only when the one
    # before provably did not take it (failover). One of `provider` and `providers`.
    providers: tuple[ProviderName, ...] | None = Field(default=None, min_length=1)
    # Where its video goes: an output path template of its own (domain/output_keys.py), instead of the stack's.
    output_path: str | None = Field(default=None, max_length=1024)
    # May the task move to another provider when this one is unavailable? (Default: the stack's setting.)
    failover: bool | None = None
    metadata: AppMetadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_way_each(self) -> JobOptions:
        if self.provider is not None and self.providers is not None:
            raise ValueError('give "provider" or "providers", not both')
        if self.providers is not None and len(set(self.providers)) != len(self.providers):
            raise ValueError('"providers" names a provider twice')
        if self.providers is not None and len(self.providers) > 1 and self.failover is False:
            raise ValueError('"providers" lists several providers to move between, but "failover" is false')
        if self.model is not None and self.mode is not None and not self.model.endswith(f"-{self.mode}"):
            raise ValueError(f'"model" {self.model} and "mode" {self.mode} disagree: give one of them')
        return self

    @property
    def preference(self) -> tuple[str, ...] | None:
        """The providers the job names, in order (None: it names none)."""
        return self.providers or ((self.provider,) if self.provider else None)


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
    model: ModelName
    # The job's options for its model (job.json's `options`), checked against the model before it was queued.
    options: ModelOptions = Field(default_factory=dict)
    prompt: str | None = None
    image: S3Object | None = None
    audio: S3Object | None = None
    # The mask image the job's options name (a model's "mask" option), as checked with the pair.
    mask: S3Object | None = None
    # Where its video goes, as its output key template gave it when the pair was checked (None in records from
    # before templates: outputs/<job>/<task>.mp4).
    output_key: str | None = None
    # The app's own keys and values from job.json, echoed back.
    metadata: dict[str, str] = Field(default_factory=dict)
    provider_task_id: str | None = None
    # The providers it may move to when its own turns it away (or its line is long), in the order tried: each one
    # the job and the operator allowed when the pair was checked, whose model takes these very files, within the
    # per-pair cost limit. Empty: it never moves.
    failover_targets: tuple[ProviderName, ...] = ()
    failed_over_from: ProviderName | None = None
    audio_ms: int | None = None
    # Decimal as text: the table stores no floats.
    estimated_cost_usd: str | None = None
    provider_output_url: str | None = None
    # When the provider deletes its copy of the video: copies are retried until then.
    output_expires_at: datetime | None = None
    output: S3Object | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    last_news_at: datetime | None = None
    next_check_at: datetime | None = None
    lease_until: datetime | None = None
    # Its place in its provider's line (first come, first served): kept when the provider turns it away, so it goes
    # back to the same place.
    queued_at: datetime | None = None
    submit_attempts: int = 0
    # The UTC day whose spend limit its estimated cost was counted against (once, at its first admission).
    charged_on: str | None = None
    finalize_attempts: int = 0
    # A copy that broke off is tried again no earlier than this (backing off while the provider keeps the video).
    copy_retry_at: datetime | None = None
    # A task that ended while its provider may still deliver (TIMED_OUT at the provider) is watched until then: a
    # video that arrives late is still copied and announced.
    watch_until: datetime | None = None
    # The ended status a late video overturned (announced or about to be): the next notification says so.
    corrects: TaskStatus | None = None
    notify_lease_until: datetime | None = None
    notified_at: datetime | None = None
    history: list[Transition] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _read_older_records(cls, data: Any) -> Any:
        """Records stored before `failover_targets` say `failover_allowed`: made when WaveSpeed and CometAPI were the
        only providers, they mean the other of the two (the pair was checked against it) — none once the task had
        moved (it moved once at most). Records stored before `model` name a Kling tier (`mode`): their provider's
        Kling avatar model of that tier, and of their targets only those that offer it (fal offered a `std` then,
        which was Kling v2)."""
        if not isinstance(data, dict) or not ({"failover_allowed", "mode"} & data.keys()):
            return data
        data = dict(data)
        if "failover_allowed" in data:
            allowed = data.pop("failover_allowed") and not data.get("failed_over_from")
            if allowed and "failover_targets" not in data:
                data["failover_targets"] = tuple(_FIRST_TWO.get(data.get("provider"), ()))
        if "mode" in data:
            mode = data.pop("mode")
            version = _KLING_VERSION_BEFORE_MODELS.get(str(data.get("provider")), "v1")
            model = data.setdefault("model", f"kling-{version}-{mode}")
            offering = PROVIDERS.offering(model)
            data["failover_targets"] = tuple(t for t in data.get("failover_targets") or () if t in offering)
        return data

    @property
    def targets_ahead(self) -> tuple[str, ...]:
        """The failover targets it has not reached yet: those after its provider (it moves forward only); none for a
        task that moved to a provider not among them (a record from before there were lists)."""
        targets = self.failover_targets
        if self.provider in targets:
            return targets[targets.index(self.provider) + 1 :]
        return () if self.failed_over_from is not None else targets

    @property
    def needs_attention(self) -> bool:
        """In flight (but not waiting in line: the provider's queue index holds those), finished but not yet
        announced, or watched for a late video: the poller must keep an eye on it."""
        if self.status is TaskStatus.QUEUED:
            return False
        return not self.status.is_terminal or self.notified_at is None or self.watch_until is not None

    @property
    def status_since(self) -> datetime:
        """When the task entered its current status (the clock each stage's time limit counts from)."""
        entered = next((step.at for step in reversed(self.history) if step.to_status is self.status), None)
        return entered or self.created_at

    @property
    def holds_render_slot(self) -> bool:
        return self.status in HOLDING_STATUSES


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
    # Presigned links and the callback URL (its token): secrets, kept out of the repr so a logged request shows none.
    image_url: str = Field(repr=False)
    audio_url: str = Field(repr=False)
    # None: the model takes none (the adapter may then send its own default where the provider requires one).
    prompt: str | None
    # The provider's name for the task's model (its spec's `model_id`).
    model_id: str
    webhook_url: str = Field(repr=False)
    # A presigned link to the task's mask image, for a model that takes one (a secret, as the other links).
    mask_url: str | None = Field(default=None, repr=False)
    # The model's own fields sent along with the inputs (its fixed fields, the job's options, a frame count):
    # nothing secret.
    options: ModelOptions = Field(default_factory=dict)


# A SigV4 presigned URL lives at most 7 days, whatever its X-Amz-Expires asks for.
MAX_PRESIGNED_URL_SECONDS = 604800


class PresignedUrl(BaseModel):
    """A presigned GET link and its real end of life.

    A presigned URL stops working when the credentials that signed it expire, whatever its X-Amz-Expires says; so
    `expires_at` is the earliest of the link's own expiry, its signing credentials' expiry (where known) and SigV4's
    7 days.
    """

    model_config = ConfigDict(frozen=True)

    # Its query string carries a signature: never logged whole (kept out of the repr).
    url: str = Field(repr=False)
    expires_at: datetime


class Notification(BaseModel):
    """The JSON body of the one SNS message each task produces when it ends."""

    job: str
    task_id: str
    status: TaskStatus
    reason: str | None = None
    inputs: dict[str, str]
    output: str | None = None
    download_url: str | None = None
    # When `download_url` stops working (UTC); the video stays at `output` after that. Absent with no link, and in
    # notifications from before the field existed.
    download_url_expires_at: datetime | None = None
    provider: ProviderName
    # The model, as jobs name it, and as people read it ("InfiniteTalk at 720p"); absent in notifications from
    # before models had names.
    model: str | None = None
    model_title: str | None = None
    provider_task_id: str | None = None
    estimated_cost_usd: str | None = None
    # The app's own keys and values from job.json's `metadata`, echoed back.
    metadata: dict[str, str] = Field(default_factory=dict)
    # Set when this notification overturns an earlier one for the same task (a video that arrived after the task
    # had timed out): the earlier status. Subscribers that act on endings should act on this one instead.
    corrects: TaskStatus | None = None
    created_at: datetime
    completed_at: datetime

    @property
    def subject(self) -> str:
        if self.corrects is not None and self.status is TaskStatus.COMPLETED:
            return f"Your talking-avatar video is ready after all: {self.job}"[:100]
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
        if self.corrects is not None:
            lines.append(f"This replaces the earlier notification for this task, which said {self.corrects.value}.")
        if self.reason:
            lines.append(f"Reason: {self.reason}")
        if self.download_url:
            if self.download_url_expires_at is not None:
                # Rounded down to the minute: the link works at least until the time shown.
                until = self.download_url_expires_at.astimezone(UTC)
                lines += ["", f"Download (this link works until {until:%Y-%m-%d %H:%M} UTC):", self.download_url]
            else:
                lines += ["", "Download (the link expires):", self.download_url]
        if self.output:
            # The link dies; the object does not.
            lines.append(
                f"After the link has expired, the video stays at {self.output}"
                if self.download_url
                else f"Stored at: {self.output}"
            )
        if self.estimated_cost_usd:
            lines.append(f"Estimated provider cost: ${self.estimated_cost_usd}")
        lines += ["", "Inputs:", *(f"  {role}: {uri}" for role, uri in self.inputs.items())]
        made_by = f"{self.provider}, {self.model_title}" if self.model_title else self.provider
        lines += ["", f"Task {self.task_id} ({made_by}), started {self.created_at:%Y-%m-%d %H:%M:%S} UTC"]
        return "\n".join(lines)


EndStage = Literal["pairing", "input", "submission", "provider", "copy", "done"]

# Where a task was when it ended, by the status it left: what a failure or time-out is counted under.
_STAGE_LEFT: dict[TaskStatus | None, EndStage] = {
    TaskStatus.WAITING_FOR_PAIR: "pairing",
    TaskStatus.QUEUED: "submission",
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


class ProviderQuota(BaseModel):
    """One provider account's admission record: the tasks holding its render slots, when its recent submissions went
    out, and whether it asked us to hold off. Stored in the task table; every change is a versioned write."""

    provider: ProviderName
    version: int = 0
    # task id → when it was admitted. A task leaves when it stops being at the provider (the dispatcher releases it
    # on the table's stream; the poller drops any it finds no longer holding).
    holders: dict[str, datetime] = Field(default_factory=dict)
    # Admission times within the provider's counting window (its submissions-per-minute limit).
    recent: list[datetime] = Field(default_factory=list)
    # The provider answered 429 anyway: nothing is sent before this.
    paused_until: datetime | None = None
    # A wake-up of the dispatcher is scheduled for this moment (so a burst schedules one, not one per task).
    wake_at: datetime | None = None
