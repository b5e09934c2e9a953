"""A third provider, added by the recipe in docs/architecture.md alone: a spec (models, prices, limits, settings,
how its adapter is built) and its registration. Nothing else in the pipeline is told about it, yet a job runs
through it from upload to notification on the in-memory fakes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from pydantic import ConfigDict
from support.corpus import mp3
from support.fakes import (
    BUCKET,
    ScriptedProvider,
    World,
    callback_query,
    make_world,
    run_dispatcher,
    sample_audio,
    upload,
)

from avatar_pipeline.config import Settings
from avatar_pipeline.domain.errors import ProviderTransientError
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, TaskStatus
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.spec import (
    BillingRule,
    InputLimits,
    ModelSpec,
    ProviderSettings,
    ProviderSpec,
    SecretField,
    catalog,
    env_prefixed,
)
from avatar_pipeline.services.finishing import announce, finalize_output
from avatar_pipeline.services.intake import handle_upload
from avatar_pipeline.services.tracking import receive_callback
from avatar_pipeline.wiring import SecretBackedProviders

MIB = 1024 * 1024
OUTPUT_URL = "https://videos.acme.test/out/1.mp4"
VIDEO = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64


# --- the recipe: step 1, the provider's settings -------------------------------------------------------------
class AcmeSettings(ProviderSettings):
    model_config = ConfigDict(alias_generator=env_prefixed("ACME_"))

    base_url: str = "https://api.acme.test"


# --- step 2, how its adapter is built from them (here a scripted one; a real one would be `adapter.py`) ---------
BUILT: list[tuple[AcmeSettings, str]] = []


def build(settings: AcmeSettings, secret: SecretField, http: httpx.Client) -> ScriptedProvider | None:
    api_key = secret(settings.secret_id, "api_key")
    if not api_key:
        return None
    BUILT.append((settings, api_key))
    return ScriptedProvider("acme")


# --- step 3, the spec: its model, price per billing step, limits, retention, output hosts -----------------------
ACME = ProviderSpec(
    name="acme",
    display_name="Acme Video",
    models=catalog(
        ModelSpec(
            name="acme-head-v1",
            model_id="acme/talking-head-v1",
            title="Acme Talking Head v1",
            limits=InputLimits(max_image_bytes=4 * MIB, max_audio_bytes=2 * MIB, max_audio_seconds=30.0),
            price_per_step=Decimal("0.10"),
            billing=BillingRule(step_seconds=2),
            render_seconds_per_second=5.0,
        )
    ),
    settings=AcmeSettings,
    output_retention=timedelta(days=3),
    output_hosts=("*.acme.test",),
    build=build,
)


# --- step 4, its registration (a line in providers/registry.py; for the test's duration here) -------------------
@pytest.fixture
def acme() -> Iterator[ProviderSpec]:
    with PROVIDERS.registered(ACME) as spec:
        yield spec


ENV = {"ALLOWED_PROVIDERS": "wavespeed,cometapi,acme", "ACME_SECRET_ID": "acme-secret"}


@pytest.fixture
def w(acme: ProviderSpec) -> World:
    wavespeed = ScriptedProvider()
    return make_world(
        settings=ENV, provider=wavespeed, providers={"wavespeed": wavespeed, "acme": ScriptedProvider("acme")}
    )


def acme_provider(w: World) -> ScriptedProvider:
    provider = w.ctx.providers["acme"]
    assert isinstance(provider, ScriptedProvider)
    return provider


def deliver(w: World, job: str, audio: bytes | None = None) -> str:
    """A folder job whose job.json chooses Acme; returns its task id."""
    w.media.put_object(BUCKET, f"inbox/{job}/job.json", json.dumps({"provider": "acme", "model": "acme-head-v1"}))
    if audio is not None:
        w.media.put_object(BUCKET, f"inbox/{job}/voice.mp3", audio)
    handle_upload(w.ctx, upload(f"inbox/{job}/face.png", etag="img", size=200_000))
    outcome = handle_upload(w.ctx, upload(f"inbox/{job}/voice.mp3", etag="aud", size=len(audio or sample_audio())))
    assert outcome.task_id is not None
    return outcome.task_id


def test_a_job_runs_through_a_registered_third_provider_from_upload_to_notification(w: World) -> None:
    acme = acme_provider(w)
    # Given a job whose job.json chooses Acme (its 3 s voice clip: two 2-second billing steps at $0.10)
    task_id = deliver(w, "zoe")
    task = w.tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.QUEUED
    assert (task.provider, task.estimated_cost_usd) == ("acme", "0.20")
    assert w.tasks.line("acme") == [task_id]
    # When the dispatcher moves the lines
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then Acme got it, for its model, with a callback URL for its route carrying the task's token
    (request,) = acme.submissions
    assert request.model_id == "acme/talking-head-v1"
    token = callback_query("acme", task_id)["token"]
    assert request.webhook_url == f"https://hooks.example.test/v1/webhooks/acme?task_id={task_id}&token={token}"
    # When Acme's callback says the video is ready
    acme.script_callback(
        ProviderJob(provider_task_id="ws-1", status=ProviderJobStatus.SUCCEEDED, output_url=OUTPUT_URL)
    )
    outcome = receive_callback(w.ctx, "acme", task_id, {}, b"{}", callback_query("acme", task_id))
    assert outcome == "recorded"
    # Then the copy is retried until Acme's own retention runs out
    ready = w.tasks.get(task_id)
    assert ready is not None and ready.status is TaskStatus.OUTPUT_READY
    assert ready.output_expires_at == w.clock.now + timedelta(days=3)
    # When finalize copies the video and the task is announced
    w.media.script_download(OUTPUT_URL, VIDEO)
    assert finalize_output(w.ctx, task_id, timedelta(minutes=5)) == "completed"
    assert announce(w.ctx, task_id) == "published"
    # Then the notification names Acme and the estimated cost
    (note,) = w.notifier.published
    assert (note.status, note.provider, note.estimated_cost_usd) == (TaskStatus.COMPLETED, "acme", "0.20")
    assert note.output == f"s3://{BUCKET}/outputs/zoe/{task_id}.mp4"


def test_a_clip_over_the_third_providers_limit_is_rejected_before_anything_is_paid(w: World) -> None:
    # Given a 31 s clip, over Acme's 30 s (WaveSpeed takes 300 s)
    task_id = deliver(w, "long", audio=mp3(31.0, rate=8000, bitrate="8k"))
    # Then the pair is rejected naming the limit, and nothing was sent
    task = w.tasks.get(task_id)
    assert task is not None and task.status is TaskStatus.REJECTED
    assert task.reason is not None and "the limit is 30 s" in task.reason
    assert acme_provider(w).submit_count == 0


def test_the_third_providers_settings_and_adapter_come_from_its_own_variables(acme: ProviderSpec) -> None:
    # Given a function's environment with Acme's variables (under its prefix)
    env = {"TASK_TABLE_NAME": "t", "MEDIA_BUCKET": "b", "TOPIC_ARN": "arn:t", **ENV, "ACME_RENDERS_AT_ONCE": "7"}
    settings = Settings.from_env(env)
    # Then its settings are read by its own model, its quota from them, its hosts among the allowed ones
    acme_settings = settings.provider("acme")
    assert isinstance(acme_settings, AcmeSettings)
    assert (acme_settings.secret_id, acme_settings.base_url) == ("acme-secret", "https://api.acme.test")
    assert settings.quota_limits("acme").renders_at_once == 7
    assert "*.acme.test" in settings.allowed_output_hosts
    # When the wiring asks for its adapter, with the secret holding a key
    BUILT.clear()
    providers = SecretBackedProviders(settings, FakeSecrets({"acme-secret": {"api_key": "k-acme"}}), httpx.Client())
    # Then it is the one provider this function holds a secret for, and its spec built it from those settings and
    # that key
    assert list(providers) == ["acme"]
    adapter = providers["acme"]
    assert isinstance(adapter, ScriptedProvider) and adapter.name == "acme"
    assert [(acme_settings, "k-acme")] == BUILT


class FakeSecrets:
    """Powertools' SecretsProvider, as far as the wiring uses it."""

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self._secrets = secrets

    def get(self, name: str, **_: Any) -> dict[str, str]:
        return self._secrets[name]


def test_a_turned_away_task_fails_over_only_to_a_provider_that_takes_its_files(acme: ProviderSpec) -> None:
    # Given four providers, in the order WaveSpeed, CometAPI (clips of at most 60 s), fal (no Kling v1), Acme (here
    # running Kling v1 standard too, up to 300 s)
    long_clips = dataclasses.replace(
        ACME.models["acme-head-v1"], name="kling-v1-std", limits=InputLimits(4 * MIB, 2 * MIB, max_audio_seconds=300.0)
    )
    with PROVIDERS.registered(dataclasses.replace(ACME, models=catalog(long_clips)), replacing=True):
        wavespeed, comet, acme_provider = (
            ScriptedProvider(),
            ScriptedProvider("cometapi", "query"),
            ScriptedProvider("acme"),
        )
        providers = {"wavespeed": wavespeed, "cometapi": comet, "acme": acme_provider}
        w = make_world(settings=ENV | {"COMETAPI_SECRET_ID": "c"}, provider=wavespeed, providers=providers)
        # When a 90 s clip for WaveSpeed, whose job allows failover, is checked
        w.media.put_object(BUCKET, "inbox/ida/job.json", json.dumps({"failover": True}))
        clip = mp3(90.0, rate=8000, bitrate="8k")
        w.media.put_object(BUCKET, "inbox/ida/voice.mp3", clip)
        handle_upload(w.ctx, upload("inbox/ida/face.png", etag="img", size=200_000))
        task_id = handle_upload(w.ctx, upload("inbox/ida/voice.mp3", etag="aud", size=len(clip))).task_id
        # Then only Acme is a failover target: CometAPI would refuse a 90 s clip
        task = w.tasks.get(task_id or "")
        assert task is not None and task.failover_targets == ("acme",)
        # When WaveSpeed turns it away, and the lines move again
        wavespeed.script_submit(ProviderTransientError("HTTP 429", code="429"))
        run_dispatcher(w)
        run_dispatcher(w)
        # Then Acme was sent it, and CometAPI never
        assert (wavespeed.submit_count, comet.submit_count, acme_provider.submit_count) == (1, 0, 1)
        moved = w.tasks.get(task_id or "")
        assert moved is not None and (moved.provider, moved.failed_over_from) == ("acme", "wavespeed")


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (
            {"provider": "acme", "model": "omnihuman-1.5"},
            "Acme Video does not offer the model omnihuman-1.5 (its models: acme-head-v1)",
        ),
        (
            {"provider": "acme", "mode": "pro"},
            "job.json's mode 'pro' means kling-v1-pro: Acme Video does not offer the model kling-v1-pro"
            " (its models: acme-head-v1)",
        ),
        (
            {"provider": "acme"},
            "the default model (DefaultModel) is kling-v1-std: Acme Video does not offer the model kling-v1-std"
            " (its models: acme-head-v1)",
        ),
    ],
    ids=["asked", "by-mode", "default"],
)
def test_a_model_the_chosen_provider_does_not_offer_is_rejected_saying_where_the_model_came_from(
    acme: ProviderSpec, options: dict[str, str], reason: str
) -> None:
    # Given Acme offers one model of its own
    wavespeed = ScriptedProvider()
    w = make_world(settings=ENV, provider=wavespeed, providers={"wavespeed": wavespeed})
    # When a job asks for Acme with a model it does not offer
    w.media.put_object(BUCKET, "inbox/kim/job.json", json.dumps(options))
    handle_upload(w.ctx, upload("inbox/kim/face.png", etag="img", size=200_000))
    task_id = handle_upload(w.ctx, upload("inbox/kim/voice.mp3", etag="aud", size=50_000)).task_id
    # Then the pair is rejected, unpaid, saying which model and where it came from
    task = w.tasks.get(task_id or "")
    assert task is not None and (task.status, task.reason) == (TaskStatus.REJECTED, reason)


def test_a_default_model_the_default_provider_does_not_offer_is_a_configuration_error(acme: ProviderSpec) -> None:
    env = {"TASK_TABLE_NAME": "t", "MEDIA_BUCKET": "b", "TOPIC_ARN": "arn:t", **ENV}
    with pytest.raises(
        ValueError,
        match=r"DEFAULT_MODEL \(kling-v1-std\) must be a model DEFAULT_PROVIDER \(acme\) offers \(acme-head-v1\)",
    ):
        Settings.from_env({**env, "DEFAULT_PROVIDER": "acme"})
