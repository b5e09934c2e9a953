"""WaveSpeedProvider: requests it sends, how answers and failures map, retries, and callback authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from avatar_pipeline.adapters.http_retry import RetryPolicy, TransientHttpError, call_with_retry
from avatar_pipeline.domain.errors import (
    ProviderConfigError,
    ProviderError,
    ProviderInputError,
    ProviderOutcomeUnknownError,
    ProviderTransientError,
    WebhookAuthError,
    WebhookPayloadError,
)
from avatar_pipeline.domain.model_choice import request_fields
from avatar_pipeline.domain.models import ProviderJobStatus, SubmissionRequest
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.wavespeed.adapter import WaveSpeedProvider

BASE_URL = "https://api.wavespeed.test"
API_KEY = "ws-test-key-do-not-log"
# Base64-looking on purpose, so a signer that base64-decodes the key produces a different (wrong) signature.
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OLD_SECRET = "whsec_previous-secret-being-rotated-out"
FOREIGN_SECRET = "whsec_somebody-else"
STD_PATH = "/api/v3/kwaivgi/kling-v1-ai-avatar-standard"
PRO_PATH = "/api/v3/kwaivgi/kling-v1-ai-avatar-pro"
TASK_ID = "0123456789abcdef0123456789abcdef"
RESULT_PATH = f"/api/v3/predictions/{TASK_ID}/result"
OUTPUT_URL = "https://d1q70pf5vjeyhc.cloudfront.net/output/video.mp4"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- helpers


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def prediction(status: str = "created", **fields: Any) -> dict[str, Any]:
    return {
        "id": TASK_ID,
        "model": "kwaivgi/kling-v1-ai-avatar-standard",
        "outputs": [],
        "urls": {"get": f"{BASE_URL}{RESULT_PATH}"},
        "has_nsfw_contents": [],
        "status": status,
        "created_at": "2025-06-01T12:00:00.123456789Z",
        "error": "",
        "timings": {"inference": 0},
        **fields,
    }


def envelope(data: dict[str, Any] | None = None, code: int = 200, message: str = "success") -> dict[str, Any]:
    return {"code": code, "message": message, "data": data if data is not None else prediction()}


def submission(mode: str = "std", prompt: str | None = "A calm presenter") -> SubmissionRequest:
    model = PROVIDERS.model("wavespeed", f"kling-v1-{mode}")
    return SubmissionRequest(
        task_id="task-1",
        image_url="https://bucket.s3.amazonaws.com/in/face.png?X-Amz-Signature=abc",
        audio_url="https://bucket.s3.amazonaws.com/in/voice.mp3?X-Amz-Signature=def",
        prompt=prompt,
        model_id=model.model_id,
        options=request_fields(model, {}, 4.0),
        webhook_url="https://hooks.example.com/wavespeed?task=task-1",
    )


def sign(
    body: bytes,
    *,
    secret: str = SECRET,
    webhook_id: str = "msg_2f1c",
    timestamp: int | str | None = None,
    base64_key: bool = False,
    scheme: str = "v3",
) -> dict[str, str]:
    """Headers WaveSpeed would send for `body`: HMAC-SHA256 hex over "id.timestamp.body", literal-bytes key."""
    ts = str(int(NOW.timestamp()) if timestamp is None else timestamp)
    raw_key = secret.removeprefix("whsec_")
    key = base64.b64decode(raw_key) if base64_key else raw_key.encode()
    digest = hmac.new(key, f"{webhook_id}.{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return {"webhook-id": webhook_id, "webhook-timestamp": ts, "webhook-signature": f"{scheme},{digest}"}


def callback_body(status: str = "completed", **fields: Any) -> bytes:
    defaults: dict[str, Any] = {"outputs": [OUTPUT_URL]} if status == "completed" else {}
    return json.dumps(prediction(status, **{**defaults, **fields}), separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def provider(sleep: FakeSleep) -> Iterator[WaveSpeedProvider]:
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=8.0, sleep=sleep, random=lambda: 0.5)
    p = WaveSpeedProvider(API_KEY, [SECRET], base_url=BASE_URL, retry=policy)
    yield p
    p.close()


# ---------------------------------------------------------------------------------------------- submit


@pytest.mark.parametrize(("mode", "path"), [("std", STD_PATH), ("pro", PRO_PATH)])
def test_submit_posts_to_the_mode_path_with_webhook_query_and_json_body(
    router: respx.MockRouter, provider: WaveSpeedProvider, mode: str, path: str
) -> None:
    # Given WaveSpeed accepts the submission
    route = router.post(path).respond(200, json=envelope(prediction("created")))
    request = submission(mode=mode)

    # When we submit in that mode
    job = provider.submit(request)

    # Then exactly one POST went to the mode's path, with the webhook as a query parameter,
    # our key as a bearer token and the media URLs (plus prompt) as the JSON body
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.method == "POST"
    assert sent.url.path == path
    assert sent.url.params["webhook"] == request.webhook_url
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert json.loads(sent.content) == {
        "image": request.image_url,
        "audio": request.audio_url,
        "prompt": "A calm presenter",
    }
    # And the created prediction is reported as queued
    assert job.provider_task_id == TASK_ID
    assert job.status is ProviderJobStatus.QUEUED


def test_submit_omits_prompt_when_none(router: respx.MockRouter, provider: WaveSpeedProvider) -> None:
    # Given a submission without a prompt
    route = router.post(STD_PATH).respond(200, json=envelope())

    # When it is submitted
    provider.submit(submission(prompt=None))

    # Then the body has no "prompt" key at all (not even null)
    assert json.loads(route.calls.last.request.content).keys() == {"image", "audio"}


def test_submit_envelope_code_1401_is_an_input_error_with_that_code(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given WaveSpeed answers HTTP 200 with an envelope code 1401 (invalid parameter)
    route = router.post(STD_PATH).respond(200, json={"code": 1401, "message": "invalid image", "data": None})

    # When we submit
    with pytest.raises(ProviderInputError) as caught:
        provider.submit(submission())

    # Then it is an input error carrying code "1401" and the provider's message, and it was not retried
    assert caught.value.code == "1401"
    assert "invalid image" in str(caught.value)
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("code", [5003, 503])
def test_submit_envelope_code_5xxx_or_http_style_overload_is_transient(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep, code: int
) -> None:
    # Given WaveSpeed keeps answering HTTP 200 with an envelope code that means "not now" (e.g. 5003 unavailable)
    route = router.post(STD_PATH).respond(200, json={"code": code, "message": "unavailable"})

    # When we submit
    with pytest.raises(ProviderTransientError) as caught:
        provider.submit(submission())

    # Then it is a transient error with that code (no rate limit), retried up to the budget
    assert caught.value.code == str(code)
    assert not caught.value.is_rate_limit
    assert route.call_count == 3
    assert len(sleep.calls) == 2


def test_submit_envelope_code_429_is_a_rate_limit_raised_at_once(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given WaveSpeed answers HTTP 200 with envelope code 429 (a rate limit in its envelope)
    route = router.post(STD_PATH).respond(200, json={"code": 429, "message": "too many requests"})

    # When we submit
    with pytest.raises(ProviderTransientError) as caught:
        provider.submit(submission())

    # Then it is a transient rate limit, raised after the one call: the dispatcher pauses the line, not this call
    assert caught.value.code == "429"
    assert caught.value.is_rate_limit
    assert route.call_count == 1
    assert sleep.calls == []


def test_submit_http_401_is_a_config_error_and_not_retried(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given WaveSpeed rejects our key
    route = router.post(STD_PATH).respond(401, json={"message": "Unauthorized"})

    # When we submit
    with pytest.raises(ProviderConfigError) as caught:
        provider.submit(submission())

    # Then it is a configuration error after a single call and no wait
    assert route.call_count == 1
    assert sleep.calls == []
    assert "Unauthorized" in str(caught.value)


def test_submit_http_400_is_an_input_error_and_not_retried(
    router: respx.MockRouter, provider: WaveSpeedProvider
) -> None:
    # Given WaveSpeed refuses the request with a plain 4xx and an `error` field
    route = router.post(STD_PATH).respond(400, json={"error": "audio too long"})

    # When we submit
    with pytest.raises(ProviderInputError) as caught:
        provider.submit(submission())

    # Then it is an input error read from `error`, coded with the HTTP status, after one call
    assert "audio too long" in str(caught.value)
    assert caught.value.code == "400"
    assert route.call_count == 1


def test_submit_429_is_raised_at_once_with_its_retry_after(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given WaveSpeed rate-limits, asking us to wait 3 s (and would accept a second attempt)
    route = router.post(STD_PATH).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow down"}),
            httpx.Response(200, json=envelope()),
        ]
    )

    # When we submit
    with pytest.raises(TransientHttpError) as caught:
        provider.submit(submission())

    # Then the 429 is not retried within the call: it is raised after one POST, carrying the provider's hint, for the
    # dispatcher to pause the provider's line that long (the task was not taken, so it goes back in line)
    assert (caught.value.status_code, caught.value.retry_after) == (429, 3.0)
    assert caught.value.is_rate_limit
    assert "slow down" in str(caught.value)
    assert route.call_count == 1
    assert sleep.calls == []


def test_submit_429_keeps_a_retry_after_longer_than_the_in_call_cap(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given a 429 asking for a 120 s wait
    router.post(STD_PATH).respond(429, headers={"Retry-After": "120"})

    # When we submit
    with pytest.raises(TransientHttpError) as caught:
        provider.submit(submission())

    # Then the whole hint reaches the caller (the in-call cap of max_delay is for waits made within a call)
    assert caught.value.retry_after == 120.0
    assert sleep.calls == []


def test_fetch_429_then_200_is_retried_honouring_retry_after(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given WaveSpeed rate-limits a status query once, asking us to wait 3 s, then answers
    route = router.get(RESULT_PATH).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow down"}),
            httpx.Response(200, json=envelope(prediction("processing"))),
        ]
    )

    # When we fetch
    job = provider.fetch(TASK_ID)

    # Then a query (which creates nothing) is still retried within the call, after exactly the Retry-After
    assert job.status is ProviderJobStatus.PROCESSING
    assert route.call_count == 2
    assert sleep.calls == [3.0]


def test_fetch_retry_after_longer_than_max_delay_is_capped(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given a 429 on a query asking for a 120 s wait, then an answer
    router.get(RESULT_PATH).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "120"}),
            httpx.Response(200, json=envelope(prediction("processing"))),
        ]
    )

    # When we fetch
    provider.fetch(TASK_ID)

    # Then the wait is capped at max_delay (8 s)
    assert sleep.calls == [8.0]


def test_fetch_429_every_time_uses_the_whole_budget(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given WaveSpeed keeps rate-limiting status queries, with a Retry-After of 2 s
    route = router.get(RESULT_PATH).respond(429, headers={"Retry-After": "2"}, json={"detail": "slow down"})

    # When we fetch
    with pytest.raises(TransientHttpError) as caught:
        provider.fetch(TASK_ID)

    # Then it was asked 3 times, 2 s apart, and the last 429 propagates
    assert caught.value.status_code == 429
    assert route.call_count == 3
    assert sleep.calls == [2.0, 2.0]


def test_submit_http_503_three_times_raises_transient_after_exactly_three_calls(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given WaveSpeed is unavailable (503) every time
    route = router.post(STD_PATH).respond(503, json={"message": "unavailable"})

    # When we submit
    with pytest.raises(ProviderTransientError) as caught:
        provider.submit(submission())

    # Then the budget of 3 attempts is used, with full-jitter backoff (random()=0.5 → 0.25 s, 0.5 s) in between
    assert route.call_count == 3
    assert sleep.calls == [0.25, 0.5]
    assert "unavailable" in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"message": "internal error"}),
        (502, {"message": "bad gateway"}),
        (504, {"message": "gateway timeout"}),
        (200, {"code": 5000, "message": "internal"}),
        (200, {"code": 5004, "message": "timeout"}),
    ],
)
def test_submit_server_error_that_may_have_created_the_task_is_never_resent(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep, status: int, body: dict
) -> None:
    # Given WaveSpeed answers a submit with a server error that does not prove the task was not created
    route = router.post(STD_PATH).respond(status, json=body)

    # When we submit
    with pytest.raises(ProviderOutcomeUnknownError):
        provider.submit(submission())

    # Then it was sent exactly once: a second POST could be a second paid task
    assert route.call_count == 1
    assert sleep.calls == []


def test_submit_read_timeout_is_outcome_unknown_and_never_reposted(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given the request went out but the answer never came
    route = router.post(STD_PATH).mock(side_effect=httpx.ReadTimeout("timed out"))

    # When we submit
    with pytest.raises(ProviderOutcomeUnknownError):
        provider.submit(submission())

    # Then the POST was made exactly once: a second POST could create a second paid task
    assert route.call_count == 1
    assert sleep.calls == []


def test_submit_connect_error_is_retried_because_nothing_was_sent(
    router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep
) -> None:
    # Given the first connection attempt fails, then WaveSpeed accepts
    route = router.post(STD_PATH).mock(
        side_effect=[httpx.ConnectError("connection refused"), httpx.Response(200, json=envelope())]
    )

    # When we submit
    job = provider.submit(submission())

    # Then the submit was retried once and succeeded
    assert job.provider_task_id == TASK_ID
    assert route.call_count == 2
    assert len(sleep.calls) == 1


def test_submit_unparseable_200_is_outcome_unknown(router: respx.MockRouter, provider: WaveSpeedProvider) -> None:
    # Given WaveSpeed answers 200 with a body that is not JSON (the task may well exist)
    route = router.post(STD_PATH).respond(200, text="<html>oops</html>")

    # When we submit
    with pytest.raises(ProviderOutcomeUnknownError):
        provider.submit(submission())

    # Then it is reported as outcome-unknown (a ProviderError) and not re-posted
    assert route.call_count == 1


def test_errors_and_logs_never_contain_the_api_key(
    router: respx.MockRouter, provider: WaveSpeedProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # Given WaveSpeed keeps failing with 503
    router.post(STD_PATH).respond(503, text="Service Unavailable")

    # When we submit with logging captured at DEBUG
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderTransientError) as caught:
        provider.submit(submission())

    # Then neither the error, nor the logs, nor the provider's repr contain the key or the webhook secret
    for text in (str(caught.value), caplog.text, repr(provider)):
        assert API_KEY not in text
        assert SECRET.removeprefix("whsec_") not in text


# ---------------------------------------------------------------------------------------------- fetch


def test_fetch_completed_is_succeeded_with_first_output_url(
    router: respx.MockRouter, provider: WaveSpeedProvider
) -> None:
    # Given a completed prediction
    route = router.get(RESULT_PATH).respond(200, json=envelope(prediction("completed", outputs=[OUTPUT_URL])))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is SUCCEEDED with the output URL, fetched with a GET carrying our key
    assert job.status is ProviderJobStatus.SUCCEEDED
    assert job.output_url == OUTPUT_URL
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    ("status", "expected"), [("created", "QUEUED"), ("pending", "QUEUED"), ("processing", "PROCESSING")]
)
def test_fetch_maps_in_flight_statuses(
    router: respx.MockRouter, provider: WaveSpeedProvider, status: str, expected: str
) -> None:
    # Given a prediction still in flight
    router.get(RESULT_PATH).respond(200, json=envelope(prediction(status)))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then its status maps to our normalised one
    assert job.status == ProviderJobStatus(expected)


def test_fetch_completed_without_outputs_is_failed(router: respx.MockRouter, provider: WaveSpeedProvider) -> None:
    # Given a "completed" prediction with no output URL
    router.get(RESULT_PATH).respond(200, json=envelope(prediction("completed", outputs=[])))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is FAILED with a message saying why
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_message is not None
    assert "no output" in job.error_message


def test_fetch_failed_with_code_1200_is_failed_with_that_code(
    router: respx.MockRouter, provider: WaveSpeedProvider
) -> None:
    # Given a prediction that failed moderation
    router.get(RESULT_PATH).respond(
        200, json=envelope(prediction("failed", code=1200, error="content flagged by moderation"))
    )

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is FAILED with error code "1200" and the provider's message
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_code == "1200"
    assert job.error_message == "content flagged by moderation"


def test_fetch_failed_without_message_gets_a_fallback(router: respx.MockRouter, provider: WaveSpeedProvider) -> None:
    # Given a failed prediction with an empty error and no code
    router.get(RESULT_PATH).respond(200, json=envelope(prediction("failed", error="")))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is FAILED, with no code and a non-empty fallback message
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_code is None
    assert job.error_message


def test_fetch_read_timeout_is_retried(router: respx.MockRouter, provider: WaveSpeedProvider, sleep: FakeSleep) -> None:
    # Given the first GET times out while reading, the second answers
    route = router.get(RESULT_PATH).mock(
        side_effect=[httpx.ReadTimeout("timed out"), httpx.Response(200, json=envelope(prediction("processing")))]
    )

    # When we fetch
    job = provider.fetch(TASK_ID)

    # Then the GET was retried (it is harmless) and the answer is used
    assert job.status is ProviderJobStatus.PROCESSING
    assert route.call_count == 2
    assert len(sleep.calls) == 1


def test_fetch_non_json_502_is_transient_with_the_body_text(
    router: respx.MockRouter, provider: WaveSpeedProvider
) -> None:
    # Given a gateway answering 502 with an HTML page
    route = router.get(RESULT_PATH).respond(502, text="<html>Bad Gateway</html>")

    # When we fetch
    with pytest.raises(ProviderTransientError) as caught:
        provider.fetch(TASK_ID)

    # Then it is transient, mentions the status and text, and the budget was used
    assert "502" in str(caught.value)
    assert "Bad Gateway" in str(caught.value)
    assert caught.value.code == "502"
    assert route.call_count == 3


def test_fetch_invalid_json_in_200_is_a_provider_error_not_retried(
    router: respx.MockRouter, provider: WaveSpeedProvider
) -> None:
    # Given a 200 whose body is not JSON
    route = router.get(RESULT_PATH).respond(200, text="not json")

    # When we fetch
    with pytest.raises(ProviderError) as caught:
        provider.fetch(TASK_ID)

    # Then it is a plain ProviderError (not transient), after one call
    assert not isinstance(caught.value, ProviderTransientError)
    assert route.call_count == 1


def test_fetch_unknown_status_is_a_provider_error(router: respx.MockRouter, provider: WaveSpeedProvider) -> None:
    # Given a prediction with a status WaveSpeed does not document
    router.get(RESULT_PATH).respond(200, json=envelope(prediction("exploded")))

    # When we fetch
    with pytest.raises(ProviderError) as caught:
        provider.fetch(TASK_ID)

    # Then it is a ProviderError naming the status
    assert "exploded" in str(caught.value)


# ---------------------------------------------------------------------------------------------- retry policy


def test_call_with_retry_does_not_retry_other_errors() -> None:
    # Given an operation failing with a non-transient provider error
    sleep = FakeSleep()
    calls: list[int] = []

    def operation() -> None:
        calls.append(1)
        raise ProviderError("nope")

    # When it runs under a retry policy
    with pytest.raises(ProviderError):
        call_with_retry(operation, RetryPolicy(sleep=sleep))

    # Then it ran once and never slept
    assert calls == [1]
    assert sleep.calls == []


def test_full_jitter_backoff_grows_exponentially_and_is_capped() -> None:
    # Given a policy whose random() is always just below 1
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=8.0, random=lambda: 0.999)

    # When we ask for successive delays
    delays = [policy.delay_before_retry(n) for n in range(1, 8)]

    # Then the ceiling doubles each time until it reaches max_delay
    assert delays == pytest.approx([0.4995, 0.999, 1.998, 3.996, 7.992, 7.992, 7.992])


@pytest.mark.parametrize(
    "error",
    [
        TransientHttpError("slow down", status_code=429, retry_after=5.0),
        ProviderTransientError("slow down", code="429"),
    ],
    ids=["http-429", "code-429"],
)
def test_call_with_retry_without_rate_limit_retries_raises_a_rate_limit_at_once(error: ProviderTransientError) -> None:
    # Given an operation whose first answer is a rate limit
    sleep = FakeSleep()
    calls: list[int] = []

    def operation() -> None:
        calls.append(1)
        raise error

    # When it runs without rate-limit retries (as submits do), and with them (as fetches do)
    with pytest.raises(ProviderTransientError) as caught:
        call_with_retry(operation, RetryPolicy(sleep=sleep), retry_rate_limits=False)
    assert caught.value is error and calls == [1] and sleep.calls == []
    with pytest.raises(ProviderTransientError):
        call_with_retry(operation, RetryPolicy(sleep=sleep, random=lambda: 0.5))

    # Then only the second was retried, up to its budget
    assert len(calls) == 1 + 3


def test_call_with_retry_without_rate_limit_retries_still_retries_an_outage() -> None:
    # Given an operation that fails with a 503 once, then succeeds
    sleep = FakeSleep()
    answers: list[Any] = [TransientHttpError("unavailable", status_code=503), "done"]

    def operation() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    # When it runs without rate-limit retries
    result = call_with_retry(operation, RetryPolicy(sleep=sleep, random=lambda: 0.5), retry_rate_limits=False)

    # Then the outage was retried (it is no rate limit)
    assert result == "done" and len(sleep.calls) == 1


def test_last_transient_error_propagates_after_the_budget() -> None:
    # Given an operation that fails transiently with a fresh error each time
    errors = [TransientHttpError(f"fail {i}", status_code=503) for i in range(3)]
    attempts = iter(errors)

    def operation() -> None:
        raise next(attempts)

    # When it runs with a budget of 3 attempts
    with pytest.raises(ProviderTransientError) as caught:
        call_with_retry(operation, RetryPolicy(sleep=FakeSleep()))

    # Then the error raised is the last one
    assert caught.value is errors[-1]


# ---------------------------------------------------------------------------------------------- callbacks


def test_callback_with_valid_signature_is_accepted(provider: WaveSpeedProvider) -> None:
    # Given a correctly signed "completed" callback
    body = callback_body("completed")

    # When we parse it
    job = provider.parse_callback(sign(body), body, NOW)

    # Then it authenticates and maps to SUCCEEDED with the output URL
    assert job.provider_task_id == TASK_ID
    assert job.status is ProviderJobStatus.SUCCEEDED
    assert job.output_url == OUTPUT_URL


def test_callback_header_names_are_case_insensitive(provider: WaveSpeedProvider) -> None:
    # Given a signed callback whose header names arrive capitalised
    body = callback_body("failed", code=1402, error="could not fetch media")
    headers = {name.title(): value for name, value in sign(body).items()}

    # When we parse it
    job = provider.parse_callback(headers, body, NOW)

    # Then it is accepted and maps to FAILED with the code
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_code == "1402"


def test_delivery_id_is_the_signed_webhook_id(provider: WaveSpeedProvider) -> None:
    # Given a signed callback, its header names in any case
    headers = {name.title(): value for name, value in sign(callback_body(), webhook_id="msg_2f1c").items()}

    # Then its delivery id is the webhook-id (which WaveSpeed keeps on its retries), and none without one
    assert provider.delivery_id(headers) == "msg_2f1c"
    assert provider.delivery_id({}) is None


def test_callback_signed_with_base64_decoded_key_is_rejected(provider: WaveSpeedProvider) -> None:
    # Given a callback signed the Standard Webhooks way (base64-decoded key)
    body = callback_body()

    # When we parse it
    # Then it is rejected: WaveSpeed uses the secret's literal bytes
    with pytest.raises(WebhookAuthError):
        provider.parse_callback(sign(body, base64_key=True), body, NOW)


def test_callback_signed_with_wrong_secret_is_rejected(provider: WaveSpeedProvider) -> None:
    # Given a callback signed with a secret we do not hold
    body = callback_body()

    # When we parse it
    # Then it is rejected
    with pytest.raises(WebhookAuthError):
        provider.parse_callback(sign(body, secret=FOREIGN_SECRET), body, NOW)


def test_callback_signed_with_second_of_two_secrets_is_accepted() -> None:
    # Given a provider holding two secrets during a rotation
    rotating = WaveSpeedProvider(API_KEY, [OLD_SECRET, SECRET], base_url=BASE_URL)
    body = callback_body()

    # When a callback signed with the second secret arrives
    job = rotating.parse_callback(sign(body, secret=SECRET), body, NOW)

    # Then it is accepted
    assert job.status is ProviderJobStatus.SUCCEEDED
    rotating.close()


@pytest.mark.parametrize("offset", [-301, 301])
def test_callback_timestamp_more_than_300_s_away_is_rejected(provider: WaveSpeedProvider, offset: int) -> None:
    # Given a correctly signed callback stamped 301 s in the past or future
    body = callback_body()
    headers = sign(body, timestamp=int(NOW.timestamp()) + offset)

    # When we parse it
    # Then it is rejected as a possible replay
    with pytest.raises(WebhookAuthError, match="window"):
        provider.parse_callback(headers, body, NOW)


@pytest.mark.parametrize("offset", [-299, -300, 299, 300])
def test_callback_timestamp_within_300_s_is_accepted(provider: WaveSpeedProvider, offset: int) -> None:
    # Given a correctly signed callback stamped within the window
    body = callback_body()
    headers = sign(body, timestamp=int(NOW.timestamp()) + offset)

    # When we parse it
    job = provider.parse_callback(headers, body, NOW)

    # Then it is accepted
    assert job.status is ProviderJobStatus.SUCCEEDED


def test_callback_timestamp_not_an_integer_is_rejected(provider: WaveSpeedProvider) -> None:
    # Given a callback whose timestamp is not an integer (signed over that very string)
    body = callback_body()
    headers = sign(body, timestamp=f"{int(NOW.timestamp())}.5")

    # When we parse it
    # Then it is rejected
    with pytest.raises(WebhookAuthError, match="integer"):
        provider.parse_callback(headers, body, NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_callback_missing_header_is_rejected(provider: WaveSpeedProvider, missing: str) -> None:
    # Given a signed callback with one required header dropped
    body = callback_body()
    headers = sign(body)
    del headers[missing]

    # When we parse it
    # Then it is rejected
    with pytest.raises(WebhookAuthError, match="missing"):
        provider.parse_callback(headers, body, NOW)


def test_callback_body_tampered_by_one_byte_is_rejected(provider: WaveSpeedProvider) -> None:
    # Given a signed body with one byte changed after signing
    body = callback_body()
    headers = sign(body)
    tampered = bytearray(body)
    tampered[-2] ^= 0x01

    # When we parse it
    # Then it is rejected
    with pytest.raises(WebhookAuthError, match="signature"):
        provider.parse_callback(headers, bytes(tampered), NOW)


def test_callback_with_several_entries_where_the_second_matches_is_accepted(provider: WaveSpeedProvider) -> None:
    # Given a signature header with a bogus v3 entry followed by the correct one
    body = callback_body()
    headers = sign(body)
    headers["webhook-signature"] = f"v3,{'0' * 64} {headers['webhook-signature']}"

    # When we parse it
    job = provider.parse_callback(headers, body, NOW)

    # Then it is accepted
    assert job.provider_task_id == TASK_ID


def test_callback_v1_entry_is_ignored(provider: WaveSpeedProvider) -> None:
    # Given the correct digest, but offered only under the "v1" scheme
    body = callback_body()
    headers = sign(body, scheme="v1")

    # When we parse it
    # Then it is rejected: only v3 entries count
    with pytest.raises(WebhookAuthError):
        provider.parse_callback(headers, body, NOW)


def test_callback_valid_signature_but_malformed_json_is_a_payload_error(provider: WaveSpeedProvider) -> None:
    # Given a correctly signed body that is not JSON
    body = b'{"id": "abc", "status": '

    # When we parse it
    # Then it authenticates but fails as a payload error
    with pytest.raises(WebhookPayloadError):
        provider.parse_callback(sign(body), body, NOW)


def test_callback_valid_signature_but_no_status_is_a_payload_error(provider: WaveSpeedProvider) -> None:
    # Given a correctly signed JSON object lacking "status"
    body = json.dumps({"id": TASK_ID}).encode()

    # When we parse it
    # Then it is a payload error
    with pytest.raises(WebhookPayloadError):
        provider.parse_callback(sign(body), body, NOW)


def test_callback_checks_signature_before_parsing_the_body(provider: WaveSpeedProvider) -> None:
    # Given a malformed body with a bad signature
    body = b"not json"
    headers = sign(body, secret=FOREIGN_SECRET)

    # When we parse it
    # Then authentication fails first (nothing unauthenticated is parsed)
    with pytest.raises(WebhookAuthError):
        provider.parse_callback(headers, body, NOW)


# ---------------------------------------------------------------------------------------------- construction


def test_empty_webhook_secret_is_refused() -> None:
    # Given a configuration with an empty secret (anyone could sign with an empty key)
    # When the provider is built
    # Then it refuses
    with pytest.raises(ValueError, match="empty"):
        WaveSpeedProvider(API_KEY, ["whsec_"])


def test_single_secret_string_instead_of_a_list_is_refused() -> None:
    # Given a secret passed as a bare string (a Sequence of characters)
    # When the provider is built
    # Then it refuses rather than treating each character as a secret
    with pytest.raises(TypeError):
        WaveSpeedProvider(API_KEY, SECRET)


# ---------------------------------------------------------------------------------------------- echoed secrets

# What a provider's error body may echo back of what we sent: presigned inputs, our callback URL with its token.
SIGNED_IMAGE = (
    "https://bucket.s3.amazonaws.com/in/face.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIAEXAMPLECREDENTIAL%2F20250601%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN&X-Amz-Signature=5f1e0c0ffee5ignature"
)
CALLBACK_TOKEN = "cb-token-9f8e7d6c5b4a"
CALLBACK_URL = f"https://hooks.example.com/webhooks/wavespeed?task_id=task-1&token={CALLBACK_TOKEN}"
ECHOED_SECRETS = (
    "ASIAEXAMPLECREDENTIAL",
    "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN",
    "5f1e0c0ffee5ignature",
    CALLBACK_TOKEN,
    API_KEY,
)
ECHO = f"cannot download image {SIGNED_IMAGE} (webhook {CALLBACK_URL}, authorization: Bearer {API_KEY})"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(400, {"code": 400, "message": ECHO}, id="http-400-json"),
        pytest.param(422, {"detail": {"loc": ["image"], "msg": ECHO}}, id="http-422-json-detail"),
        pytest.param(400, ECHO, id="http-400-text"),
        pytest.param(200, {"code": 1400, "message": ECHO, "data": None}, id="envelope-code-1400"),
    ],
)
def test_an_error_body_echoing_our_signed_urls_and_key_is_quoted_without_them(
    router: respx.MockRouter, provider: WaveSpeedProvider, status: int, body: dict[str, Any] | str
) -> None:
    # Given WaveSpeed refuses a submit with an error body that echoes our presigned input, callback URL and key
    answer = httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)
    router.post(STD_PATH).mock(return_value=answer)

    # When we submit
    with pytest.raises(ProviderError) as caught:
        provider.submit(submission())

    # Then the error quotes where the failure was (the input's path, the callback's host) but no secret of ours
    message = str(caught.value)
    for secret in ECHOED_SECRETS:
        assert secret not in message
    assert "bucket.s3.amazonaws.com/in/face.png" in message
    assert "hooks.example.com/webhooks/wavespeed" in message


def test_a_failed_prediction_echoing_a_signed_url_reports_its_failure_without_the_signature(
    router: respx.MockRouter, provider: WaveSpeedProvider
) -> None:
    # Given a prediction that failed with an error quoting our presigned input
    failed = prediction("failed", error=f"download failed: {SIGNED_IMAGE}", code=1200)
    router.get(RESULT_PATH).respond(200, json=envelope(failed))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then its failure message keeps the input's path but not the signature or the credentials
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_message is not None
    assert "bucket.s3.amazonaws.com/in/face.png" in job.error_message
    for secret in ECHOED_SECRETS:
        assert secret not in job.error_message
