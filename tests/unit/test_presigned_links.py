"""Presigned links that live as long as they say (issue 14, item 5).

A presigned URL stops working when the credentials that signed it expire, whatever its X-Amz-Expires says. So links
are signed with the link signer's long-term access key when LINK_SIGNER_SECRET_ID is set, every link carries its real
end of life, input links are signed for as long as the provider may fetch them, and the notification says until when
its link works.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from moto import mock_aws
from support.aws import REGION, Stack
from support.fakes import BUCKET, T0, World, make_world, run_dispatcher, upload
from support.moto_stack import moto_stack  # noqa: F401 - the `stack` fixture, for the wiring's tests

from avatar_pipeline import wiring
from avatar_pipeline.adapters.s3 import LinkSigner, LinkSignerError, S3MediaStore, credentials_expiry
from avatar_pipeline.config import INPUT_URL_MARGIN_SECONDS, Settings
from avatar_pipeline.domain.models import (
    MAX_PRESIGNED_URL_SECONDS,
    Notification,
    PresignedUrl,
    ProviderJob,
    ProviderJobStatus,
    S3Object,
    Task,
    TaskStatus,
)
from avatar_pipeline.domain.state_machine import begin
from avatar_pipeline.services import admission
from avatar_pipeline.services.finishing import announce, build_notification, finalize_output
from avatar_pipeline.services.intake import handle_upload
from avatar_pipeline.services.tracking import record_provider_news

KEY = "outputs/job-1/task-1.mp4"
OBJ = S3Object(bucket=BUCKET, key=KEY)
SIGNER_KEY_ID = "AKIALINKSIGNER000001"
SIGNER_SECRET = "link-signer-secret-access-key-0000000001"
ROTATED_KEY_ID = "AKIALINKSIGNER000002"
REQUIRED = {"TASK_TABLE_NAME": "t", "MEDIA_BUCKET": "b", "TOPIC_ARN": "arn:t", "WAVESPEED_SECRET_ID": "s"}


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlparse(url).query).items()}


def signed_with(url: str) -> str:
    """The access key id a presigned URL was signed with (the first part of its credential scope)."""
    return query(url)["X-Amz-Credential"].split("/", 1)[0]


def function_key_id() -> str:
    """The access key id of the function's own (temporary) credentials, as the environment gives them (moto's)."""
    credentials = boto3.session.Session().get_credentials()
    assert credentials is not None and credentials.token
    return str(credentials.access_key)


def signed_until(url: str) -> datetime:
    """Where the URL's own expiry lands: its X-Amz-Date plus its X-Amz-Expires."""
    fields = query(url)
    signed = datetime.strptime(fields["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed + timedelta(seconds=int(fields["X-Amz-Expires"]))


class SecretSource:
    """What the wiring reads the link signer's secret through (a Powertools SecretsProvider), counting reads."""

    def __init__(self, secret: dict[str, Any]) -> None:
        self.secret = secret
        self.reads = 0

    def __call__(self) -> dict[str, Any]:
        self.reads += 1
        return dict(self.secret)


class ClientFactory:
    """Builds S3 clients the way the wiring does, counting them."""

    def __init__(self) -> None:
        self.built: list[str] = []

    def __call__(self, access_key_id: str, secret_access_key: str) -> Any:
        self.built.append(access_key_id)
        return wiring.s3_client(boto3.session.Session(region_name=REGION), (access_key_id, secret_access_key))


@pytest.fixture
def s3() -> Iterator[Any]:
    """The function's own S3 client, over moto, signing with the temporary credentials the environment gives it."""
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        yield client


def signer_store(s3: Any, secret: dict[str, Any] | None = None) -> tuple[S3MediaStore, SecretSource, ClientFactory]:
    source = SecretSource(secret or {"access_key_id": SIGNER_KEY_ID, "secret_access_key": SIGNER_SECRET})
    factory = ClientFactory()
    return S3MediaStore(s3, link_signer=LinkSigner(source, factory)), source, factory


# --- settings ------------------------------------------------------------------------------------------------


def clip_task(model: str = "kling-v1-std", seconds: float = 30.0, provider: str = "wavespeed") -> Task:
    """A queued task of `provider`'s `model` for a voice clip of `seconds`."""
    waiting = begin("t-1", "job", since=T0, arrived="a file", now=T0, provider=provider, model=model)
    return waiting.model_copy(update={"audio_ms": round(seconds * 1000)})


def test_given_default_stage_clocks_when_settings_are_read_then_input_links_live_queue_and_render_and_a_margin() -> (
    None
):
    # Given the defaults: 6 h in the provider's queue, 1 h rendering, and a 30 s Kling clip (expected in 10 min)
    settings = Settings.from_env(REQUIRED)
    # Then the provider may fetch for 7 h, and input links are signed for that and the margin
    assert settings.provider_fetch_window(clip_task()) == timedelta(seconds=21600 + 3600)
    assert settings.input_url_expiry_seconds(clip_task()) == 21600 + 3600 + INPUT_URL_MARGIN_SECONDS == 26100


def test_given_other_stage_clocks_when_settings_are_read_then_the_input_link_expiry_follows_them() -> None:
    # Given a 2 h provider queue and 30 min rendering
    settings = Settings.from_env({**REQUIRED, "MAX_PROVIDER_QUEUE_SECONDS": "7200", "MAX_RENDER_SECONDS": "1800"})
    # Then the links of a short clip are signed for 2.5 h and the margin
    assert settings.provider_fetch_window(clip_task(seconds=10)) == timedelta(hours=2, minutes=30)
    assert settings.input_url_expiry_seconds(clip_task(seconds=10)) == 9000 + INPUT_URL_MARGIN_SECONDS


def test_given_a_clip_its_model_renders_for_longer_than_the_render_clock_then_it_gets_twice_the_expected_time() -> None:
    # Given the default 1 h render clock, and a 10 min InfiniteTalk clip (30 s of rendering per second: 5 h)
    settings = Settings.from_env(REQUIRED)
    long_clip = clip_task("infinitetalk", seconds=600)
    # Then it may render for 10 h, and the provider may fetch its inputs until its queue's clock and that have run
    assert settings.render_limit(long_clip) == timedelta(hours=10)
    assert settings.provider_fetch_window(long_clip) == timedelta(hours=6 + 10)
    assert settings.input_url_expiry_seconds(long_clip) == 16 * 3600 + INPUT_URL_MARGIN_SECONDS
    # And a short clip of the same model keeps the render clock
    assert settings.render_limit(clip_task("infinitetalk", seconds=20)) == timedelta(hours=1)


def test_given_stage_clocks_over_a_week_when_settings_are_read_then_input_links_are_capped_at_seven_days() -> None:
    # Given a provider queue of 10 days
    settings = Settings.from_env({**REQUIRED, "MAX_PROVIDER_QUEUE_SECONDS": str(10 * 86400)})
    # Then the window says so, but no SigV4 link can be signed for longer than 7 days
    assert settings.provider_fetch_window(clip_task()) == timedelta(days=10, hours=1)
    assert settings.input_url_expiry_seconds(clip_task()) == MAX_PRESIGNED_URL_SECONDS == 604800


def test_given_the_removed_input_url_expiry_variable_when_settings_are_read_then_it_no_longer_decides() -> None:
    # Given an environment that still sets the old fixed expiry
    settings = Settings.from_env({**REQUIRED, "INPUT_URL_EXPIRY_SECONDS": "60"})
    # Then the expiry is still the one derived from the stage clocks
    assert settings.input_url_expiry_seconds(clip_task()) == 26100


def test_given_link_signer_secret_id_when_settings_are_read_then_it_is_kept_and_is_empty_by_default() -> None:
    assert Settings.from_env(REQUIRED).link_signer_secret_id == ""
    named = Settings.from_env({**REQUIRED, "LINK_SIGNER_SECRET_ID": "arn:aws:secretsmanager:us-east-1:1:secret:ls"})
    assert named.link_signer_secret_id == "arn:aws:secretsmanager:us-east-1:1:secret:ls"


def test_given_a_download_expiry_over_seven_days_when_settings_are_read_then_it_is_refused() -> None:
    with pytest.raises(ValueError, match="DOWNLOAD_URL_EXPIRY_SECONDS"):
        Settings.from_env({**REQUIRED, "DOWNLOAD_URL_EXPIRY_SECONDS": str(MAX_PRESIGNED_URL_SECONDS + 1)})


# --- the S3 adapter: who signs -------------------------------------------------------------------------------


def test_given_a_link_signer_when_a_link_is_presigned_then_it_carries_the_signers_access_key_not_the_functions(
    s3: Any,
) -> None:
    # Given a store whose links are signed by the link signer
    store, _, _ = signer_store(s3)
    # When a link is presigned
    link = store.presigned_get(OBJ, 900)
    # Then its credential scope names the signer's access key, not the function's, and it carries no session token
    fields = query(link.url)
    assert signed_with(link.url) == SIGNER_KEY_ID
    assert signed_with(link.url) != function_key_id()
    assert "X-Amz-Security-Token" not in fields
    assert fields["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert fields["X-Amz-Expires"] == "900"
    assert urlparse(link.url).path.endswith(KEY)
    # and, a long-term key having no expiry, the link lives exactly as long as it says (from its whole second)
    assert signed_until(link.url) - timedelta(seconds=1) <= link.expires_at <= signed_until(link.url)


def test_given_no_link_signer_when_a_link_is_presigned_then_the_functions_own_credentials_sign_it(s3: Any) -> None:
    # Given a store without a link signer, When a link is presigned
    link = S3MediaStore(s3).presigned_get(OBJ, 900)
    # Then the function's own (temporary) credentials signed it, session token and all
    assert signed_with(link.url) == function_key_id()
    assert "X-Amz-Security-Token" in query(link.url)


def test_given_a_link_signer_when_the_store_is_built_and_used_without_presigning_then_its_secret_is_never_read(
    s3: Any,
) -> None:
    # Given a store with a link signer
    store, source, factory = signer_store(s3)
    s3.put_object(Bucket=BUCKET, Key="inbox/job-1/job.json", Body=b"{}")
    # When it is used for everything but presigning
    assert store.read_small_object(BUCKET, "inbox/job-1/job.json", 1024) == b"{}"
    assert store.unchanged(S3Object(bucket=BUCKET, key="inbox/job-1/job.json"))
    # Then the secret was never read, nor a client built
    assert (source.reads, factory.built) == (0, [])
    # When a link is presigned twice with the same key, Then the secret is read each time (its cache is the secrets
    # provider's) and one client serves both
    store.presigned_get(OBJ, 900)
    store.presigned_get(OBJ, 900)
    assert (source.reads, factory.built) == (2, [SIGNER_KEY_ID])


def test_given_the_signers_key_is_rotated_when_the_next_link_is_presigned_then_it_is_signed_with_the_new_key(
    s3: Any,
) -> None:
    # Given links signed with the signer's first key
    store, source, factory = signer_store(s3)
    assert signed_with(store.presigned_get(OBJ, 900).url) == SIGNER_KEY_ID
    # When the secret holds a new key
    source.secret = {"access_key_id": ROTATED_KEY_ID, "secret_access_key": "rotated-secret-access-key-000000000002"}
    # Then the next link is signed with it, by a client built for it
    assert signed_with(store.presigned_get(OBJ, 900).url) == ROTATED_KEY_ID
    assert factory.built == [SIGNER_KEY_ID, ROTATED_KEY_ID]


def test_given_the_signers_secret_holds_no_key_when_a_link_is_presigned_then_it_fails_without_showing_the_secret(
    s3: Any,
) -> None:
    # Given a secret with an access key id but an empty secret key (a placeholder)
    store, _, factory = signer_store(s3, {"access_key_id": SIGNER_KEY_ID, "secret_access_key": ""})
    # When a link is presigned, Then it fails, naming the setting, and no client was built
    with pytest.raises(LinkSignerError, match="LINK_SIGNER_SECRET_ID") as failed:
        store.presigned_get(OBJ, 900)
    assert SIGNER_KEY_ID not in str(failed.value)
    assert factory.built == []


def test_given_a_link_signer_when_links_are_presigned_then_no_log_line_holds_a_signature_or_the_key(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a store with a link signer, When links are presigned with every log line recorded
    store, _, _ = signer_store(s3)
    with caplog.at_level(logging.DEBUG, logger="avatar_pipeline"):
        link = store.presigned_get(OBJ, 900)
        store.presigned_get(OBJ, 900)
    # Then none of our log lines (nor the link's repr) holds the signature or the secret key
    signature = query(link.url)["X-Amz-Signature"]
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("avatar_pipeline"))
    assert "link signer's access key" in ours  # it did log, just nothing secret
    for text in (ours, repr(link), repr(store)):
        assert signature not in text
        assert SIGNER_SECRET not in text


# --- the S3 adapter: how long a link really works ------------------------------------------------------------


def test_given_credentials_with_a_known_expiry_when_a_link_outlives_them_then_expires_at_is_the_credentials_expiry(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given function credentials that botocore knows expire in 2 hours (as an assumed role's do)
    expiry = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", expiry.isoformat())
    client = boto3.session.Session().client("s3", region_name=REGION)
    assert credentials_expiry(client) == expiry
    # When a link is presigned for a day
    link = S3MediaStore(client).presigned_get(OBJ, 86400)
    # Then the URL asks for a day, but its real end of life is the credentials' expiry
    assert query(link.url)["X-Amz-Expires"] == "86400"
    assert link.expires_at == expiry
    assert link.expires_at < signed_until(link.url)


def test_given_credentials_that_outlive_the_link_when_it_is_presigned_then_expires_at_is_its_own_expiry(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given credentials that expire in 10 hours
    monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", (datetime.now(UTC) + timedelta(hours=10)).isoformat())
    client = boto3.session.Session().client("s3", region_name=REGION)
    assert credentials_expiry(client) is not None
    store = S3MediaStore(client)
    # When a link is presigned for 15 minutes
    link = store.presigned_get(OBJ, 900)
    # Then it works as long as it says: from its X-Amz-Date (whole seconds, never before the moment read) on
    assert signed_until(link.url) - timedelta(seconds=1) <= link.expires_at <= signed_until(link.url)


def test_given_an_expiry_over_seven_days_when_a_link_is_presigned_then_it_is_signed_for_seven_days_and_says_so(
    s3: Any,
) -> None:
    # Given a store with a link signer (a long-term key: no expiry of its own)
    store, _, _ = signer_store(s3)
    signed_at = datetime.now(UTC).replace(microsecond=0)
    # When a link is asked for 30 days
    link = store.presigned_get(OBJ, 30 * 86400)
    # Then SigV4's 7 days are what it is signed for, and what it says
    assert query(link.url)["X-Amz-Expires"] == "604800"
    assert signed_at + timedelta(days=7) <= link.expires_at <= signed_at + timedelta(days=7, seconds=2)


def test_given_a_clock_when_a_link_is_presigned_then_expires_at_counts_from_its_whole_second(s3: Any) -> None:
    # Given a store whose clock reads a moment with a fraction of a second
    moment = datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    store = S3MediaStore(boto3.client("s3", region_name=REGION), clock=lambda: moment)
    # When a link is presigned for an hour, Then it ends an hour after the whole second (X-Amz-Date has no fraction)
    assert store.presigned_get(OBJ, 3600).expires_at == datetime(2030, 1, 2, 4, 4, 5, tzinfo=UTC)


def test_given_a_non_positive_expiry_when_a_link_is_presigned_then_it_is_refused(s3: Any) -> None:
    with pytest.raises(ValueError, match="positive"):
        S3MediaStore(s3).presigned_get(OBJ, 0)


def test_given_temporary_credentials_of_unknown_expiry_when_links_are_presigned_then_one_warning_says_so(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the function's own temporary credentials (a session token, no expiry: as Lambda hands them over)
    store = S3MediaStore(s3)
    assert credentials_expiry(s3) is None
    # When links are presigned three times
    with caplog.at_level(logging.WARNING, logger="avatar_pipeline.adapters.s3"):
        for _ in range(3):
            store.presigned_get(OBJ, 900)
    # Then one warning tells how to get links that live as long as they say
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "LINK_SIGNER_SECRET_ID" in warnings[0]


def test_given_a_link_signer_when_links_are_presigned_then_no_warning_about_temporary_credentials(
    s3: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store, _, _ = signer_store(s3)
    with caplog.at_level(logging.WARNING, logger="avatar_pipeline.adapters.s3"):
        store.presigned_get(OBJ, 900)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_given_a_long_term_key_when_its_expiry_is_asked_then_there_is_none(s3: Any) -> None:
    client = wiring.s3_client(boto3.session.Session(region_name=REGION), (SIGNER_KEY_ID, SIGNER_SECRET))
    assert credentials_expiry(client) is None


# --- wiring --------------------------------------------------------------------------------------------------


def create_signer_secret(secret: dict[str, str] | None = None) -> str:
    """Inside the moto stack: the link signer's secret, as the template creates it; its ARN."""
    value = secret or {"access_key_id": SIGNER_KEY_ID, "secret_access_key": SIGNER_SECRET}
    created = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="avatar-link-signer-test", SecretString=json.dumps(value)
    )
    return str(created["ARN"])


def rewire(monkeypatch: pytest.MonkeyPatch, **environment: str) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    wiring.pipeline.cache_clear()


def test_given_link_signer_secret_id_when_the_pipeline_presigns_then_the_signers_key_from_secrets_manager_signs(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the link signer's secret in Secrets Manager, named by LINK_SIGNER_SECRET_ID
    rewire(monkeypatch, LINK_SIGNER_SECRET_ID=create_signer_secret())
    # When the pipeline presigns a link
    link = wiring.pipeline().media.presigned_get(S3Object(bucket=stack.bucket, key=KEY), 900)
    # Then the signer's key signed it, with no session token
    assert signed_with(link.url) == SIGNER_KEY_ID
    assert "X-Amz-Security-Token" not in query(link.url)


def test_given_no_link_signer_secret_id_when_the_pipeline_presigns_then_the_functions_credentials_sign(
    stack: Stack,
) -> None:
    link = wiring.pipeline().media.presigned_get(S3Object(bucket=stack.bucket, key=KEY), 900)
    assert signed_with(link.url) == function_key_id()


def test_given_an_s3_endpoint_override_when_the_signer_presigns_then_its_links_point_where_the_main_clients_do(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given S3 served from a local endpoint (the local stack sets AWS_ENDPOINT_URL for every service) and a signer
    rewire(monkeypatch, AWS_ENDPOINT_URL_S3="http://127.0.0.1:4566", LINK_SIGNER_SECRET_ID=create_signer_secret())
    obj = S3Object(bucket=stack.bucket, key=KEY)
    # When the signer presigns a link, and the main client presigns one too
    signed = urlparse(wiring.pipeline().media.presigned_get(obj, 900).url)
    main = urlparse(
        wiring.s3_client(boto3.session.Session()).generate_presigned_url(
            "get_object", Params={"Bucket": obj.bucket, "Key": obj.key}, ExpiresIn=900
        )
    )
    # Then both point at the same endpoint and path, in the same region
    assert (signed.scheme, signed.netloc, signed.path) == (main.scheme, main.netloc, main.path)
    assert signed.netloc == "127.0.0.1:4566"
    assert query(signed.geturl())["X-Amz-Credential"].split("/")[2] == REGION


def test_given_a_link_signer_secret_that_cannot_be_read_when_the_pipeline_is_built_then_only_presigning_fails(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given LINK_SIGNER_SECRET_ID names a secret that does not exist
    rewire(monkeypatch, LINK_SIGNER_SECRET_ID="avatar-link-signer-missing")
    # When the pipeline is built and used without presigning, Then nothing reads the secret
    media = wiring.pipeline().media
    assert media.read_small_object(stack.bucket, "inbox/none/job.json", 1024) is None
    # When it presigns, Then that fails, reading the secret (the submission or notification is tried again later)
    with pytest.raises(Exception, match="GetSecretValue"):
        media.presigned_get(S3Object(bucket=stack.bucket, key=KEY), 900)


# --- the notification ----------------------------------------------------------------------------------------


def queue_pairs(w: World, *jobs: str) -> list[str]:
    task_ids = []
    for job in jobs:
        handle_upload(w.ctx, upload(f"inbox/{job}/face.png"))
        outcome = handle_upload(w.ctx, upload(f"inbox/{job}/voice.mp3"))
        assert outcome.task_id is not None
        task_ids.append(outcome.task_id)
    return task_ids


def completed_task(w: World) -> str:
    """A task COMPLETED through the fakes: paired and sent at T0, its video ready and copied at T0 + 70 s."""
    task_id = queue_pairs(w, "alice")[0]
    assert run_dispatcher(w) == {"submit-submitted": 1}
    w.clock.advance(60)
    output_url = "https://d111.cloudfront.net/output/alice.mp4"
    news = ProviderJob(provider_task_id="ws-1", status=ProviderJobStatus.SUCCEEDED, output_url=output_url)
    assert record_provider_news(w.ctx, task_id, news) == "recorded"
    run_dispatcher(w)
    w.media.script_download(output_url, b"\x00" * 64)
    w.clock.advance(10)
    assert finalize_output(w.ctx, task_id, timedelta(minutes=10)) == "completed"
    return task_id


def test_given_a_completed_task_when_it_is_announced_then_the_notification_carries_its_links_real_end_of_life(
    w: World,
) -> None:
    # Given a completed task, announced an hour later
    task_id = completed_task(w)
    w.clock.advance(3600)
    # When it is announced
    assert announce(w.ctx, task_id) == "published"
    # Then the notification says when its download link stops working: a day after it was signed
    (note,) = w.notifier.published
    assert note.download_url is not None
    assert note.download_url_expires_at == w.clock.now + timedelta(seconds=w.ctx.settings.download_url_expiry_seconds)
    body = json.loads(note.model_dump_json())
    assert body["download_url_expires_at"] == note.download_url_expires_at.isoformat().replace("+00:00", "Z")


def test_given_short_lived_signing_credentials_when_a_task_is_announced_then_the_notification_says_they_end_the_link(
    w: World,
) -> None:
    # Given a completed task, and signing credentials that expire in 2 hours (less than the link's day)
    task_id = completed_task(w)
    w.media.credentials_expire_at = w.clock.now + timedelta(hours=2)
    # When it is announced, Then its link's end of life is the credentials' expiry
    assert announce(w.ctx, task_id) == "published"
    (note,) = w.notifier.published
    assert note.download_url_expires_at == w.clock.now + timedelta(hours=2)


def test_given_a_notification_with_a_link_when_it_is_emailed_then_it_says_until_when_it_works_and_where_the_video_stays(
    w: World,
) -> None:
    # Given a completed task, announced at a known moment
    task_id = completed_task(w)
    task = w.tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.COMPLETED and task.output is not None
    # When its notification is built
    note = build_notification(w.ctx, task)
    # Then the email says until when the link works (the minute it ends, in UTC), and that the video stays at its URI
    until = f"{note.download_url_expires_at:%Y-%m-%d %H:%M}"
    assert until == f"{w.clock.now + timedelta(days=1):%Y-%m-%d %H:%M}"
    lines = note.email_text.splitlines()
    at = lines.index(f"Download (this link works until {until} UTC):")
    assert lines[at + 1] == note.download_url
    assert lines[at + 2] == f"After the link has expired, the video stays at {task.output.uri}"


def test_given_an_older_notification_without_the_new_field_when_it_is_read_then_it_still_parses() -> None:
    # Given a notification as subscribers received them before download_url_expires_at existed
    older = {
        "job": "alice",
        "task_id": "t-1",
        "status": "COMPLETED",
        "inputs": {"image": "s3://b/inbox/alice/face.png"},
        "output": "s3://b/outputs/alice/t-1.mp4",
        "download_url": "https://b.s3.amazonaws.com/outputs/alice/t-1.mp4?X-Amz-Expires=86400",
        "provider": "wavespeed",
        "created_at": "2025-06-01T12:00:00Z",
        "completed_at": "2025-06-01T12:05:00Z",
    }
    # When it is read, Then it is valid, with no end of life known, and its email still offers the link
    note = Notification.model_validate(older)
    assert note.download_url_expires_at is None
    assert "Download (the link expires):" in note.email_text


def test_given_a_presigned_url_when_it_is_shown_then_its_signature_is_not() -> None:
    link = PresignedUrl(url="https://b.s3.amazonaws.com/k?X-Amz-Signature=deadbeef", expires_at=T0)
    assert "deadbeef" not in repr(link) and "deadbeef" not in str(link)


# --- admission: links that may die before the provider fetches them ------------------------------------------


class WarningRecorder:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, message: str, *args: Any, extra: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.warnings.append((message, extra or {}))

    def about_links(self) -> list[dict[str, Any]]:
        return [extra for message, extra in self.warnings if "input links may stop working" in message]


@pytest.fixture
def link_warnings(monkeypatch: pytest.MonkeyPatch) -> WarningRecorder:
    """admission's warnings, recorded, with a fresh once-per-invocation memory."""
    recorder = WarningRecorder()
    monkeypatch.setattr(admission.logger, "warning", recorder)
    monkeypatch.setattr(admission, "_LINKS_DIE_EARLY_WARNING", admission._OncePerInvocation())
    return recorder


def test_given_default_settings_when_a_pair_is_sent_then_its_input_links_are_signed_for_the_providers_fetch_window(
    w: World, link_warnings: WarningRecorder
) -> None:
    # Given a queued pair, When the dispatcher sends it
    queue_pairs(w, "alice")
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then both inputs were presigned for the provider's queue and render times and the margin, and nothing warned
    assert [expires for _, expires in w.media.presigned] == [26100, 26100]
    assert link_warnings.about_links() == []


def test_given_short_lived_credentials_when_pairs_are_sent_in_one_invocation_then_one_warning_and_all_are_sent(
    link_warnings: WarningRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given signing credentials that expire in 2 hours, before the provider's 7-hour fetch window ends, and a
    # provider with room for four
    w = make_world(settings={"WAVESPEED_RENDERS_AT_ONCE": "4"})
    w.media.credentials_expire_at = T0 + timedelta(hours=2)
    queue_pairs(w, "ann", "ben", "cat")
    # When one invocation sends all three
    monkeypatch.setattr(admission, "_invocation_id", lambda: "request-1")
    assert run_dispatcher(w) == {"submit-submitted": 3}
    # Then every pair was sent, and one warning said the links may die first, and until when each side lasts
    assert w.provider.submit_count == 3
    (warning,) = link_warnings.about_links()
    assert warning["links_work_until"] == (T0 + timedelta(hours=2)).isoformat()
    assert warning["provider_may_fetch_until"] == (T0 + timedelta(hours=7)).isoformat()
    assert "LINK_SIGNER_SECRET_ID" in warning["hint"]
    # When the next invocation sends another, Then it warns again, once
    queue_pairs(w, "dan")
    monkeypatch.setattr(admission, "_invocation_id", lambda: "request-2")
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert w.provider.submit_count == 4
    assert len(link_warnings.about_links()) == 2


def test_given_a_fetch_window_longer_than_a_week_when_a_pair_is_sent_then_it_warns_that_sigv4_cannot_cover_it(
    link_warnings: WarningRecorder,
) -> None:
    # Given a 10-day provider queue: no SigV4 link lives that long
    w = make_world(settings={"MAX_PROVIDER_QUEUE_SECONDS": str(10 * 86400)})
    queue_pairs(w, "alice")
    # When the pair is sent
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then its links were signed for 7 days, and a warning says the provider may fetch later than that
    assert [expires for _, expires in w.media.presigned] == [604800, 604800]
    (warning,) = link_warnings.about_links()
    assert warning["links_work_until"] == (T0 + timedelta(days=7)).isoformat()


def test_given_the_handlers_logger_keys_when_the_invocation_is_asked_then_it_is_the_lambda_request_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the keys inject_lambda_context gives the handler's Logger (which the layer's child Logger shares)
    keys = {"function_request_id": "c0ffee00-0000-4000-8000-000000000001", "function_name": "dispatch"}
    monkeypatch.setattr(admission.logger, "get_current_keys", lambda: keys)
    # Then the layer sees that invocation, and only the first question in it is the first
    assert admission._invocation_id() == "c0ffee00-0000-4000-8000-000000000001"
    once = admission._OncePerInvocation()
    assert [once.first(), once.first()] == [True, False]
    # and a new invocation is a first again
    keys["function_request_id"] = "c0ffee00-0000-4000-8000-000000000002"
    assert once.first()


def test_given_no_handlers_logger_when_the_invocation_is_asked_then_none_is_known_and_every_time_is_a_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a layer logger with no handler's Logger above it (a script, a unit test)
    from aws_lambda_powertools.logging.exceptions import OrphanedChildLoggerError

    def orphaned() -> dict[str, Any]:
        raise OrphanedChildLoggerError("no parent")

    monkeypatch.setattr(admission.logger, "get_current_keys", orphaned)
    # Then no invocation is known, and every warning is given
    assert admission._invocation_id() is None
    once = admission._OncePerInvocation()
    assert [once.first(), once.first()] == [True, True]
