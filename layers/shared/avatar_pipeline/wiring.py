"""Real adapters for the real environment, each built on an invocation's first use of it and kept for the
container's life: a WaveSpeed callback, for one, never builds an S3 or SNS client or an outgoing HTTP client, and never
imports their adapters."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import boto3
from botocore.config import Config

from avatar_pipeline.adapters.deliveries import idempotency_config
from avatar_pipeline.config import Settings
from avatar_pipeline.domain.callback_tokens import CallbackTokens
from avatar_pipeline.ports import VideoProvider
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.spec import split_secrets
from avatar_pipeline.services.context import PipelineContext

if TYPE_CHECKING:
    import httpx
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    from avatar_pipeline.adapters.deliveries import IdempotentDeliveryLog
    from avatar_pipeline.adapters.dynamodb import DynamoTaskRepository
    from avatar_pipeline.adapters.metrics import EmfUsageMeter
    from avatar_pipeline.adapters.s3 import LinkSigner, S3MediaStore
    from avatar_pipeline.adapters.sns import SnsNotifier
    from avatar_pipeline.adapters.wakeups import SqsWaker

# Secrets are re-read at most this often, so a rotated key or webhook secret is picked up without a deploy.
SECRET_MAX_AGE_SECONDS = 300
# Callback deliveries are remembered for longer than webhook senders retry one (days, not weeks). One config per
# container, as Powertools has it: the webhook handler registers each invocation's Lambda context on it.
DELIVERY_IDEMPOTENCY = idempotency_config(remember_for=timedelta(days=7))
# SigV4 for presigned links too (buckets created since mid-2020 refuse SigV2 ones).
S3_CONFIG = Config(signature_version="s3v4")

AdapterT = TypeVar("AdapterT")


# One lock for every build: the adapters share one boto3 session, which is not safe to make clients from at once.
_BUILDING = threading.RLock()


class _BuiltOnFirstUse(Generic[AdapterT]):
    """Stands in for an adapter: builds it when one of its public attributes is first asked for, then hands them over.
    A build that raises is tried again on the next use."""

    def __init__(self, build: Callable[[], AdapterT]) -> None:
        self._build: Callable[[], AdapterT] | None = build
        self._built: AdapterT | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # only the adapter's interface is handed over (not copy's or pickle's probes)
            raise AttributeError(name)
        if self._build is not None:
            with _BUILDING:
                if self._build is not None:
                    self._built, self._build = self._build(), None
        return getattr(self._built, name)


def on_first_use(build: Callable[[], AdapterT]) -> AdapterT:
    """`build()`'s adapter, built when first used (the callers see the adapter's own type)."""
    return cast(AdapterT, _BuiltOnFirstUse(build))


def read_json_secret(secrets: SecretsProvider, secret_id: str) -> dict[str, str]:
    """A JSON secret's fields as text, through Powertools' cache (read again once SECRET_MAX_AGE_SECONDS old)."""
    secret = secrets.get(secret_id, transform="json", max_age=SECRET_MAX_AGE_SECONDS)
    assert isinstance(secret, dict)
    return {key: str(value) for key, value in secret.items()}


def s3_client(session: boto3.session.Session, credentials: tuple[str, str] | None = None) -> Any:
    """An S3 client from the session: its region and its endpoint (AWS_ENDPOINT_URL, as the local stack sets it);
    signing with `credentials` (access key id, secret access key) when given, else the session's own."""
    if credentials is None:
        return session.client("s3", config=S3_CONFIG)
    access_key_id, secret_access_key = credentials
    # No session token: a long-term key has none, and the session's (if any) belongs to other credentials.
    return session.client(
        "s3",
        config=S3_CONFIG,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=None,
    )


def link_signer(settings: Settings, session: boto3.session.Session, secrets: SecretsProvider) -> LinkSigner | None:
    """Presigning with the link signer's access key when LINK_SIGNER_SECRET_ID names its secret; read on first use."""
    from avatar_pipeline.adapters.s3 import LinkSigner

    secret_id = settings.link_signer_secret_id
    if not secret_id:
        return None
    return LinkSigner(
        read_secret=lambda: read_json_secret(secrets, secret_id),
        make_client=lambda access_key_id, secret_access_key: s3_client(session, (access_key_id, secret_access_key)),
    )


def callback_tokens(settings: Settings, secrets: SecretsProvider) -> CallbackTokens:
    """Callback tokens keyed by the secret CALLBACK_KEY_SECRET_ID names (several keys while rotating); none without."""
    secret_id = settings.callback_key_secret_id
    return CallbackTokens(
        lambda: split_secrets(read_json_secret(secrets, secret_id).get("key", "")) if secret_id else []
    )


class SecretBackedProviders(Mapping[str, VideoProvider]):
    """Provider adapters built (by their specs) with the current secrets each time one is asked for."""

    def __init__(self, settings: Settings, secrets: SecretsProvider, http: httpx.Client) -> None:
        self._settings = settings
        self._secrets = secrets
        self._http = http

    def _configured(self) -> tuple[str, ...]:
        return tuple(name for name in PROVIDERS if self._settings.provider(name).configured)

    def _field(self, secret_id: str, field: str) -> str:
        """A field of the secret; empty when this function is given no such secret."""
        return read_json_secret(self._secrets, secret_id).get(field, "") if secret_id else ""

    def __getitem__(self, name: str) -> VideoProvider:
        """The provider's adapter; KeyError when it is not configured (no secret, or the stack's empty placeholder).

        A function holds only what its work needs (the webhook, for one, no paid API key).
        """
        if name not in self._configured():
            raise KeyError(name)
        provider = PROVIDERS[name].build(self._settings.provider(name), self._field, self._http)
        if provider is None:
            raise KeyError(name)
        return provider

    def __iter__(self) -> Iterator[str]:
        return iter(self._configured())

    def __len__(self) -> int:
        return len(self._configured())


def _media(settings: Settings, session: boto3.session.Session, secrets: SecretsProvider) -> S3MediaStore:
    from avatar_pipeline.adapters.s3 import S3MediaStore
    from avatar_pipeline.adapters.safe_download import OutputUrlPolicy, SafeDownloader

    # Downloads get a client of their own: its connections are checked (public addresses only), the API's are not.
    return S3MediaStore(
        s3_client(session),
        SafeDownloader(OutputUrlPolicy.parse(settings.allowed_output_hosts)),
        link_signer=link_signer(settings, session, secrets),
    )


def _notifier(settings: Settings, session: boto3.session.Session) -> SnsNotifier:
    from avatar_pipeline.adapters.sns import SnsNotifier

    # Well inside the notify lease (60 s): a slow publish must not outlive the claim that guards it.
    sns = session.client("sns", config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}))
    return SnsNotifier(sns, settings.topic_arn)


def _tasks(settings: Settings, session: boto3.session.Session) -> DynamoTaskRepository:
    from avatar_pipeline.adapters.dynamodb import DynamoTaskRepository

    table = session.resource("dynamodb").Table(settings.task_table_name)
    return DynamoTaskRepository(table, task_ttl=timedelta(days=settings.task_ttl_days))


def _deliveries(settings: Settings, session: boto3.session.Session) -> IdempotentDeliveryLog:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from avatar_pipeline.adapters.deliveries import IdempotentDeliveryLog

    # A plain client: the resource's own one would serialise Powertools' already typed values again.
    persistence = DynamoDBPersistenceLayer(
        table_name=settings.idempotency_table_name, boto3_client=session.client("dynamodb")
    )
    return IdempotentDeliveryLog(persistence, DELIVERY_IDEMPOTENCY)


def _secrets(session: boto3.session.Session) -> SecretsProvider:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    return SecretsProvider(boto3_client=session.client("secretsmanager"))


def _http() -> httpx.Client:
    import httpx

    return httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))


def _waker(settings: Settings, session: boto3.session.Session) -> SqsWaker:
    from avatar_pipeline.adapters.wakeups import SqsWaker

    return SqsWaker(session.client("sqs"), settings.wakeup_queue_url)


def _meter() -> EmfUsageMeter:
    from avatar_pipeline.adapters.metrics import EmfUsageMeter

    return EmfUsageMeter()


@functools.cache
def pipeline(settings_model: type[Settings] = Settings) -> PipelineContext:
    """The container's pipeline, from the environment validated by the function's own settings model
    (`config.SenderSettings`, `config.WebhookSettings`; `Settings` for the others); its adapters built on first use."""
    settings = settings_model.from_env()
    session = boto3.session.Session()
    secrets = on_first_use(lambda: _secrets(session))
    return PipelineContext(
        settings=settings,
        tasks=on_first_use(lambda: _tasks(settings, session)),
        media=on_first_use(lambda: _media(settings, session, secrets)),
        notifier=on_first_use(lambda: _notifier(settings, session)),
        meter=on_first_use(_meter),
        deliveries=on_first_use(lambda: _deliveries(settings, session)),
        providers=SecretBackedProviders(settings, secrets, on_first_use(_http)),
        waker=on_first_use(lambda: _waker(settings, session)),
        callback_tokens=callback_tokens(settings, secrets),
    )
