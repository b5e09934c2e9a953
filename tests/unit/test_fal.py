"""FalProvider: requests it sends, how answers and failures map, retries, and webhook signatures (Ed25519, JWKS)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from avatar_pipeline.adapters.http_retry import RetryPolicy, TransientHttpError
from avatar_pipeline.domain.errors import (
    ProviderConfigError,
    ProviderError,
    ProviderInputError,
    ProviderOutcomeUnknownError,
    ProviderTransientError,
    WebhookAuthError,
    WebhookPayloadError,
)
from avatar_pipeline.domain.models import ProviderJobStatus, SubmissionRequest
from avatar_pipeline.ports import VideoProvider
from avatar_pipeline.providers.fal.adapter import DEFAULT_PROMPT, FalProvider, app_of
from avatar_pipeline.providers.fal.webhooks import JwksCache, parse_jwks

BASE_URL = "https://queue.fal.test"
JWKS_URL = "https://rest.fal.test/.well-known/jwks.json"
API_KEY = "fal-test-key-0123456789abcdef-do-not-log"
USER_ID = "github|123456"
KLING_STD = "fal-ai/kling-video/ai-avatar/v2/standard"
KLING_PRO = "fal-ai/kling-video/ai-avatar/v2/pro"
INFINITALK = "fal-ai/infinitalk"
REQUEST_ID = "024ca5b1-45d3-4afd-883e-ad3abe2a1c4d"
KLING_STATUS = f"{BASE_URL}/fal-ai/kling-video/requests/{REQUEST_ID}/status"
KLING_RESULT = f"{BASE_URL}/fal-ai/kling-video/requests/{REQUEST_ID}"
INFINITALK_STATUS = f"{BASE_URL}/fal-ai/infinitalk/requests/{REQUEST_ID}/status"
INFINITALK_RESULT = f"{BASE_URL}/fal-ai/infinitalk/requests/{REQUEST_ID}"
OUTPUT_URL = "https://v3.fal.media/files/lion/O853qAknYZGU8_2QCbJwd.mp4"
SIGNED_INPUT = "https://bucket.s3.amazonaws.com/in/face.png?X-Amz-Signature=abcdef0123456789"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- helpers


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class FakeClock:
    """Monotonic seconds for the JWKS cache, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jwk(key: Ed25519PrivateKey, **fields: Any) -> dict[str, Any]:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), **fields}


def jwks(*keys: Ed25519PrivateKey) -> dict[str, Any]:
    return {"keys": [jwk(key, kid=f"k{i}") for i, key in enumerate(keys)]}


def sign(
    body: bytes,
    key: Ed25519PrivateKey,
    *,
    request_id: str = REQUEST_ID,
    user_id: str = USER_ID,
    timestamp: int | str | None = None,
) -> dict[str, str]:
    """Headers fal would send for `body`: Ed25519 over the ids, the timestamp and the body's SHA-256 hex."""
    ts = str(int(NOW.timestamp()) if timestamp is None else timestamp)
    message = "\n".join([request_id, user_id, ts, hashlib.sha256(body).hexdigest()]).encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": ts,
        "X-Fal-Webhook-Signature": key.sign(message).hex(),
    }


def webhook_body(status: str = "OK", **fields: Any) -> bytes:
    defaults: dict[str, Any] = {"payload": {"video": {"url": OUTPUT_URL}, "duration": 5.04}} if status == "OK" else {}
    document = {"request_id": REQUEST_ID, "gateway_request_id": REQUEST_ID, "status": status, **defaults, **fields}
    # fal's own layout (spaces after separators): only the raw bytes are signed, never a re-serialisation.
    return json.dumps(document).encode()


def submission(
    model_id: str = KLING_STD, prompt: str | None = "A calm presenter", **options: str | int | bool
) -> SubmissionRequest:
    return SubmissionRequest(
        task_id="task-1",
        image_url=SIGNED_INPUT,
        audio_url="https://bucket.s3.amazonaws.com/in/voice.mp3?X-Amz-Signature=fedcba9876543210",
        prompt=prompt,
        mode="std",
        model_id=model_id,
        webhook_url="https://hooks.example.com/webhooks/fal?task_id=task-1&token=tok-0123456789",
        options=options,
    )


def queued_answer() -> dict[str, Any]:
    return {
        "status": "IN_QUEUE",
        "request_id": REQUEST_ID,
        "response_url": KLING_RESULT,
        "status_url": KLING_STATUS,
        "cancel_url": f"{KLING_RESULT}/cancel",
        "queue_position": 0,
    }


def sent_json(route: respx.Route, call: int = -1) -> Any:
    return json.loads(route.calls[call].request.content)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> JwksCache:
    return JwksCache(clock=clock)


@pytest.fixture
def fal_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def jwks_route(router: respx.MockRouter, fal_key: Ed25519PrivateKey) -> respx.Route:
    return router.get(JWKS_URL).respond(200, json=jwks(fal_key))


def make_provider(
    sleep: FakeSleep,
    cache: JwksCache,
    *,
    model_ids: tuple[str, ...] = (KLING_STD, KLING_PRO),
    api_key: str = API_KEY,
    user_id: str = "",
) -> FalProvider:
    return FalProvider(
        api_key,
        model_ids,
        base_url=BASE_URL,
        jwks_url=JWKS_URL,
        user_id=user_id,
        retry=RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=8.0, sleep=sleep, random=lambda: 1.0),
        jwks_cache=cache,
    )


@pytest.fixture
def provider(sleep: FakeSleep, cache: JwksCache) -> Iterator[FalProvider]:
    adapter = make_provider(sleep, cache)
    yield adapter
    adapter.close()


# ---------------------------------------------------------------------------------------------- submit


def test_submit_posts_the_model_input_to_the_model_path_with_the_webhook_and_key(
    router: respx.MockRouter, provider: FalProvider
) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").respond(200, json=queued_answer())

    job = provider.submit(submission(resolution="720p", turbo_mode=True, num_frames=145))

    assert job.status is ProviderJobStatus.QUEUED
    assert job.provider_task_id == REQUEST_ID
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Key {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert (
        request.url.params["fal_webhook"]
        == "https://hooks.example.com/webhooks/fal?task_id=task-1&token=tok-0123456789"
    )
    assert sent_json(route) == {
        "image_url": SIGNED_INPUT,
        "audio_url": "https://bucket.s3.amazonaws.com/in/voice.mp3?X-Amz-Signature=fedcba9876543210",
        "prompt": "A calm presenter",
        "resolution": "720p",
        "turbo_mode": True,
        "num_frames": 145,
    }


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_submit_without_a_prompt_sends_the_neutral_default(
    router: respx.MockRouter, provider: FalProvider, prompt: str | None
) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").respond(200, json=queued_answer())

    provider.submit(submission(prompt=prompt))

    assert sent_json(route)["prompt"] == DEFAULT_PROMPT


def test_submission_options_default_to_none_and_keep_their_types() -> None:
    plain = submission()
    assert plain.options == {}
    typed = submission(turbo_mode=True, num_frames=145, resolution="720p")
    assert typed.options == {"turbo_mode": True, "num_frames": 145, "resolution": "720p"}
    assert type(typed.options["turbo_mode"]) is bool


@pytest.mark.parametrize("reserved", ["image_url", "audio_url", "prompt"])
def test_an_option_replacing_the_request_input_is_refused_before_sending(
    router: respx.MockRouter, provider: FalProvider, reserved: str
) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").respond(200, json=queued_answer())

    with pytest.raises(ProviderInputError, match=reserved):
        provider.submit(submission().model_copy(update={"options": {reserved: "https://elsewhere.test/x"}}))
    assert route.call_count == 0


@pytest.mark.parametrize("model_id", [INFINITALK, "fal-ai/kling-video/ai-avatar/v3/standard", "kling"])
def test_submit_to_a_model_outside_the_adapters_models_is_refused_before_sending(
    router: respx.MockRouter, provider: FalProvider, model_id: str
) -> None:
    route = router.post(url__startswith=BASE_URL).respond(200, json=queued_answer())

    with pytest.raises(ProviderConfigError, match="could not be fetched"):
        provider.submit(submission(model_id=model_id))
    assert route.call_count == 0


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code"),
    [
        (401, {"detail": "Unauthorized"}, {}, ProviderConfigError, "401"),
        (403, {"detail": "User is locked. Reason: Exhausted balance."}, {}, ProviderConfigError, "403"),
        (404, {"detail": "Application 'kling-video' not found"}, {}, ProviderConfigError, "404"),
        (400, {"detail": "Bad request"}, {}, ProviderInputError, "400"),
        (
            422,
            {"detail": [{"loc": ["body", "image_url"], "msg": "unsupported image", "type": "image_load_error"}]},
            {"X-Fal-Retryable": "false"},
            ProviderInputError,
            "image_load_error",
        ),
        (500, {"detail": "Internal Server Error"}, {}, ProviderOutcomeUnknownError, "500"),
        (502, "<html>nginx</html>", {}, ProviderOutcomeUnknownError, "502"),
        (504, {"detail": "timeout"}, {}, ProviderOutcomeUnknownError, "504"),
        (
            503,
            {"detail": "Service unavailable", "error_type": "runner_scheduling_failure"},
            {"X-Fal-Request-Id": REQUEST_ID, "X-Fal-Error-Type": "runner_scheduling_failure"},
            ProviderOutcomeUnknownError,
            "runner_scheduling_failure",
        ),
    ],
)
def test_submit_error_answers_map_to_one_error_and_are_sent_once(
    router: respx.MockRouter,
    provider: FalProvider,
    status: int,
    body: Any,
    headers: dict[str, str],
    error: type[ProviderError],
    code: str,
) -> None:
    answer = {"text": body} if isinstance(body, str) else {"json": body}
    route = router.post(f"{BASE_URL}/{KLING_STD}").respond(status, headers=headers, **answer)

    with pytest.raises(error) as raised:
        provider.submit(submission())

    assert type(raised.value) is error
    assert raised.value.code == code
    assert route.call_count == 1


def test_submit_503_before_fal_named_the_request_is_transient_and_retried(
    router: respx.MockRouter, provider: FalProvider, sleep: FakeSleep
) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").mock(
        side_effect=[httpx.Response(503, text="<html>503 nginx</html>"), httpx.Response(200, json=queued_answer())]
    )

    job = provider.submit(submission())

    assert job.provider_task_id == REQUEST_ID
    assert route.call_count == 2
    assert len(sleep.calls) == 1


def test_submit_429_is_a_rate_limit_raised_at_once(router: respx.MockRouter, provider: FalProvider) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").respond(
        429, json={"detail": "slow down"}, headers={"Retry-After": "7"}
    )

    with pytest.raises(TransientHttpError) as raised:
        provider.submit(submission())

    assert raised.value.is_rate_limit
    assert raised.value.retry_after == 7.0
    assert route.call_count == 1


def test_submit_read_timeout_is_outcome_unknown_and_never_resent(
    router: respx.MockRouter, provider: FalProvider
) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").mock(side_effect=httpx.ReadTimeout("read timed out"))

    with pytest.raises(ProviderOutcomeUnknownError):
        provider.submit(submission())
    assert route.call_count == 1


def test_submit_connect_error_is_retried_because_nothing_was_sent(
    router: respx.MockRouter, provider: FalProvider
) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=queued_answer())]
    )

    assert provider.submit(submission()).provider_task_id == REQUEST_ID
    assert route.call_count == 2


@pytest.mark.parametrize("answer", [{"text": "<html>OK</html>"}, {"json": {"status": "IN_QUEUE"}}])
def test_submit_unreadable_success_is_outcome_unknown(
    router: respx.MockRouter, provider: FalProvider, answer: dict[str, Any]
) -> None:
    route = router.post(f"{BASE_URL}/{KLING_STD}").respond(200, **answer)

    with pytest.raises(ProviderOutcomeUnknownError, match="may be queued"):
        provider.submit(submission())
    assert route.call_count == 1


def test_a_422_echoing_our_signed_inputs_and_key_is_quoted_without_them(
    router: respx.MockRouter, provider: FalProvider
) -> None:
    detail = [
        {
            "loc": ["body", "image_url"],
            "msg": f"could not load {SIGNED_INPUT} with key {API_KEY}",
            "type": "file_download_error",
            "input": SIGNED_INPUT,
        }
    ]
    router.post(f"{BASE_URL}/{KLING_STD}").respond(422, json={"detail": detail})

    with pytest.raises(ProviderInputError) as raised:
        provider.submit(submission())

    message = str(raised.value)
    assert "body.image_url: could not load https://bucket.s3.amazonaws.com/in/face.png" in message
    assert "abcdef0123456789" not in message
    assert API_KEY not in message
    assert raised.value.code == "file_download_error"


def test_a_status_url_other_than_the_one_fetch_builds_is_logged(
    router: respx.MockRouter, provider: FalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    answer = {**queued_answer(), "status_url": f"{BASE_URL}/fal-ai/elsewhere/requests/{REQUEST_ID}/status"}
    router.post(f"{BASE_URL}/{KLING_STD}").respond(200, json=answer)

    with caplog.at_level(logging.WARNING):
        provider.submit(submission())

    assert "status URL differs" in caplog.text


def test_a_status_url_as_fetch_builds_it_is_not_logged(
    router: respx.MockRouter, provider: FalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    router.post(f"{BASE_URL}/{KLING_STD}").respond(200, json=queued_answer())

    with caplog.at_level(logging.WARNING):
        provider.submit(submission())

    assert "status URL differs" not in caplog.text


# ---------------------------------------------------------------------------------------------- fetch


@pytest.mark.parametrize(
    ("fal_status", "expected"),
    [("IN_QUEUE", ProviderJobStatus.QUEUED), ("IN_PROGRESS", ProviderJobStatus.PROCESSING)],
)
def test_fetch_maps_the_statuses_in_flight(
    router: respx.MockRouter, provider: FalProvider, fal_status: str, expected: ProviderJobStatus
) -> None:
    status = router.get(KLING_STATUS).respond(202, json={"status": fal_status, "queue_position": 3})
    result = router.get(KLING_RESULT).respond(200, json={"video": {"url": OUTPUT_URL}})

    job = provider.fetch(REQUEST_ID)

    assert job.status is expected
    assert job.provider_task_id == REQUEST_ID
    assert status.calls.last.request.headers["authorization"] == f"Key {API_KEY}"
    assert result.call_count == 0


def test_fetch_completed_reads_the_result_for_the_video(router: respx.MockRouter, provider: FalProvider) -> None:
    router.get(KLING_STATUS).respond(200, json={"status": "COMPLETED", "metrics": {"inference_time": 80.2}})
    result = router.get(KLING_RESULT).respond(200, json={"video": {"url": OUTPUT_URL}, "duration": 5.04})

    job = provider.fetch(REQUEST_ID)

    assert job.status is ProviderJobStatus.SUCCEEDED
    assert job.output_url == OUTPUT_URL
    assert result.calls.last.request.headers["authorization"] == f"Key {API_KEY}"


def test_fetch_completed_with_an_error_is_failed_without_reading_the_result(
    router: respx.MockRouter, provider: FalProvider
) -> None:
    router.get(KLING_STATUS).respond(
        200,
        json={
            "status": "COMPLETED",
            "error": f"Runner disconnected while fetching {SIGNED_INPUT}",
            "error_type": "runner_disconnected",
        },
    )
    result = router.get(KLING_RESULT).respond(200, json={"video": {"url": OUTPUT_URL}})

    job = provider.fetch(REQUEST_ID)

    assert job.status is ProviderJobStatus.FAILED
    assert job.error_code == "runner_disconnected"
    assert job.error_message is not None
    assert "Runner disconnected" in job.error_message
    assert "abcdef0123456789" not in job.error_message
    assert result.call_count == 0


def test_fetch_completed_without_a_video_is_failed(router: respx.MockRouter, provider: FalProvider) -> None:
    router.get(KLING_STATUS).respond(200, json={"status": "COMPLETED"})
    router.get(KLING_RESULT).respond(200, json={"duration": 5.0})

    job = provider.fetch(REQUEST_ID)

    assert job.status is ProviderJobStatus.FAILED
    assert job.error_message == "fal reported the request completed but gave no video URL"


def test_a_result_gone_after_completion_is_a_clear_error_not_a_missing_request(
    router: respx.MockRouter, provider: FalProvider
) -> None:
    router.get(KLING_STATUS).respond(200, json={"status": "COMPLETED"})
    result = router.get(KLING_RESULT).respond(404, json={"detail": "Request not found"})

    with pytest.raises(ProviderError) as raised:
        provider.fetch(REQUEST_ID)

    assert type(raised.value) is ProviderError  # neither "no such request" (input) nor worth an in-call retry
    assert raised.value.code == "result_expired"
    assert "no longer kept" in str(raised.value)
    assert result.call_count == 1


def test_a_result_that_is_the_models_refusal_is_a_failed_job(router: respx.MockRouter, provider: FalProvider) -> None:
    router.get(KLING_STATUS).respond(200, json={"status": "COMPLETED"})
    detail = [{"loc": ["body"], "msg": "content flagged", "type": "content_policy_violation"}]
    router.get(KLING_RESULT).respond(422, json={"detail": detail})

    job = provider.fetch(REQUEST_ID)

    assert job.status is ProviderJobStatus.FAILED
    assert job.error_code == "content_policy_violation"
    assert job.error_message == "body: content flagged"


def test_fetch_of_a_request_fal_does_not_know_is_an_input_error(
    router: respx.MockRouter, provider: FalProvider
) -> None:
    route = router.get(KLING_STATUS).respond(404, json={"detail": "Request not found"})

    with pytest.raises(ProviderInputError) as raised:
        provider.fetch(REQUEST_ID)

    assert raised.value.code == "404"
    assert route.call_count == 1


def test_fetch_asks_each_app_in_turn_and_reads_the_result_where_it_was_found(
    router: respx.MockRouter, sleep: FakeSleep, cache: JwksCache
) -> None:
    provider = make_provider(sleep, cache, model_ids=(KLING_STD, INFINITALK, KLING_PRO))
    kling = router.get(KLING_STATUS).respond(404, json={"detail": "Request not found"})
    infinitalk = router.get(INFINITALK_STATUS).respond(200, json={"status": "COMPLETED"})
    router.get(INFINITALK_RESULT).respond(200, json={"video": {"url": OUTPUT_URL}, "seed": 42})

    job = provider.fetch(REQUEST_ID)

    assert job.output_url == OUTPUT_URL
    assert (kling.call_count, infinitalk.call_count) == (1, 1)  # each app once: the two Kling models share one


def test_fetch_under_several_apps_none_knowing_it_is_an_input_error(
    router: respx.MockRouter, sleep: FakeSleep, cache: JwksCache
) -> None:
    provider = make_provider(sleep, cache, model_ids=(KLING_STD, INFINITALK))
    router.get(KLING_STATUS).respond(404, json={"detail": "Request not found"})
    router.get(INFINITALK_STATUS).respond(404, json={"detail": "Request not found"})

    with pytest.raises(ProviderInputError, match="fal-ai/kling-video, fal-ai/infinitalk"):
        provider.fetch(REQUEST_ID)


def test_fetch_without_models_is_a_config_error(router: respx.MockRouter, sleep: FakeSleep, cache: JwksCache) -> None:
    with pytest.raises(ProviderConfigError, match="no model"):
        make_provider(sleep, cache, model_ids=()).fetch(REQUEST_ID)


def test_fetch_infrastructure_5xx_is_transient_with_its_error_type_and_retried(
    router: respx.MockRouter, provider: FalProvider, sleep: FakeSleep
) -> None:
    route = router.get(KLING_STATUS).respond(
        503,
        json={"detail": "No runner available", "error_type": "runner_scheduling_failure"},
        headers={"X-Fal-Error-Type": "runner_scheduling_failure", "X-Fal-Request-Id": REQUEST_ID},
    )

    with pytest.raises(ProviderTransientError) as raised:
        provider.fetch(REQUEST_ID)

    assert raised.value.code == "runner_scheduling_failure"
    assert route.call_count == 3
    assert len(sleep.calls) == 2


def test_fetch_error_type_header_alone_is_the_code(router: respx.MockRouter, provider: FalProvider) -> None:
    router.get(KLING_STATUS).respond(504, text="gateway timeout", headers={"X-Fal-Error-Type": "request_timeout"})

    with pytest.raises(ProviderTransientError) as raised:
        provider.fetch(REQUEST_ID)

    assert raised.value.code == "request_timeout"


def test_fetch_read_timeout_is_retried(router: respx.MockRouter, provider: FalProvider) -> None:
    route = router.get(KLING_STATUS).mock(
        side_effect=[httpx.ReadTimeout("slow"), httpx.Response(202, json={"status": "IN_QUEUE"})]
    )

    assert provider.fetch(REQUEST_ID).status is ProviderJobStatus.QUEUED
    assert route.call_count == 2


@pytest.mark.parametrize("status", [401, 403])
def test_fetch_auth_failure_is_a_config_error(router: respx.MockRouter, provider: FalProvider, status: int) -> None:
    router.get(KLING_STATUS).respond(status, json={"detail": "Unauthorized"})

    with pytest.raises(ProviderConfigError):
        provider.fetch(REQUEST_ID)


@pytest.mark.parametrize("answer", [{"json": {"status": "CANCELLED"}}, {"text": "not json"}, {"json": {"x": 1}}])
def test_fetch_unreadable_or_unknown_status_is_a_provider_error(
    router: respx.MockRouter, provider: FalProvider, answer: dict[str, Any]
) -> None:
    route = router.get(KLING_STATUS).respond(200, **answer)

    with pytest.raises(ProviderError) as raised:
        provider.fetch(REQUEST_ID)

    assert type(raised.value) is ProviderError
    assert route.call_count == 1


def test_errors_and_logs_never_contain_the_api_key(
    router: respx.MockRouter, provider: FalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    router.get(KLING_STATUS).respond(500, json={"detail": f"bad key {API_KEY}"})

    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderTransientError) as raised:
        provider.fetch(REQUEST_ID)

    assert API_KEY not in str(raised.value)
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(provider)


@pytest.mark.parametrize(
    ("model_id", "app"),
    [
        (KLING_STD, "fal-ai/kling-video"),
        ("fal-ai/bytedance/omnihuman/v1.5", "fal-ai/bytedance"),
        (INFINITALK, "fal-ai/infinitalk"),
        ("workflows/someone/avatar-flow/run", "workflows/someone/avatar-flow"),
    ],
)
def test_app_of_keeps_owner_and_app_as_fals_client_does(model_id: str, app: str) -> None:
    assert app_of(model_id) == app


@pytest.mark.parametrize("model_id", ["infinitalk", "", "workflows/someone"])
def test_app_of_refuses_an_id_without_owner_and_app(model_id: str) -> None:
    with pytest.raises(ValueError, match="not a fal model id"):
        app_of(model_id)


# ---------------------------------------------------------------------------------------------- webhooks


def test_a_validly_signed_callback_is_accepted_and_the_keys_are_cached(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body()

    first = provider.parse_callback(sign(body, fal_key), body, NOW)
    second = provider.parse_callback(sign(body, fal_key), body, NOW)

    assert first.status is ProviderJobStatus.SUCCEEDED
    assert first.provider_task_id == REQUEST_ID
    assert first.output_url == OUTPUT_URL
    assert second == first
    assert jwks_route.call_count == 1
    assert "authorization" not in jwks_route.calls.last.request.headers  # the keys are public: our key stays home


def test_the_cache_is_shared_by_adapters_built_one_after_another(
    sleep: FakeSleep, cache: JwksCache, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body()
    for _ in range(3):  # wiring builds an adapter per call
        make_provider(sleep, cache).parse_callback(sign(body, fal_key), body, NOW)

    assert jwks_route.call_count == 1


def test_header_names_are_case_insensitive(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body()
    headers = {name.lower(): value for name, value in sign(body, fal_key).items()}

    assert provider.parse_callback(headers, body, NOW).status is ProviderJobStatus.SUCCEEDED


def test_a_callback_signed_by_another_key_is_refused(provider: FalProvider, jwks_route: respx.Route) -> None:
    body = webhook_body()

    with pytest.raises(WebhookAuthError, match="does not match"):
        provider.parse_callback(sign(body, Ed25519PrivateKey.generate()), body, NOW)


def test_a_body_changed_by_one_byte_is_refused(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body()
    headers = sign(body, fal_key)

    with pytest.raises(WebhookAuthError):
        provider.parse_callback(headers, body.replace(b"lion", b"lioN"), NOW)


@pytest.mark.parametrize("field", ["request_id", "user_id", "timestamp"])
def test_a_signed_header_changed_after_signing_is_refused(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route, field: str
) -> None:
    body = webhook_body()
    headers = sign(body, fal_key)
    name = {"request_id": "Request-Id", "user_id": "User-Id", "timestamp": "Timestamp"}[field]
    headers[f"X-Fal-Webhook-{name}"] = str(int(NOW.timestamp()) + 1) if field == "timestamp" else "someone-else"

    with pytest.raises(WebhookAuthError):
        provider.parse_callback(headers, body, NOW)


@pytest.mark.parametrize("offset", [-301, 301, -3600])
def test_a_timestamp_more_than_300_s_away_is_refused_without_asking_for_keys(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route, offset: int
) -> None:
    body = webhook_body()

    with pytest.raises(WebhookAuthError, match="window"):
        provider.parse_callback(sign(body, fal_key, timestamp=int(NOW.timestamp()) + offset), body, NOW)
    assert jwks_route.call_count == 0


@pytest.mark.parametrize("offset", [-300, 300])
def test_a_timestamp_300_s_away_is_accepted(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route, offset: int
) -> None:
    body = webhook_body()

    job = provider.parse_callback(sign(body, fal_key, timestamp=int(NOW.timestamp()) + offset), body, NOW)

    assert job.status is ProviderJobStatus.SUCCEEDED


@pytest.mark.parametrize(
    "missing",
    ["X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"],
)
def test_a_missing_signature_header_is_refused_without_asking_for_keys(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route, missing: str
) -> None:
    body = webhook_body()
    headers = sign(body, fal_key)
    del headers[missing]

    with pytest.raises(WebhookAuthError, match="missing"):
        provider.parse_callback(headers, body, NOW)
    assert jwks_route.call_count == 0


@pytest.mark.parametrize("signature", ["zz" * 64, "ab" * 63, "ab" * 65, "v1,abcd"])
def test_a_signature_that_is_not_64_hex_bytes_is_refused(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route, signature: str
) -> None:
    body = webhook_body()
    headers = {**sign(body, fal_key), "X-Fal-Webhook-Signature": signature}

    with pytest.raises(WebhookAuthError, match="hex"):
        provider.parse_callback(headers, body, NOW)


def test_a_timestamp_that_is_not_an_integer_is_refused(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body()
    headers = sign(body, fal_key, timestamp="1748779200.5")

    with pytest.raises(WebhookAuthError, match="integer"):
        provider.parse_callback(headers, body, NOW)


def test_a_key_fal_does_not_publish_is_refused(
    router: respx.MockRouter, provider: FalProvider, fal_key: Ed25519PrivateKey
) -> None:
    router.get(JWKS_URL).respond(200, json=jwks(Ed25519PrivateKey.generate()))
    body = webhook_body()

    with pytest.raises(WebhookAuthError, match="does not match"):
        provider.parse_callback(sign(body, fal_key), body, NOW)


def test_a_rotated_key_makes_one_refetch_then_is_accepted(
    router: respx.MockRouter, provider: FalProvider, clock: FakeClock
) -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    route = router.get(JWKS_URL).mock(
        side_effect=[httpx.Response(200, json=jwks(old)), httpx.Response(200, json=jwks(old, new))]
    )
    body = webhook_body()
    provider.parse_callback(sign(body, old), body, NOW)
    clock.now += 3600  # an hour later fal signs with its new key

    job = provider.parse_callback(sign(body, new), body, NOW)
    again = provider.parse_callback(sign(body, new), body, NOW)

    assert job.status is again.status is ProviderJobStatus.SUCCEEDED
    assert route.call_count == 2


def test_forged_callbacks_never_make_us_fetch_the_keys_more_than_once_a_minute(
    router: respx.MockRouter, provider: FalProvider, fal_key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    route = router.get(JWKS_URL).respond(200, json=jwks(fal_key))
    body = webhook_body()
    provider.parse_callback(sign(body, fal_key), body, NOW)
    forger = Ed25519PrivateKey.generate()

    for _ in range(50):
        with pytest.raises(WebhookAuthError):
            provider.parse_callback(sign(body, forger), body, NOW)
        clock.now += 0.5
    assert route.call_count == 1  # the forgeries came within a minute of the fetch

    clock.now += 60
    for _ in range(50):
        with pytest.raises(WebhookAuthError):
            provider.parse_callback(sign(body, forger), body, NOW)
    assert route.call_count == 2  # one look for a rotated key, then the minute starts again


def test_keys_older_than_24_h_are_fetched_again(
    router: respx.MockRouter, provider: FalProvider, fal_key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    route = router.get(JWKS_URL).respond(200, json=jwks(fal_key))
    body = webhook_body()
    provider.parse_callback(sign(body, fal_key), body, NOW)

    clock.now += 24 * 3600
    provider.parse_callback(sign(body, fal_key), body, NOW)

    assert route.call_count == 2


def test_keys_older_than_24_h_are_not_used_when_fal_cannot_be_reached(
    router: respx.MockRouter, provider: FalProvider, fal_key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    router.get(JWKS_URL).mock(side_effect=[httpx.Response(200, json=jwks(fal_key)), httpx.ConnectError("down")])
    body = webhook_body()
    provider.parse_callback(sign(body, fal_key), body, NOW)

    clock.now += 24 * 3600
    with pytest.raises(WebhookAuthError, match="not available"):
        provider.parse_callback(sign(body, fal_key), body, NOW)


def test_keys_fal_cannot_serve_are_asked_again_only_after_a_minute(
    router: respx.MockRouter, provider: FalProvider, fal_key: Ed25519PrivateKey, clock: FakeClock
) -> None:
    route = router.get(JWKS_URL).mock(
        side_effect=[httpx.Response(503, text="unavailable"), httpx.Response(200, json=jwks(fal_key))]
    )
    body = webhook_body()
    for _ in range(5):
        with pytest.raises(WebhookAuthError, match="not available"):
            provider.parse_callback(sign(body, fal_key), body, NOW)
    assert route.call_count == 1

    clock.now += 60
    assert provider.parse_callback(sign(body, fal_key), body, NOW).status is ProviderJobStatus.SUCCEEDED
    assert route.call_count == 2


def test_concurrent_callbacks_fetch_the_keys_once(
    sleep: FakeSleep, cache: JwksCache, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body()
    headers = sign(body, fal_key)
    results: list[ProviderJobStatus] = []

    def receive() -> None:
        results.append(make_provider(sleep, cache).parse_callback(headers, body, NOW).status)

    threads = [threading.Thread(target=receive) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [ProviderJobStatus.SUCCEEDED] * 8
    assert jwks_route.call_count == 1


def test_a_configured_user_id_refuses_callbacks_signed_for_another_user(
    sleep: FakeSleep, cache: JwksCache, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    provider = make_provider(sleep, cache, user_id=USER_ID)
    body = webhook_body()

    assert provider.parse_callback(sign(body, fal_key), body, NOW).status is ProviderJobStatus.SUCCEEDED
    with pytest.raises(WebhookAuthError, match="another fal user"):
        provider.parse_callback(sign(body, fal_key, user_id="github|999"), body, NOW)


def test_an_error_callback_is_failed_with_its_masked_error_and_detail(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    detail = [
        {"loc": ["body", "audio_url"], "msg": f"cannot read {SIGNED_INPUT}", "type": "file_download_error"},
    ]
    body = webhook_body("ERROR", error="Invalid status code: 422", payload={"detail": detail})

    job = provider.parse_callback(sign(body, fal_key), body, NOW)

    assert job.status is ProviderJobStatus.FAILED
    assert job.provider_task_id == REQUEST_ID
    assert job.error_code == "file_download_error"
    assert job.error_message is not None
    assert job.error_message.startswith("Invalid status code: 422; body.audio_url: cannot read https://bucket")
    assert "abcdef0123456789" not in job.error_message


def test_an_ok_callback_without_payload_leaves_the_result_to_the_poller(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body("OK", payload=None, payload_error="Response payload is not JSON serializable.")

    job = provider.parse_callback(sign(body, fal_key), body, NOW)

    assert job.status is ProviderJobStatus.PROCESSING


def test_an_ok_callback_without_a_video_is_failed(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    body = webhook_body("OK", payload={"images": []})

    job = provider.parse_callback(sign(body, fal_key), body, NOW)

    assert job.status is ProviderJobStatus.FAILED


@pytest.mark.parametrize("body", [b"not json", b"[]", json.dumps({"status": "OK"}).encode(), webhook_body("CANCELLED")])
def test_a_signed_body_that_is_not_a_webhook_is_a_payload_error(
    provider: FalProvider, fal_key: Ed25519PrivateKey, jwks_route: respx.Route, body: bytes
) -> None:
    with pytest.raises(WebhookPayloadError):
        provider.parse_callback(sign(body, fal_key), body, NOW)


def test_the_signature_is_checked_before_the_body_is_read(provider: FalProvider, jwks_route: respx.Route) -> None:
    body = b"not json"

    with pytest.raises(WebhookAuthError):
        provider.parse_callback(sign(body, Ed25519PrivateKey.generate()), body, NOW)


def test_the_delivery_id_is_the_signed_request_id(provider: FalProvider, fal_key: Ed25519PrivateKey) -> None:
    headers = sign(webhook_body(), fal_key)

    assert provider.delivery_id(headers) == REQUEST_ID
    assert provider.delivery_id({k.lower(): v for k, v in headers.items()}) == REQUEST_ID
    assert provider.delivery_id({}) is None


def test_a_webhook_only_adapter_verifies_callbacks_but_cannot_call_fal(
    sleep: FakeSleep, cache: JwksCache, fal_key: Ed25519PrivateKey, jwks_route: respx.Route
) -> None:
    provider = make_provider(sleep, cache, api_key="")
    body = webhook_body()

    assert provider.parse_callback(sign(body, fal_key), body, NOW).status is ProviderJobStatus.SUCCEEDED
    with pytest.raises(ProviderConfigError):
        provider.fetch(REQUEST_ID)
    with pytest.raises(ProviderConfigError):
        provider.submit(submission())


def test_the_adapter_is_a_signed_video_provider_that_cannot_find_by_task(provider: FalProvider) -> None:
    port: VideoProvider = provider

    assert port.callback_auth == "signature"
    assert port.finds_by_task is False
    assert port.find_by_task("task-1") is None


def test_parse_jwks_skips_keys_it_cannot_use() -> None:
    key = Ed25519PrivateKey.generate()
    document = {
        "keys": [
            {"kty": "RSA", "n": "abc", "e": "AQAB"},
            {"kty": "OKP", "crv": "X25519", "x": jwk(key)["x"]},
            {"kty": "OKP", "crv": "Ed25519", "x": "too-short"},
            {"kty": "OKP", "crv": "Ed25519"},
            jwk(key),
        ]
    }

    assert len(parse_jwks(json.dumps(document).encode())) == 1


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(TypeError):
        FalProvider(API_KEY, KLING_STD)
    with pytest.raises(ValueError, match="https"):
        FalProvider(API_KEY, (KLING_STD,), jwks_url="http://rest.fal.test/jwks.json")
    with pytest.raises(ValueError, match="default_prompt"):
        FalProvider(API_KEY, (KLING_STD,), default_prompt="  ")
    with pytest.raises(ValueError, match="not a fal model id"):
        FalProvider(API_KEY, ("kling",))
