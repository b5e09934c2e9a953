"""Runtime configuration, read once from the Lambda environment and validated."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from avatar_pipeline.domain.model_choice import choose_model
from avatar_pipeline.domain.models import MAX_PRESIGNED_URL_SECONDS, JobOptions, ModelName, ProviderName, Task
from avatar_pipeline.domain.output_keys import DEFAULT_TEMPLATE, template_problems
from avatar_pipeline.domain.quota import QuotaLimits
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.spec import ProviderSettings, ProviderSpec

# Input links outlive the provider's fetch window by this much: the submission itself (up to the dispatcher's time
# budget for it) comes before the provider's queue clock starts, and the poller ends a stage a little after its clock.
INPUT_URL_MARGIN_SECONDS = 900
# A task may render for twice its model's expected time before it is given up.
RENDER_MARGIN = 2


def _provider_settings(spec: ProviderSpec, env: Mapping[str, Any], given: Any) -> ProviderSettings:
    if isinstance(given, spec.settings):
        return given
    return spec.settings.model_validate(given if isinstance(given, Mapping) else env)


def default_output_hosts() -> tuple[str, ...]:
    """Where the registered providers serve their videos from (their specs' `output_hosts`)."""
    return tuple(dict.fromkeys(host for spec in PROVIDERS.values() for host in spec.output_hosts))


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    task_table_name: str = Field(alias="TASK_TABLE_NAME")
    media_bucket: str = Field(alias="MEDIA_BUCKET")
    topic_arn: str = Field(alias="TOPIC_ARN")
    # Only the functions that submit to providers need it (the webhook function cannot reference its own API).
    webhook_base_url: str = Field(default="", alias="WEBHOOK_BASE_URL")
    # Name or ARN of a Secrets Manager secret holding {"key": ...}: the key each task's callback token is derived
    # from (HMAC), so the webhook checks a callback's URL before it reads anything. Several keys, separated by commas,
    # are all accepted (rotation); the first one signs.
    callback_key_secret_id: str = Field(default="", alias="CALLBACK_KEY_SECRET_ID")
    # Only the webhook function needs it: Powertools Idempotency's table, which remembers processed deliveries.
    idempotency_table_name: str = Field(default="", alias="IDEMPOTENCY_TABLE_NAME")
    default_provider: ProviderName = Field(default="wavespeed", alias="DEFAULT_PROVIDER")
    default_model: ModelName = Field(default="kling-v1-std", alias="DEFAULT_MODEL")
    # What a job's job.json may choose (separated by commas or whitespace); the defaults above must be among them. A
    # pair asking for another model or provider is rejected, and a task never fails over to a provider not allowed.
    allowed_models: tuple[ModelName, ...] = Field(
        default_factory=lambda: PROVIDERS.model_names(), alias="ALLOWED_MODELS", min_length=1
    )
    allowed_providers: tuple[ProviderName, ...] = Field(
        default_factory=lambda: tuple(PROVIDERS), alias="ALLOWED_PROVIDERS", min_length=1
    )
    # A pair whose estimated cost is more than this (USD) is rejected, and a task never fails over to a provider where
    # it would cost more; 0: no limit (a pair's cost is still bounded by the providers' longest voice clip).
    max_cost_per_pair_usd: Decimal = Field(default=Decimal(0), alias="MAX_COST_PER_PAIR_USD", ge=0)
    # Whether tasks may fail over (by default, or when their job.json asks); false: never, whatever job.json says.
    allow_failover: bool = Field(default=True, alias="ALLOW_FAILOVER")
    # A queued task of a job that allows failover moves to another provider's line (one of its failover targets)
    # once it has waited this long there and that provider has room; 0: never.
    spill_over_after_seconds: int = Field(default=600, alias="SPILL_OVER_AFTER_SECONDS", ge=0)
    # How long the notification's download link works (SigV4 allows 7 days at most). The input links given to the
    # providers have no setting: they live as long as the provider may fetch them (`input_url_expiry_seconds`).
    download_url_expiry_seconds: int = Field(
        default=86400, alias="DOWNLOAD_URL_EXPIRY_SECONDS", gt=0, le=MAX_PRESIGNED_URL_SECONDS
    )
    # Name or ARN of a Secrets Manager secret holding {"access_key_id": ..., "secret_access_key": ...}: the access key
    # of an IAM user that may only read the bucket's inbox/ and outputs/. Links are presigned with it, because a link
    # dies with the credentials that signed it, and the functions' role credentials are temporary. Empty: the
    # functions' own credentials sign (links may then die before they say). Only functions that presign need it.
    link_signer_secret_id: str = Field(default="", alias="LINK_SIGNER_SECRET_ID")
    max_pair_wait_seconds: int = Field(default=1800, alias="MAX_PAIR_WAIT_SECONDS", gt=0)
    # Each stage has a clock of its own; waiting in our own line has none (a pair never times out for its turn).
    # Accepted by the provider but not yet rendering (its own queue), or sent with no answer and no callback yet.
    max_provider_queue_seconds: int = Field(default=21600, alias="MAX_PROVIDER_QUEUE_SECONDS", gt=0)
    # Rendering, counted from when the provider started; longer for a clip whose model is expected to take longer
    # (`render_limit`).
    max_render_seconds: int = Field(default=3600, alias="MAX_RENDER_SECONDS", gt=0)
    poll_after_seconds: int = Field(default=120, alias="POLL_AFTER_SECONDS", gt=0)
    # How long the providers' "minute" is: 60 s, unless a simulation runs their clock faster than ours.
    rate_window_seconds: float = Field(default=60.0, alias="RATE_WINDOW_SECONDS", gt=0)
    # At most this much estimated provider spend is admitted per UTC day; 0: no limit.
    daily_spend_limit_usd: Decimal = Field(default=Decimal(0), alias="DAILY_SPEND_LIMIT_USD", ge=0)
    # Where the dispatcher asks to be woken when a rate window or a pause ends (only the dispatcher needs it).
    wakeup_queue_url: str = Field(default="", alias="WAKEUP_QUEUE_URL")
    max_output_bytes: int = Field(default=2 * 1024**3, alias="MAX_OUTPUT_BYTES", gt=0)
    # Hosts finalize may download outputs from: names, `*.suffix` wildcards, or whole origins trusted as they are
    # (`http://127.0.0.1:8123`, for the local stack's simulators). Separated by commas or whitespace.
    allowed_output_hosts: tuple[str, ...] = Field(
        default_factory=lambda: default_output_hosts(), alias="ALLOWED_OUTPUT_HOSTS", min_length=1
    )
    task_ttl_days: int = Field(default=90, alias="TASK_TTL_DAYS", gt=0)
    # Where videos go (domain/output_keys.py); a job's job.json may give its own.
    output_path_template: str = Field(default=DEFAULT_TEMPLATE, alias="OUTPUT_PATH_TEMPLATE")
    # Each registered provider's own settings (its base URL, secrets, quota, prices), by name.
    providers: Mapping[str, SerializeAsAny[ProviderSettings]]

    def render_limit(self, task: Task) -> timedelta:
        """How long the task may render: MAX_RENDER_SECONDS, or twice what its model is expected to take for its
        clip when that is longer (InfiniteTalk's 10 min clip renders for hours)."""
        model = PROVIDERS[task.provider].models.get(task.model)
        expected = model.render_seconds_per_second * (task.audio_ms or 0) / 1000 if model else 0.0
        return timedelta(seconds=max(self.max_render_seconds, RENDER_MARGIN * expected))

    def provider_fetch_window(self, task: Task) -> timedelta:
        """How long after a submission the provider may still fetch its inputs: until its queue's and its render's
        clocks have both run out."""
        return timedelta(seconds=self.max_provider_queue_seconds) + self.render_limit(task)

    def input_url_expiry_seconds(self, task: Task) -> int:
        """How long the input links handed to a provider are signed for: the provider's fetch window and a margin,
        within SigV4's 7 days."""
        window = int(self.provider_fetch_window(task).total_seconds())
        return min(window + INPUT_URL_MARGIN_SECONDS, MAX_PRESIGNED_URL_SECONDS)

    def may_fail_over_to(self, provider: ProviderName) -> bool:
        """Whether a task may move to `provider`'s line (its job allowing it): the operator allows failover and that
        provider."""
        return self.allow_failover and provider in self.allowed_providers

    def within_cost_limit(self, cost: Decimal) -> bool:
        return not self.max_cost_per_pair_usd or cost <= self.max_cost_per_pair_usd

    def provider(self, name: str) -> ProviderSettings:
        return self.providers[name]

    def quota_limits(self, provider: ProviderName) -> QuotaLimits:
        account = self.provider(provider)
        window = timedelta(seconds=self.rate_window_seconds)
        return QuotaLimits(account.submissions_per_minute, window, account.renders_at_once)

    @model_validator(mode="before")
    @classmethod
    def _read_provider_settings(cls, data: Any) -> Any:
        """Each registered provider reads its own settings, with its own model, from the same environment (its
        variables' prefix), or from what `providers` gives for it (a dump of these settings)."""
        if not isinstance(data, Mapping):
            return data
        given = data.get("providers")
        given = given if isinstance(given, Mapping) else {}
        return {
            **data,
            "providers": {name: _provider_settings(spec, data, given.get(name)) for name, spec in PROVIDERS.items()},
        }

    @field_validator("output_path_template")
    @classmethod
    def _a_usable_template(cls, value: str) -> str:
        if problems := template_problems(value):
            raise ValueError(f"OUTPUT_PATH_TEMPLATE {value!r}: {'; '.join(problems)}")
        return value

    @field_validator("allowed_output_hosts", "allowed_models", "allowed_providers", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        return tuple(part for part in re.split(r"[\s,]+", value) if part) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _defaults_are_allowed(self) -> Settings:
        """Jobs that choose nothing get the defaults, so the operator must allow them."""
        if self.default_model not in self.allowed_models:
            raise ValueError(
                f"DEFAULT_MODEL ({self.default_model}) must be one of ALLOWED_MODELS"
                f" ({', '.join(self.allowed_models)}): jobs that choose no model get it"
            )
        if self.default_provider not in self.allowed_providers:
            raise ValueError(
                f"DEFAULT_PROVIDER ({self.default_provider}) must be one of ALLOWED_PROVIDERS"
                f" ({', '.join(self.allowed_providers)}): jobs that choose no provider get it"
            )
        # A job naming nothing gets the default model, or (a Kling model the provider does not run) its Kling of the
        # same tier: fal runs Kling v2 only.
        runs = choose_model(JobOptions(), self.default_model, self.default_provider)
        if runs not in PROVIDERS[self.default_provider].models:
            raise ValueError(
                f"DEFAULT_MODEL ({self.default_model}) must be a model DEFAULT_PROVIDER ({self.default_provider})"
                f" offers ({', '.join(PROVIDERS[self.default_provider].models)})"
            )
        if runs not in self.allowed_models:
            raise ValueError(
                f"DEFAULT_PROVIDER ({self.default_provider}) runs DEFAULT_MODEL ({self.default_model}) as {runs}, which"
                f" must be one of ALLOWED_MODELS ({', '.join(self.allowed_models)}): jobs that choose nothing get it"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return cls.model_validate(dict(os.environ if env is None else env))


# Each function's own settings: what its work cannot do without is required, so a function deployed without it
# refuses to build its pipeline on its first invocation (before it reads or writes anything), naming the variable,
# instead of failing mid-request. The submit and finalize functions need nothing beyond `Settings`.


class SenderSettings(Settings):
    """The dispatcher's and the poller's (both send tasks to providers): where providers call back, where the
    dispatcher is woken, and the key callback tokens are derived from."""

    webhook_base_url: str = Field(alias="WEBHOOK_BASE_URL", min_length=1)
    wakeup_queue_url: str = Field(alias="WAKEUP_QUEUE_URL", min_length=1)
    callback_key_secret_id: str = Field(alias="CALLBACK_KEY_SECRET_ID", min_length=1)


class WebhookSettings(Settings):
    """The webhook's: where processed deliveries are remembered, and the key that checks callback tokens."""

    idempotency_table_name: str = Field(alias="IDEMPOTENCY_TABLE_NAME", min_length=1)
    callback_key_secret_id: str = Field(alias="CALLBACK_KEY_SECRET_ID", min_length=1)
