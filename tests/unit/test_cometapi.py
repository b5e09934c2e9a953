"""CometApiProvider: requests it sends, how answers and failures map, retries, and callback parsing."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from avatar_pipeline.adapters.http_retry import RetryPolicy, TransientHttpError
from avatar_pipeline.domain.errors import (
    ProviderConfigError,
    ProviderError,
    ProviderInputError,
    ProviderOutcomeUnknownError,
    ProviderTransientError,
    WebhookPayloadError,
)
from avatar_pipeline.domain.model_choice import request_fields
from avatar_pipeline.domain.models import ProviderJobStatus, SubmissionRequest
from avatar_pipeline.ports import VideoProvider
from avatar_pipeline.providers.cometapi.adapter import CometApiProvider, CometTask, parse_duration
from avatar_pipeline.providers.registry import PROVIDERS

BASE_URL = "https://api.cometapi.test"
API_KEY = "sk-comet-test-key-do-not-log"
CREATE_PATH = "/kling/v1/videos/avatar/image2video"
TASK_ID = "831922345719271433"
QUERY_PATH = f"{CREATE_PATH}/{TASK_ID}"
OUTPUT_URL = "https://cdn.klingai.test/bs2/upload-ylab-stunt/video.mp4"
DEFAULT_PROMPT = "A person talking naturally to the camera."
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------- helpers


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def task(status: str = "submitted", **fields: Any) -> dict[str, Any]:
    return {
        "task_id": TASK_ID,
        "task_status": status,
        "task_info": {"external_task_id": "task-1"},
        "created_at": 1748779200000,
        "updated_at": 1748779200000,
        **fields,
    }


def succeeded_task(duration: Any = "5.034", **fields: Any) -> dict[str, Any]:
    video = {"id": "video-1", "url": OUTPUT_URL, "duration": duration}
    return task("succeed", task_status_msg="", task_result={"videos": [video]}, **fields)


def envelope(data: dict[str, Any] | None = None, code: int = 0, message: str = "SUCCEED") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": "req-7f3a", "data": data if data is not None else task()}


def kling_error(code: int, message: str = "refused") -> dict[str, Any]:
    return {"code": code, "message": message, "request_id": "req-err-1", "data": None}


def gateway_error(message: str, code: str = "", kind: str = "comet_api_error") -> dict[str, Any]:
    return {
        "error": {"message": f"{message} (request id: 2025060112000012345)", "type": kind, "param": "", "code": code}
    }


def submission(mode: str = "std", prompt: str | None = "A calm presenter") -> SubmissionRequest:
    model = PROVIDERS.model("cometapi", f"kling-v1-{mode}")
    return SubmissionRequest(
        task_id="task-1",
        image_url="https://bucket.s3.amazonaws.com/in/face.png?X-Amz-Signature=abc",
        audio_url="https://bucket.s3.amazonaws.com/in/voice.mp3?X-Amz-Signature=def",
        prompt=prompt,
        model_id=model.model_id,
        options=request_fields(model, {}, 4.0),
        webhook_url="https://hooks.example.com/webhooks/cometapi?task_id=task-1&token=opaque",
    )


def sent_json(route: respx.Route) -> dict[str, Any]:
    return json.loads(route.calls.last.request.content)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def provider(sleep: FakeSleep) -> Iterator[CometApiProvider]:
    policy = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=8.0, sleep=sleep, random=lambda: 0.5)
    p = CometApiProvider(API_KEY, base_url=BASE_URL, retry=policy)
    yield p
    p.close()


# ---------------------------------------------------------------------------------------------- identity


def test_provider_is_a_video_provider_named_cometapi_whose_callbacks_are_confirmed_by_query() -> None:
    # Given a provider built with the defaults
    provider: VideoProvider = CometApiProvider(API_KEY)

    # When we read what it tells the domain about itself
    # Then it is "cometapi", and its callbacks (nothing is signed) must be confirmed by asking CometAPI
    assert provider.name == "cometapi"
    assert CometApiProvider.callback_auth == "query"


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_api_key_is_refused(key: str) -> None:
    # Given an empty API key
    # When the provider is built
    # Then it refuses
    with pytest.raises(ValueError, match="empty"):
        CometApiProvider(key)


def test_empty_default_prompt_is_refused() -> None:
    # Given a blank default prompt (the API may refuse a request without a prompt)
    # When the provider is built
    # Then it refuses
    with pytest.raises(ValueError, match="default_prompt"):
        CometApiProvider(API_KEY, default_prompt=" ")


# ---------------------------------------------------------------------------------------------- submit


@pytest.mark.parametrize("mode", ["std", "pro"])
def test_submit_posts_the_create_path_with_all_fields_and_bearer_key(
    router: respx.MockRouter, provider: CometApiProvider, mode: str
) -> None:
    # Given CometAPI accepts the submission
    route = router.post(CREATE_PATH).respond(200, json=envelope(task("submitted")))
    request = submission(mode=mode)

    # When we submit in that mode
    job = provider.submit(request)

    # Then exactly one POST went to the create path, with our key as a bearer token and every field in the body
    assert route.call_count == 1
    sent = route.calls.last.request
    assert sent.method == "POST"
    assert sent.url.path == CREATE_PATH
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent_json(route) == {
        "image": request.image_url,
        "sound_file": request.audio_url,
        "prompt": "A calm presenter",
        "mode": mode,
        "callback_url": request.webhook_url,
        "external_task_id": "task-1",
    }
    # And the created task is reported as queued under CometAPI's id
    assert job.provider_task_id == TASK_ID
    assert job.status is ProviderJobStatus.QUEUED


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_submit_always_sends_a_prompt_using_the_default_when_none(
    router: respx.MockRouter, provider: CometApiProvider, prompt: str | None
) -> None:
    # Given a submission without a (usable) prompt
    route = router.post(CREATE_PATH).respond(200, json=envelope())

    # When it is submitted
    provider.submit(submission(prompt=prompt))

    # Then the body still carries a prompt: the default one
    assert sent_json(route)["prompt"] == DEFAULT_PROMPT


def test_submit_uses_a_configured_default_prompt(router: respx.MockRouter) -> None:
    # Given a provider configured with its own default prompt
    custom = CometApiProvider(API_KEY, base_url=BASE_URL, default_prompt="A newsreader, calm and clear.")
    route = router.post(CREATE_PATH).respond(200, json=envelope())

    # When a submission without a prompt is sent
    custom.submit(submission(prompt=None))

    # Then that default is sent
    assert sent_json(route)["prompt"] == "A newsreader, calm and clear."
    custom.close()


def test_submit_base_url_with_trailing_slash_still_hits_the_create_path(router: respx.MockRouter) -> None:
    # Given a base URL configured with a trailing slash
    slashed = CometApiProvider(API_KEY, base_url=BASE_URL + "/")
    route = router.post(CREATE_PATH).respond(200, json=envelope())

    # When we submit
    slashed.submit(submission())

    # Then the path has no double slash
    assert route.calls.last.request.url.path == CREATE_PATH
    slashed.close()


def test_submit_uses_an_injected_client(router: respx.MockRouter) -> None:
    # Given a provider built around our own httpx client
    client = httpx.Client()
    injected = CometApiProvider(API_KEY, base_url=BASE_URL, client=client)
    router.post(CREATE_PATH).respond(200, json=envelope())

    # When we submit and then close the provider
    job = injected.submit(submission())
    injected.close()

    # Then it worked, and the client (not the provider's) is left open for its owner
    assert job.provider_task_id == TASK_ID
    assert not client.is_closed
    client.close()


def test_submit_unparseable_200_is_outcome_unknown(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given CometAPI answers 200 with a body that is not JSON (the task may well exist)
    route = router.post(CREATE_PATH).respond(200, text="<html>oops</html>")

    # When we submit
    # Then it is reported as outcome-unknown and not re-posted
    with pytest.raises(ProviderOutcomeUnknownError):
        provider.submit(submission())
    assert route.call_count == 1


def test_submit_200_without_task_id_is_outcome_unknown(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given a success envelope whose data lacks the task id
    route = router.post(CREATE_PATH).respond(200, json=envelope({"task_status": "submitted"}))

    # When we submit
    # Then it is outcome-unknown (something may have been created), sent once
    with pytest.raises(ProviderOutcomeUnknownError, match="task_id"):
        provider.submit(submission())
    assert route.call_count == 1


# ---------------------------------------------------------------------------------------------- fetch


@pytest.mark.parametrize(("status", "expected"), [("submitted", "QUEUED"), ("processing", "PROCESSING")])
def test_fetch_maps_in_flight_statuses(
    router: respx.MockRouter, provider: CometApiProvider, status: str, expected: str
) -> None:
    # Given a task still in flight
    route = router.get(QUERY_PATH).respond(200, json=envelope(task(status)))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then its status maps to our normalised one, fetched with a GET on the task's path carrying our key
    assert job.status == ProviderJobStatus(expected)
    assert job.provider_task_id == TASK_ID
    sent = route.calls.last.request
    assert sent.method == "GET"
    assert sent.url.path == QUERY_PATH
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"


def test_fetch_succeed_with_string_duration_is_succeeded_with_first_video_url(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a finished task (status spelled "succeed") whose video duration is a string of seconds
    second = {"id": "video-2", "url": "https://cdn.klingai.test/other.mp4", "duration": "5.0"}
    data = succeeded_task(duration="5.034")
    data["task_result"]["videos"].append(second)
    router.get(QUERY_PATH).respond(200, json=envelope(data))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is SUCCEEDED with the first video's URL and no error
    assert job.status is ProviderJobStatus.SUCCEEDED
    assert job.output_url == OUTPUT_URL
    assert job.error_message is None
    # And the duration string parses to seconds in the task model
    assert CometTask.model_validate(data).videos[0].duration == pytest.approx(5.034)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5.034", 5.034),
        (" 7 ", 7.0),
        ("12s", 12.0),
        (5, 5.0),
        (4.5, 4.5),
        ("", None),
        ("abc", None),
        (None, None),
        ("-1", None),
        ("nan", None),
        (True, None),
        ({"s": 1}, None),
    ],
)
def test_parse_duration_is_tolerant_of_strings_numbers_and_junk(raw: Any, expected: float | None) -> None:
    # Given a duration as Kling might send it
    # When it is parsed
    seconds = parse_duration(raw)

    # Then numbers and numeric strings give seconds, anything else gives None instead of failing
    assert seconds == (pytest.approx(expected) if expected is not None else None)


def test_fetch_succeed_with_unparseable_duration_is_still_succeeded(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a finished task whose duration is junk
    router.get(QUERY_PATH).respond(200, json=envelope(succeeded_task(duration="about five")))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then the junk duration does not get in the way of the result
    assert job.status is ProviderJobStatus.SUCCEEDED
    assert job.output_url == OUTPUT_URL


@pytest.mark.parametrize(
    "task_result",
    [None, {}, {"videos": []}, {"videos": None}, {"videos": [{"id": "v", "url": "", "duration": "5"}]}],
)
def test_fetch_succeed_without_videos_is_failed_with_a_clear_message(
    router: respx.MockRouter, provider: CometApiProvider, task_result: Any
) -> None:
    # Given a "succeed" task with no usable video
    router.get(QUERY_PATH).respond(200, json=envelope(task("succeed", task_result=task_result)))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is FAILED with a message saying why
    assert job.status is ProviderJobStatus.FAILED
    assert job.output_url is None
    assert job.error_message is not None
    assert "no video" in job.error_message


def test_fetch_failed_carries_task_status_msg_and_no_code(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given a task that failed with a reason
    router.get(QUERY_PATH).respond(
        200, json=envelope(task("failed", task_status_msg="Failure to pass the risk control system"))
    )

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is FAILED with that message and no error code (CometAPI gives none for a failed task)
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_message == "Failure to pass the risk control system"
    assert job.error_code is None


def test_fetch_failed_with_a_code_in_the_task_keeps_it(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given a failed task that, unusually, carries a numeric code
    router.get(QUERY_PATH).respond(200, json=envelope(task("failed", code=1301, task_status_msg="content risk")))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then the code is kept as the job's error code
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_code == "1301"


@pytest.mark.parametrize("msg", [None, ""])
def test_fetch_failed_without_message_gets_a_fallback(
    router: respx.MockRouter, provider: CometApiProvider, msg: str | None
) -> None:
    # Given a failed task with no reason
    router.get(QUERY_PATH).respond(200, json=envelope(task("failed", task_status_msg=msg)))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then it is FAILED with a non-empty fallback message
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_message
    assert "without a message" in job.error_message


def test_fetch_unknown_status_is_a_provider_error_naming_it(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a task with a status Kling does not document
    route = router.get(QUERY_PATH).respond(200, json=envelope(task("exploded")))

    # When we fetch
    with pytest.raises(ProviderError) as caught:
        provider.fetch(TASK_ID)

    # Then it is a plain ProviderError naming the status, not retried
    assert not isinstance(caught.value, ProviderTransientError)
    assert "exploded" in str(caught.value)
    assert route.call_count == 1


def test_fetch_invalid_json_in_200_is_a_provider_error_not_retried(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a 200 whose body is not JSON
    route = router.get(QUERY_PATH).respond(200, text="not json")

    # When we fetch
    with pytest.raises(ProviderError) as caught:
        provider.fetch(TASK_ID)

    # Then it is a plain ProviderError (not transient), after one call
    assert not isinstance(caught.value, ProviderTransientError)
    assert route.call_count == 1


def test_fetch_escapes_the_task_id_in_the_path(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given a task id with characters that would change the path
    route = router.get(f"{CREATE_PATH}/a%2Fb%3Fc").respond(200, json=envelope(task("processing", task_id="a/b?c")))

    # When we fetch it
    job = provider.fetch("a/b?c")

    # Then it is sent percent-encoded as one path segment
    assert route.call_count == 1
    assert job.provider_task_id == "a/b?c"


def test_fetch_empty_task_id_is_refused(provider: CometApiProvider) -> None:
    # Given no task id
    # When we fetch
    # Then it refuses before any call
    with pytest.raises(ValueError, match="empty"):
        provider.fetch("")


# ---------------------------------------------------------------------------------------------- callbacks


def test_callback_bare_succeed_body_is_parsed(provider: CometApiProvider) -> None:
    # Given a bare callback body for a finished task (as CometAPI posts it), with no headers at all
    body = json.dumps(succeeded_task()).encode()

    # When we parse it
    job = provider.parse_callback({}, body, NOW)

    # Then it maps to SUCCEEDED with the video URL (nothing is authenticated here: the domain does that)
    assert job.provider_task_id == TASK_ID
    assert job.status is ProviderJobStatus.SUCCEEDED
    assert job.output_url == OUTPUT_URL


def test_callbacks_name_no_delivery(provider: CometApiProvider) -> None:
    # CometAPI gives its callbacks no id: each is a hint the domain confirms, so repeats need no deduplication
    assert provider.delivery_id({"webhook-id": "msg_1", "X-Request-Id": "req-1"}) is None


def test_callback_wrapped_in_an_envelope_is_parsed(provider: CometApiProvider) -> None:
    # Given a callback body wrapped in {"code": 0, "data": {...}}
    body = json.dumps(envelope(task("failed", task_status_msg="audio too short"))).encode()

    # When we parse it
    job = provider.parse_callback({"Content-Type": "application/json"}, body, NOW)

    # Then the task inside is used
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_message == "audio too short"


@pytest.mark.parametrize(("status", "expected"), [("submitted", "QUEUED"), ("processing", "PROCESSING")])
def test_callback_for_an_intermediate_status_is_parsed(provider: CometApiProvider, status: str, expected: str) -> None:
    # Given a callback for a status change that is not terminal (CometAPI sends those too)
    body = json.dumps(task(status)).encode()

    # When we parse it
    job = provider.parse_callback({}, body, NOW)

    # Then it maps to the normalised in-flight status
    assert job.status == ProviderJobStatus(expected)


@pytest.mark.parametrize(
    "body",
    [
        b'{"task_id": "1", "task_status": ',
        b"\xff\xfe",
        b"[]",
        b'"succeed"',
        json.dumps({"task_status": "succeed"}).encode(),
        json.dumps({"task_id": TASK_ID}).encode(),
        json.dumps({"task_id": "", "task_status": "succeed"}).encode(),
        json.dumps(task("exploded")).encode(),
        json.dumps({"code": 1301, "message": "refused", "data": task()}).encode(),
        json.dumps({"code": 0, "data": None}).encode(),
        json.dumps({"task_id": TASK_ID, "task_status": "succeed", "task_result": {"videos": "x"}}).encode(),
    ],
)
def test_callback_malformed_body_is_a_payload_error(provider: CometApiProvider, body: bytes) -> None:
    # Given a callback body that is not a task with a known status
    # When we parse it
    # Then it is a payload error
    with pytest.raises(WebhookPayloadError):
        provider.parse_callback({}, body, NOW)


def test_callback_with_numeric_task_id_is_tolerated(provider: CometApiProvider) -> None:
    # Given a callback whose 18-digit task id arrives as a JSON number
    body = json.dumps(task("processing", task_id=int(TASK_ID))).encode()

    # When we parse it
    job = provider.parse_callback({}, body, NOW)

    # Then the id is kept as its exact digits
    assert job.provider_task_id == TASK_ID


# ---------------------------------------------------------------------------------------------- errors: gateway shape


@pytest.mark.parametrize("status", [401, 403])
def test_gateway_401_or_403_is_a_config_error_and_not_retried(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, status: int
) -> None:
    # Given the gateway rejects our key
    route = router.post(CREATE_PATH).respond(status, json=gateway_error("invalid token", code="invalid_api_key"))

    # When we submit
    with pytest.raises(ProviderConfigError) as caught:
        provider.submit(submission())

    # Then it is a configuration error with the gateway's message and code, after a single call and no wait
    assert "invalid token" in str(caught.value)
    assert "request id" in str(caught.value)
    assert caught.value.code == "invalid_api_key"
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("status", [400, 404, 422])
def test_gateway_4xx_is_an_input_error_coded_with_the_status(
    router: respx.MockRouter, provider: CometApiProvider, status: int
) -> None:
    # Given the gateway refuses the request with a 4xx and an empty error code
    route = router.post(CREATE_PATH).respond(status, json=gateway_error("sound_file is required"))

    # When we submit
    with pytest.raises(ProviderInputError) as caught:
        provider.submit(submission())

    # Then it is an input error with the message, coded with the HTTP status, after one call
    assert "sound_file is required" in str(caught.value)
    assert caught.value.code == str(status)
    assert route.call_count == 1


def test_fetch_gateway_404_is_an_input_error(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given the gateway does not know the task
    route = router.get(QUERY_PATH).respond(404, json=gateway_error("task not found"))

    # When we fetch
    # Then it is an input error after one call (asking again will not help)
    with pytest.raises(ProviderInputError, match="task not found"):
        provider.fetch(TASK_ID)
    assert route.call_count == 1


def test_submit_429_is_raised_at_once_with_its_retry_after(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep
) -> None:
    # Given the gateway rate-limits, asking us to wait 3 s (and would accept a second attempt)
    route = router.post(CREATE_PATH).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3"}, json=gateway_error("too many requests")),
            httpx.Response(200, json=envelope()),
        ]
    )

    # When we submit
    with pytest.raises(TransientHttpError) as caught:
        provider.submit(submission())

    # Then the 429 is not retried within the call: raised after one POST with the hint, for the dispatcher to pause
    # CometAPI's line that long (nothing was created, so the task goes back in line)
    assert (caught.value.status_code, caught.value.retry_after) == (429, 3.0)
    assert caught.value.is_rate_limit
    assert route.call_count == 1
    assert sleep.calls == []


def test_fetch_429_then_200_is_retried_honouring_retry_after(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep
) -> None:
    # Given the gateway rate-limits a status query once, asking us to wait 3 s, then answers
    route = router.get(QUERY_PATH).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "3"}, json=gateway_error("too many requests")),
            httpx.Response(200, json=envelope()),
        ]
    )

    # When we fetch
    job = provider.fetch(TASK_ID)

    # Then a query (which creates nothing) is still retried within the call, after exactly the Retry-After
    assert job.status is ProviderJobStatus.QUEUED
    assert route.call_count == 2
    assert sleep.calls == [3.0]


def test_gateway_429_is_a_transient_http_error_carrying_retry_after(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep
) -> None:
    # Given the gateway keeps rate-limiting with a Retry-After of 2 s
    route = router.get(QUERY_PATH).respond(429, headers={"Retry-After": "2"}, json=gateway_error("slow down"))

    # When we fetch
    with pytest.raises(TransientHttpError) as caught:
        provider.fetch(TASK_ID)

    # Then the last error is transient, with the status and hint, after the budget of 3 calls spaced 2 s apart
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 2.0
    assert route.call_count == 3
    assert sleep.calls == [2.0, 2.0]


def test_submit_429_without_a_hint_is_transient_and_not_resent(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep
) -> None:
    # Given the gateway rate-limits (429) with no Retry-After
    route = router.post(CREATE_PATH).respond(429, json=gateway_error("rate limited"))

    # When we submit
    with pytest.raises(ProviderTransientError, match="rate limited") as caught:
        provider.submit(submission())

    # Then it is transient (nothing was created: safe to send again later), without a hint, after one call
    assert caught.value.retry_after is None and caught.value.is_rate_limit
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_submit_500_is_outcome_unknown_after_exactly_one_call(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, status: int
) -> None:
    # Given the gateway answers a submit with a server error that does not prove the task was not created
    route = router.post(CREATE_PATH).respond(status, json=gateway_error("upstream error"))

    # When we submit
    with pytest.raises(ProviderOutcomeUnknownError) as caught:
        provider.submit(submission())

    # Then it was sent exactly once: a second POST could be a second paid task
    assert caught.value.code == str(status)
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_fetch_5xx_is_transient_and_retried(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, status: int
) -> None:
    # Given the gateway fails the status query with a server error, then answers
    route = router.get(QUERY_PATH).mock(
        side_effect=[httpx.Response(status, text="<html>Bad Gateway</html>"), httpx.Response(200, json=envelope())]
    )

    # When we fetch
    job = provider.fetch(TASK_ID)

    # Then the GET was retried once (it is harmless) and the answer used
    assert job.status is ProviderJobStatus.QUEUED
    assert route.call_count == 2
    assert len(sleep.calls) == 1


def test_fetch_non_json_502_every_time_is_transient_with_the_body_text(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a gateway answering 502 with an HTML page every time
    route = router.get(QUERY_PATH).respond(502, text="<html>Bad Gateway</html>")

    # When we fetch
    with pytest.raises(ProviderTransientError) as caught:
        provider.fetch(TASK_ID)

    # Then it is transient, mentions the status and text, coded with the status, and the budget was used
    assert "502" in str(caught.value)
    assert "Bad Gateway" in str(caught.value)
    assert caught.value.code == "502"
    assert route.call_count == 3


def test_unexpected_non_2xx_status_is_a_plain_provider_error(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a redirect (httpx does not follow it), which no documented answer uses
    route = router.get(QUERY_PATH).respond(302, headers={"Location": "https://elsewhere.test/"})

    # When we fetch
    with pytest.raises(ProviderError) as caught:
        provider.fetch(TASK_ID)

    # Then it is a plain ProviderError, after one call
    assert type(caught.value) is ProviderError
    assert route.call_count == 1


# ---------------------------------------------------------------------------------------------- errors: Kling shape


@pytest.mark.parametrize("http_status", [200, 429])
def test_kling_1102_credits_exhausted_is_a_config_error_even_on_http_429(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, http_status: int
) -> None:
    # Given the account has run out of credits (Kling answers that with HTTP 429, yet it is no rate limit)
    route = router.post(CREATE_PATH).respond(http_status, json=kling_error(1102, "resource pack exhausted"))

    # When we submit
    with pytest.raises(ProviderConfigError) as caught:
        provider.submit(submission())

    # Then it is an account problem for an operator: coded 1102, with the message and request id, not retried
    assert caught.value.code == "1102"
    assert "resource pack exhausted" in str(caught.value)
    assert "req-err-1" in str(caught.value)
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("code", [1000, 1004, 1101, 1103, 1304])
def test_kling_auth_and_account_codes_are_config_errors(
    router: respx.MockRouter, provider: CometApiProvider, code: int
) -> None:
    # Given a Kling-style refusal about the key, the account or the IP allow-list
    router.post(CREATE_PATH).respond(200, json=kling_error(code))

    # When we submit
    # Then it is a configuration error with that code
    with pytest.raises(ProviderConfigError) as caught:
        provider.submit(submission())
    assert caught.value.code == str(code)


@pytest.mark.parametrize("http_status", [200, 400])
def test_kling_1301_content_safety_is_an_input_error(
    router: respx.MockRouter, provider: CometApiProvider, http_status: int
) -> None:
    # Given the content safety system refuses the inputs
    route = router.post(CREATE_PATH).respond(http_status, json=kling_error(1301, "content risk"))

    # When we submit
    with pytest.raises(ProviderInputError) as caught:
        provider.submit(submission())

    # Then the input must change: coded 1301, not retried
    assert caught.value.code == "1301"
    assert "content risk" in str(caught.value)
    assert route.call_count == 1


@pytest.mark.parametrize("code", [1200, 1201, "1201", 1203, 1300])
def test_kling_other_1xxx_codes_are_input_errors(
    router: respx.MockRouter, provider: CometApiProvider, code: int | str
) -> None:
    # Given any other Kling 1xxx refusal (a numeric string counts too)
    router.post(CREATE_PATH).respond(200, json={"code": code, "message": "invalid parameter"})

    # When we submit
    # Then it is an input error with that code
    with pytest.raises(ProviderInputError) as caught:
        provider.submit(submission())
    assert caught.value.code == str(code)


@pytest.mark.parametrize("code", [1302, 1303])
@pytest.mark.parametrize("http_status", [200, 429])
def test_kling_rate_or_concurrency_limit_on_submit_is_raised_at_once_whatever_the_http_status(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, http_status: int, code: int
) -> None:
    # Given Kling refuses a submit for the account's rate (1302) or concurrency (1303) limit: the task was not taken
    route = router.post(CREATE_PATH).respond(http_status, json=kling_error(code, "parallel task over resource pack"))

    # When we submit
    with pytest.raises(TransientHttpError) as caught:
        provider.submit(submission())

    # Then it is a transient rate limit with that code, raised after the one call: the Kling code decides, not the
    # HTTP status, and the dispatcher pauses CometAPI's line instead of this call resending it
    assert caught.value.code == str(code)
    assert caught.value.is_rate_limit
    assert route.call_count == 1
    assert sleep.calls == []


def test_kling_1302_carries_its_retry_after_to_the_caller(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep
) -> None:
    # Given a rate-limit refusal (1302) with a Retry-After of 1 s (and a second attempt would be accepted)
    route = router.post(CREATE_PATH).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "1"}, json=kling_error(1302, "rate limit")),
            httpx.Response(200, json=envelope()),
        ]
    )

    # When we submit
    with pytest.raises(TransientHttpError) as caught:
        provider.submit(submission())

    # Then it was sent once, and the hinted wait is the caller's to keep
    assert caught.value.retry_after == 1.0
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("http_status", [200, 429])
def test_kling_1303_on_fetch_is_still_retried(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, http_status: int
) -> None:
    # Given a status query refused once for the concurrency limit, then answered
    route = router.get(QUERY_PATH).mock(
        side_effect=[
            httpx.Response(http_status, json=kling_error(1303, "parallel task over resource pack")),
            httpx.Response(200, json=envelope()),
        ]
    )

    # When we fetch
    job = provider.fetch(TASK_ID)

    # Then the query was asked again within the call
    assert job.provider_task_id == TASK_ID
    assert route.call_count == 2
    assert len(sleep.calls) == 1


@pytest.mark.parametrize(("code", "http_status"), [(5000, 500), (5001, 503), (5002, 504), (5000, 200)])
def test_kling_5000_to_5002_on_submit_is_outcome_unknown_after_one_call(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, code: int, http_status: int
) -> None:
    # Given Kling reports a server-side failure to a submit (even as HTTP 503)
    route = router.post(CREATE_PATH).respond(http_status, json=kling_error(code, "server error"))

    # When we submit
    with pytest.raises(ProviderOutcomeUnknownError) as caught:
        provider.submit(submission())

    # Then it is never resent: the task may exist
    assert caught.value.code == str(code)
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("code", [5000, 5001, 5002])
def test_kling_5000_to_5002_on_fetch_is_transient_and_retried(
    router: respx.MockRouter, provider: CometApiProvider, code: int
) -> None:
    # Given Kling keeps reporting a server-side failure to a status query
    route = router.get(QUERY_PATH).respond(200, json=kling_error(code, "server error"))

    # When we fetch
    with pytest.raises(ProviderTransientError) as caught:
        provider.fetch(TASK_ID)

    # Then it is transient with that code, asked up to the budget
    assert caught.value.code == str(code)
    assert route.call_count == 3


@pytest.mark.parametrize("code", [42, 5003, 9999, "task_not_exist"])
def test_other_codes_in_a_200_are_plain_provider_errors(
    router: respx.MockRouter, provider: CometApiProvider, code: int | str
) -> None:
    # Given a 200 whose envelope code is non-zero and not one Kling documents (or a gateway's textual code)
    route = router.get(QUERY_PATH).respond(200, json={"code": code, "message": "something else"})

    # When we fetch
    with pytest.raises(ProviderError) as caught:
        provider.fetch(TASK_ID)

    # Then it is a plain ProviderError carrying that code, after one call
    assert type(caught.value) is ProviderError
    assert caught.value.code == str(code)
    assert route.call_count == 1


def test_unknown_kling_code_on_a_submit_500_falls_back_to_the_status_and_is_outcome_unknown(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a submit answered HTTP 500 with a code Kling does not document
    route = router.post(CREATE_PATH).respond(500, json={"code": 9999, "message": "odd"})

    # When we submit
    # Then the HTTP status decides: the task may exist, so it is outcome-unknown, sent once, coded 9999
    with pytest.raises(ProviderOutcomeUnknownError) as caught:
        provider.submit(submission())
    assert caught.value.code == "9999"
    assert route.call_count == 1


def test_textual_gateway_code_on_a_400_is_an_input_error_with_that_code(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a task-gateway error with a textual code
    router.post(CREATE_PATH).respond(400, json={"code": "invalid_request", "message": "image is required"})

    # When we submit
    # Then the HTTP status decides, and the textual code is kept
    with pytest.raises(ProviderInputError) as caught:
        provider.submit(submission())
    assert caught.value.code == "invalid_request"


# ---------------------------------------------------------------------------------------------- errors: transport


def test_submit_read_timeout_is_outcome_unknown_after_one_call(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep
) -> None:
    # Given the request went out but the answer never came
    route = router.post(CREATE_PATH).mock(side_effect=httpx.ReadTimeout("timed out"))

    # When we submit
    with pytest.raises(ProviderOutcomeUnknownError):
        provider.submit(submission())

    # Then the POST was made exactly once: a second POST could create a second paid task
    assert route.call_count == 1
    assert sleep.calls == []


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("")])
def test_submit_connect_error_is_retried_because_nothing_was_sent(
    router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep, exc: Exception
) -> None:
    # Given the first connection attempt fails, then CometAPI accepts
    route = router.post(CREATE_PATH).mock(side_effect=[exc, httpx.Response(200, json=envelope())])

    # When we submit
    job = provider.submit(submission())

    # Then the submit was retried once and succeeded
    assert job.provider_task_id == TASK_ID
    assert route.call_count == 2
    assert len(sleep.calls) == 1


def test_fetch_read_timeout_is_retried(router: respx.MockRouter, provider: CometApiProvider, sleep: FakeSleep) -> None:
    # Given the first GET times out while reading, the second answers
    route = router.get(QUERY_PATH).mock(
        side_effect=[httpx.ReadTimeout("timed out"), httpx.Response(200, json=envelope(task("processing")))]
    )

    # When we fetch
    job = provider.fetch(TASK_ID)

    # Then the GET was retried (it is harmless) and the answer used
    assert job.status is ProviderJobStatus.PROCESSING
    assert route.call_count == 2
    assert len(sleep.calls) == 1


def test_unsupported_url_scheme_is_a_config_error() -> None:
    # Given a provider configured with a base URL httpx cannot speak
    broken = CometApiProvider(API_KEY, base_url="ftp://api.cometapi.test")

    # When we fetch
    # Then it is a configuration error
    with pytest.raises(ProviderConfigError, match="URL scheme"):
        broken.fetch(TASK_ID)
    broken.close()


# ---------------------------------------------------------------------------------------------- the key stays secret


def test_key_is_never_in_repr_errors_or_logs_even_when_the_gateway_echoes_it(
    router: respx.MockRouter, provider: CometApiProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a gateway that echoes our key back in its error, on every attempt
    router.post(CREATE_PATH).respond(429, json=gateway_error(f"token {API_KEY} is rate limited", code=API_KEY))
    router.get(QUERY_PATH).respond(401, json={"code": 1002, "message": f"bad authorization Bearer {API_KEY}"})

    # When we submit and fetch with logging captured at DEBUG
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ProviderTransientError) as submitted:
            provider.submit(submission())
        with pytest.raises(ProviderConfigError) as fetched:
            provider.fetch(TASK_ID)

    # Then neither the errors (message or code), nor the logs, nor the provider's repr contain the key
    texts = [str(submitted.value), str(submitted.value.code), str(fetched.value), caplog.text, repr(provider)]
    for text in texts:
        assert API_KEY not in text
    assert "[redacted]" in str(submitted.value)


def test_submit_refused_because_our_task_id_already_exists_is_an_unknown_outcome_not_bad_input(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given CometAPI refuses a create because its external_task_id (our task id) was already used by an earlier attempt
    router.post(CREATE_PATH).respond(400, json=kling_error(1201, "external_task_id already exists"))
    # When we submit
    with pytest.raises(ProviderOutcomeUnknownError):
        provider.submit(submission())
    # Then it is not blamed on the input: the earlier attempt was taken, and its callback will tell


def test_fetch_reports_our_task_id_as_the_external_id(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given CometAPI's record of the task carries the external_task_id we sent
    router.get(QUERY_PATH).respond(200, json=envelope(task("processing", task_info={"external_task_id": "our-task"})))
    # Then the job says so, so the pipeline can check a callback belongs to the task it was sent to
    assert provider.fetch(TASK_ID).external_id == "our-task"


# ---------------------------------------------------------------------------------------------- find_by_task


def test_find_by_task_queries_by_our_external_task_id(router: respx.MockRouter, provider: CometApiProvider) -> None:
    # Given CometAPI made a task for our task-1 (its create answer was lost)
    route = router.get(f"{CREATE_PATH}/task-1").respond(200, json=envelope(task("processing")))
    # When we look it up by our id
    job = provider.find_by_task("task-1")
    # Then it is found, under CometAPI's own id
    assert provider.finds_by_task
    assert job is not None and (job.provider_task_id, job.status) == (TASK_ID, ProviderJobStatus.PROCESSING)
    assert route.called


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, kling_error(1203, "task not found")), (404, gateway_error("not found"))],
    ids=["kling-1203", "gateway-404"],
)
def test_find_by_task_answers_none_when_there_is_no_such_task(
    router: respx.MockRouter, provider: CometApiProvider, status: int, body: dict[str, Any]
) -> None:
    router.get(f"{CREATE_PATH}/task-1").respond(status, json=body)
    assert provider.find_by_task("task-1") is None


def test_find_by_task_ignores_a_task_made_for_another_of_ours(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given the lookup answers with a task whose external id is not ours
    router.get(f"{CREATE_PATH}/task-2").respond(200, json=envelope(task("processing")))
    # Then it is not taken for ours
    assert provider.find_by_task("task-2") is None


def test_find_by_task_passes_on_a_provider_that_cannot_answer(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    router.get(f"{CREATE_PATH}/task-1").respond(503, json=gateway_error("busy"))
    with pytest.raises(ProviderTransientError):
        provider.find_by_task("task-1")


# ---------------------------------------------------------------------------------------------- echoed secrets

# What CometAPI may echo back of what we sent: presigned inputs, our callback URL with its token, our key.
SIGNED_AUDIO = (
    "https://bucket.s3.amazonaws.com/in/voice.mp3?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIAEXAMPLECREDENTIAL%2F20250601%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN&X-Amz-Signature=5f1e0c0ffee5ignature"
)
CALLBACK_TOKEN = "cb-token-9f8e7d6c5b4a"
CALLBACK_URL = f"https://hooks.example.com/webhooks/cometapi?task_id=task-1&token={CALLBACK_TOKEN}"
ECHOED_SECRETS = (
    "ASIAEXAMPLECREDENTIAL",
    "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN",
    "5f1e0c0ffee5ignature",
    CALLBACK_TOKEN,
    API_KEY,
)
ECHO = f"sound_file {SIGNED_AUDIO} unreachable; callback_url {CALLBACK_URL}"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(400, kling_error(1201, ECHO), id="kling-1201"),
        pytest.param(400, gateway_error(ECHO), id="gateway-error"),
        pytest.param(400, ECHO, id="text"),
        pytest.param(200, {"code": "bad_request", "message": ECHO}, id="textual-code-in-200"),
    ],
)
def test_an_error_body_echoing_our_signed_urls_and_callback_token_is_quoted_without_them(
    router: respx.MockRouter, provider: CometApiProvider, status: int, body: dict[str, Any] | str
) -> None:
    # Given CometAPI refuses a create with an error body that echoes our presigned input and callback URL
    answer = httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)
    router.post(CREATE_PATH).mock(return_value=answer)

    # When we submit
    with pytest.raises(ProviderError) as caught:
        provider.submit(submission())

    # Then the error still says which input and which callback, but carries none of their secrets
    message = str(caught.value)
    for secret in ECHOED_SECRETS:
        assert secret not in message
    assert "bucket.s3.amazonaws.com/in/voice.mp3" in message
    assert "hooks.example.com/webhooks/cometapi" in message


def test_a_failed_task_echoing_a_signed_url_and_a_bearer_key_reports_its_failure_without_them(
    router: respx.MockRouter, provider: CometApiProvider
) -> None:
    # Given a task that failed with a status message quoting our presigned input and an Authorization header
    failed = task("failed", task_status_msg=f"fetching {SIGNED_AUDIO} with Bearer other-key-0123456789 failed")
    router.get(QUERY_PATH).respond(200, json=envelope(failed))

    # When we fetch it
    job = provider.fetch(TASK_ID)

    # Then its failure message keeps the input's path but neither the signature, the credentials nor the bearer key
    assert job.status is ProviderJobStatus.FAILED
    assert job.error_message is not None
    assert "bucket.s3.amazonaws.com/in/voice.mp3" in job.error_message
    for secret in (*ECHOED_SECRETS, "other-key-0123456789"):
        assert secret not in job.error_message
