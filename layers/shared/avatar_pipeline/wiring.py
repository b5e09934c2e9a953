"""Real adapters for the real environment: built once per Lambda container, on first use."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta

import boto3
import httpx
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.parameters import SecretsProvider
from botocore.config import Config

from avatar_pipeline.adapters.cometapi import CometApiProvider
from avatar_pipeline.adapters.deliveries import IdempotentDeliveryLog, idempotency_config
from avatar_pipeline.adapters.dynamodb import DynamoTaskRepository
from avatar_pipeline.adapters.metrics import EmfUsageMeter
from avatar_pipeline.adapters.s3 import S3MediaStore
from avatar_pipeline.adapters.safe_download import OutputUrlPolicy, SafeDownloader
from avatar_pipeline.adapters.sns import SnsNotifier
from avatar_pipeline.adapters.wakeups import SqsWaker
from avatar_pipeline.adapters.wavespeed import WaveSpeedProvider
from avatar_pipeline.config import Settings
from avatar_pipeline.ports import VideoProvider
from avatar_pipeline.services.context import PipelineContext

# Secrets are re-read at most this often, so a rotated key or webhook secret is picked up without a deploy.
SECRET_MAX_AGE_SECONDS = 300
# Callback deliveries are remembered for longer than webhook senders retry one (days, not weeks). One config per
# container, as Powertools has it: the webhook handler registers each invocation's Lambda context on it.
DELIVERY_IDEMPOTENCY = idempotency_config(remember_for=timedelta(days=7))


def split_secrets(value: str) -> list[str]:
    """Several webhook secrets may be valid at once (rotation): separated by commas or whitespace."""
    return [part for part in re.split(r"[\s,]+", value) if part]


class SecretBackedProviders(Mapping[str, VideoProvider]):
    """Provider adapters built with the current secrets each time one is asked for."""

    def __init__(self, settings: Settings, secrets: SecretsProvider, http: httpx.Client) -> None:
        self._settings = settings
        self._secrets = secrets
        self._http = http

    def _configured(self) -> tuple[str, ...]:
        ids = {"wavespeed": self._settings.wavespeed_secret_id, "cometapi": self._settings.cometapi_secret_id}
        return tuple(name for name, secret_id in ids.items() if secret_id)

    def _secret(self, secret_id: str) -> dict[str, str]:
        secret = self._secrets.get(secret_id, transform="json", max_age=SECRET_MAX_AGE_SECONDS)
        assert isinstance(secret, dict)
        return {key: str(value) for key, value in secret.items()}

    def __getitem__(self, name: str) -> VideoProvider:
        """The provider's adapter; KeyError when it is not configured (no secret, or no API key in it yet)."""
        if name not in self._configured():
            raise KeyError(name)
        secret_id = self._settings.wavespeed_secret_id if name == "wavespeed" else self._settings.cometapi_secret_id
        secret = self._secret(secret_id)
        if not secret.get("api_key"):
            raise KeyError(name)  # the stack creates the secret with an empty placeholder
        if name == "wavespeed":
            return WaveSpeedProvider(
                api_key=secret.get("api_key", ""),
                webhook_secrets=split_secrets(secret.get("webhook_secret", "")),
                base_url=self._settings.wavespeed_base_url,
                client=self._http,
            )
        return CometApiProvider(
            api_key=secret["api_key"],
            base_url=self._settings.cometapi_base_url,
            client=self._http,
            default_prompt=self._settings.cometapi_default_prompt,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._configured())

    def __len__(self) -> int:
        return len(self._configured())


@functools.cache
def pipeline() -> PipelineContext:
    settings = Settings.from_env()
    session = boto3.session.Session()
    s3 = session.client("s3", config=Config(signature_version="s3v4"))
    http = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
    return PipelineContext(
        settings=settings,
        tasks=DynamoTaskRepository(
            session.resource("dynamodb").Table(settings.task_table_name),
            task_ttl=timedelta(days=settings.task_ttl_days),
        ),
        # Downloads get a client of their own: its connections are checked (public addresses only), the API's are not.
        media=S3MediaStore(s3, SafeDownloader(OutputUrlPolicy.parse(settings.allowed_output_hosts))),
        # Well inside the notify lease (60 s): a slow publish must not outlive the claim that guards it.
        notifier=SnsNotifier(
            session.client("sns", config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})),
            settings.topic_arn,
        ),
        meter=EmfUsageMeter(),
        deliveries=IdempotentDeliveryLog(
            # A plain client: the resource's own one would serialise Powertools' already typed values again.
            DynamoDBPersistenceLayer(
                table_name=settings.idempotency_table_name, boto3_client=session.client("dynamodb")
            ),
            DELIVERY_IDEMPOTENCY,
        ),
        providers=SecretBackedProviders(settings, SecretsProvider(boto3_client=session.client("secretsmanager")), http),
        waker=SqsWaker(session.client("sqs"), settings.wakeup_queue_url),
    )
