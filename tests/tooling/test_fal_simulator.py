"""The fal simulator speaks fal's queue API: statuses and positions, results and their retention, cancel, errors,
Ed25519-signed webhooks against a JWKS, key rotation, faults, and fal's official client.

Each test runs a simulator on 127.0.0.1 plus a small local peer that serves the input image and audio and records
the webhooks it receives. Time runs fast (time_factor) so the whole file stays quick.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from support.peer import Hook, Peer

from avatar_local.simulators.fal import (
    LARGE_RESULT_BYTES,
    WEBHOOK_ATTEMPTS,
    FalFaultPlan,
    FalSimulator,
    result_retention_seconds,
)
from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech, probe_media

KLING = "fal-ai/kling-video/ai-avatar/v2/standard"
KLING_PRO = "fal-ai/kling-video/ai-avatar/v2/pro"
OMNIHUMAN = "fal-ai/bytedance/omnihuman/v1.5"
INFINITALK = "fal-ai/infinitalk"
AUTH = {"Authorization": "Key test-key-id:test-key-secret"}
SPEECH_SECONDS = 1.0
QUICK = FalFaultPlan(processing_seconds=1.0)  # with time_factor=10: 0.1 s of real time
TOLERANCE_SECONDS = 300
OFFICIAL_CLIENT = Path(__file__).resolve().parents[1] / "support" / "fal_official_client.py"


# ------------------------------------------------------------------------------------------------ the local peer


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    serving = Peer(make_sample_portrait(160, 200), make_sample_speech(SPEECH_SECONDS))
    yield serving
    serving.close()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., FalSimulator]]:
    started: list[FalSimulator] = []

    def make(**kwargs: Any) -> FalSimulator:
        kwargs.setdefault("time_factor", 10.0)
        kwargs.setdefault("faults", QUICK.model_copy())
        sim = FalSimulator(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., FalSimulator]) -> FalSimulator:
    return make_sim()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, timeout=10.0) as http:
        yield http


# ------------------------------------------------------------------------------------------------ helpers


def inputs(peer: Peer, **extra: Any) -> dict[str, Any]:
    return {"image_url": peer.url("/image.png"), "audio_url": peer.url("/audio.mp3"), **extra}


def submit(
    client: httpx.Client, sim: FalSimulator, body: Any, *, model: str = KLING, webhook: str | None = None
) -> httpx.Response:
    params = {"fal_webhook": webhook} if webhook else None
    return client.post(f"{sim.base_url}/{model}", params=params, json=body)


def queued(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "IN_QUEUE"
    assert isinstance(answer, dict)
    return answer


def wait_completed(client: httpx.Client, status_url: str, timeout: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(status_url)
        if response.json().get("status") == "COMPLETED" or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def wait_status(client: httpx.Client, status_url: str, wanted: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data: dict[str, Any] = client.get(status_url).json()
        if data["status"] == wanted or time.monotonic() > deadline:
            return data
        time.sleep(0.01)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_fal_webhook(
    headers: Mapping[str, str], body: bytes, jwks: dict[str, Any], *, now: float | None = None
) -> bool:
    """fal's documented check: all four headers, a timestamp within 300 s, and an Ed25519 signature over
    ``request_id \\n user_id \\n timestamp \\n sha256(raw body) hex`` by one of the JWKS keys."""
    lowered = {name.lower(): value for name, value in headers.items()}
    names = ("x-fal-webhook-request-id", "x-fal-webhook-user-id", "x-fal-webhook-timestamp", "x-fal-webhook-signature")
    if not all(lowered.get(name) for name in names):
        return False
    request_id, user_id, timestamp, signature = (lowered[name] for name in names)
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    message = "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode("utf-8")
    for key in jwks["keys"]:
        if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
            continue
        try:
            Ed25519PublicKey.from_public_bytes(_b64url_decode(key["x"])).verify(bytes.fromhex(signature), message)
        except InvalidSignature:
            continue
        return True
    return False


def served_jwks(sim: FalSimulator) -> dict[str, Any]:
    response = httpx.get(f"{sim.base_url}/.well-known/jwks.json")  # no key: it is public
    assert response.status_code == 200
    jwks: dict[str, Any] = response.json()
    return jwks


def hook_for(peer: Peer, path: str, count: int = 1) -> list[Hook]:
    hooks = peer.wait_for_hooks(path, count)
    assert len(hooks) >= count, f"expected {count} webhook(s) at {path}, got {len(hooks)}"
    return hooks


# ------------------------------------------------------------------------------------------------ auth, ids, urls


def test_requests_without_the_right_key_are_401_and_the_jwks_needs_none(
    make_sim: Callable[..., FalSimulator], peer: Peer
) -> None:
    # Given a simulator accepting any key and one configured with a specific key
    open_sim, keyed_sim = make_sim(), make_sim(api_key="right:key")

    # When submits come without a key, with a Bearer token instead of a Key, or with the wrong key
    missing = httpx.post(f"{open_sim.base_url}/{KLING}", json=inputs(peer))
    bearer = httpx.post(f"{open_sim.base_url}/{KLING}", json=inputs(peer), headers={"Authorization": "Bearer x"})
    wrong = httpx.post(f"{keyed_sim.base_url}/{KLING}", json=inputs(peer), headers={"Authorization": "Key wrong"})
    right = httpx.post(f"{keyed_sim.base_url}/{KLING}", json=inputs(peer), headers={"Authorization": "Key right:key"})

    # Then they are 401 with a detail, and queue nothing; the right key is queued; the JWKS is public
    for response in (missing, bearer, wrong):
        assert response.status_code == 401
        assert isinstance(response.json()["detail"], str)
    assert open_sim.jobs() == []
    assert queued(right)["request_id"]
    assert served_jwks(open_sim)["keys"]


def test_submit_answers_in_queue_with_urls_under_the_owner_and_app_only(
    sim: FalSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a running simulator, When each supported model gets a request (one with a webhook)
    answers = {
        model: queued(submit(client, sim, inputs(peer, prompt="hi"), model=model, webhook=peer.url("/h")))
        for model in (KLING, KLING_PRO, OMNIHUMAN, INFINITALK)
    }

    # Then each answer is IN_QUEUE with a request id and URLs built from owner/app, as fal builds them
    apps = {KLING: "fal-ai/kling-video", KLING_PRO: "fal-ai/kling-video", OMNIHUMAN: "fal-ai/bytedance"}
    apps[INFINITALK] = "fal-ai/infinitalk"
    for model, answer in answers.items():
        base = f"{sim.base_url}/{apps[model]}/requests/{answer['request_id']}"
        assert answer["response_url"] == base
        assert answer["status_url"] == f"{base}/status"
        assert answer["cancel_url"] == f"{base}/cancel"
        assert answer["gateway_request_id"] == answer["request_id"]
        assert isinstance(answer["queue_position"], int)
    assert len({answer["request_id"] for answer in answers.values()}) == 4
    assert sim.wait_until_idle(10)


def test_unknown_model_or_request_is_404_and_a_request_is_not_found_under_another_app(
    sim: FalSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a completed request
    answer = queued(submit(client, sim, inputs(peer)))
    assert wait_completed(client, answer["status_url"]).status_code == 200

    # When an unknown model is submitted to, an unknown id is asked for, and the known id under another app
    unknown_model = submit(client, sim, inputs(peer), model="fal-ai/no-such-model")
    unknown = f"{sim.base_url}/fal-ai/kling-video/requests/00000000-0000-0000-0000-000000000000"
    elsewhere = f"{sim.base_url}/fal-ai/infinitalk/requests/{answer['request_id']}"

    # Then each is 404; cancel says NOT_FOUND
    assert unknown_model.status_code == 404 and "detail" in unknown_model.json()
    for url in (unknown, f"{unknown}/status", elsewhere, f"{elsewhere}/status"):
        assert client.get(url).status_code == 404, url
    not_found = client.put(f"{unknown}/cancel")
    assert not_found.status_code == 404 and not_found.json() == {"status": "NOT_FOUND"}


# ------------------------------------------------------------------------------------------------ queue


def test_requests_beyond_the_concurrency_wait_in_queue_with_falling_positions(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given the default concurrency (2) and requests that each take 0.5 s of real time
    sim = make_sim(faults=FalFaultPlan(processing_seconds=5.0))
    assert sim.max_concurrent == 2

    # When five requests are submitted at once
    answers = [queued(submit(client, sim, inputs(peer))) for _ in range(5)]
    first_two = [wait_status(client, answer["status_url"], "IN_PROGRESS") for answer in answers[:2]]
    waiting = [client.get(answer["status_url"]) for answer in answers[2:]]

    # Then none is refused: two run and three wait IN_QUEUE (HTTP 202) at positions 0, 1, 2
    assert [data["status"] for data in first_two] == ["IN_PROGRESS", "IN_PROGRESS"]
    assert [response.status_code for response in waiting] == [202, 202, 202]
    assert [response.json()["status"] for response in waiting] == ["IN_QUEUE"] * 3
    assert [response.json()["queue_position"] for response in waiting] == [0, 1, 2]

    # And the last one's position only falls, reaching 0, until it runs
    positions: list[int] = []
    while (data := client.get(answers[4]["status_url"]).json())["status"] == "IN_QUEUE":
        positions.append(data["queue_position"])
        time.sleep(0.02)
    assert positions[0] == 2 and positions[-1] == 0
    assert positions == sorted(positions, reverse=True)

    # And all five complete, never more than two at once
    assert sim.wait_until_idle(10)
    assert all(client.get(answer["status_url"]).json()["status"] == "COMPLETED" for answer in answers)
    assert sim.peak_processing == 2


def test_status_goes_in_queue_then_in_progress_then_completed_with_logs_only_when_asked(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given one worker busy with a first request, and a second request queued behind it
    sim = make_sim(max_concurrent=1, faults=FalFaultPlan(processing_seconds=3.0))
    first = queued(submit(client, sim, inputs(peer)))
    second = queued(submit(client, sim, inputs(peer)))

    # When the second's status is followed, with and without logs, and its result asked for early
    in_queue = client.get(second["status_url"])
    early_result = client.get(second["response_url"])
    in_progress = wait_status(client, second["status_url"], "IN_PROGRESS")
    completed = wait_completed(client, second["status_url"])
    with_logs = client.get(second["status_url"], params={"logs": 1})

    # Then it is IN_QUEUE (202, position 0), IN_PROGRESS, then COMPLETED (200) with metrics and no error
    assert in_queue.status_code == 202
    assert in_queue.json()["status"] == "IN_QUEUE" and in_queue.json()["queue_position"] == 0
    assert early_result.status_code == 400
    assert in_progress["status"] == "IN_PROGRESS" and "queue_position" not in in_progress
    assert completed.status_code == 200
    body = completed.json()
    assert body["status"] == "COMPLETED" and body["logs"] is None
    assert body["metrics"]["inference_time"] >= 3.0
    assert "error" not in body
    # And logs come as a list of lines only with logs=1
    lines = with_logs.json()["logs"]
    assert [line["message"] for line in lines][-1] == "Request completed"
    assert all({"message", "level", "timestamp"} <= set(line) for line in lines)
    assert client.get(first["status_url"]).json()["status"] == "COMPLETED"


# ------------------------------------------------------------------------------------------------ results


def test_result_is_the_model_output_with_a_real_mp4_as_long_as_the_audio(
    sim: FalSimulator, peer: Peer, client: httpx.Client, tmp_path: Path
) -> None:
    # Given a Kling request and an InfiniTalk request (with its required prompt and a seed)
    kling = queued(submit(client, sim, inputs(peer)))
    infinitalk = queued(submit(client, sim, inputs(peer, prompt="A person talks.", seed=7), model=INFINITALK))

    # When both complete and their results are fetched
    for answer in (kling, infinitalk):
        assert wait_completed(client, answer["status_url"]).status_code == 200
    kling_result = client.get(kling["response_url"])
    infinitalk_result = client.get(infinitalk["response_url"])

    # Then Kling's output is {video, duration} and InfiniTalk's {video, seed}
    assert kling_result.status_code == 200 and infinitalk_result.status_code == 200
    output = kling_result.json()
    assert set(output) == {"video", "duration"}
    assert set(infinitalk_result.json()) == {"video", "seed"} and infinitalk_result.json()["seed"] == 7
    video = output["video"]
    assert video["content_type"] == "video/mp4" and video["file_name"].endswith(".mp4")
    assert abs(output["duration"] - SPEECH_SECONDS) < 0.1
    # And the video URL serves a real MP4 of file_size bytes, as long as the audio
    download = httpx.get(video["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    assert len(download.content) == video["file_size"]
    path = tmp_path / "out.mp4"
    path.write_bytes(download.content)
    info = probe_media(path)
    assert info.has_video and info.has_audio
    assert abs(info.duration - SPEECH_SECONDS) < 0.1


@pytest.mark.parametrize(("num_frames", "seconds"), [(41, 41 / 25), (None, 145 / 25), (250, 6.0)])
def test_infinitalk_makes_only_the_frames_it_is_told_so_the_video_may_stop_before_the_voice(
    sim: FalSimulator, client: httpx.Client, tmp_path: Path, num_frames: int | None, seconds: float
) -> None:
    # Given a 6 s voice clip, and an InfiniTalk request for 41 frames, for none (its default: 145), or for 250
    long_voice = Peer(make_sample_portrait(160, 200), make_sample_speech(6.0))
    try:
        frames = {} if num_frames is None else {"num_frames": num_frames}
        body = inputs(long_voice, prompt="A person talks.", **frames)
        answer = queued(submit(client, sim, body, model=INFINITALK))
        # When it completes
        assert wait_completed(client, answer["status_url"]).status_code == 200
        video = client.get(answer["response_url"]).json()["video"]
    finally:
        long_voice.close()
    # Then its video lasts num_frames at 25 a second (1.64 s, 5.8 s), or the whole voice when that is shorter
    path = tmp_path / "out.mp4"
    path.write_bytes(httpx.get(video["url"]).content)
    assert abs(probe_media(path).duration - seconds) < 0.1


def test_result_answers_404_after_the_scaled_retention_while_status_and_video_stay(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given time 3600x fast: a small result's hour of retention lasts 1 s of real time
    sim = make_sim(time_factor=3600.0)
    answer = queued(submit(client, sim, inputs(peer)))
    assert wait_completed(client, answer["status_url"]).status_code == 200

    # When the result is fetched at once, and again after the retention has passed
    fresh = client.get(answer["response_url"])
    time.sleep(1.2)
    expired = client.get(answer["response_url"])

    # Then it is there at first and 404 later; the status still says COMPLETED and the CDN video is still served
    assert fresh.status_code == 200
    assert expired.status_code == 404
    assert client.get(answer["status_url"]).json()["status"] == "COMPLETED"
    assert httpx.get(fresh.json()["video"]["url"]).status_code == 200


def test_retention_is_an_hour_or_six_minutes_from_10_kb_on() -> None:
    # Given results just under and at fal's 10 KB threshold, When their retention is asked
    # Then a small one is kept 1 h and a large one 6 min (simulated seconds)
    assert result_retention_seconds(LARGE_RESULT_BYTES - 1) == 3600.0
    assert result_retention_seconds(LARGE_RESULT_BYTES) == 360.0


def test_missing_inputs_end_the_request_with_a_422_detail_in_result_status_and_webhook(
    sim: FalSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given Kling without image_url and audio_url, InfiniTalk without its prompt, OmniHuman with a bad resolution
    path = peer.new_hook_path()
    kling = queued(submit(client, sim, {"prompt": "hi"}, webhook=peer.url(path)))
    infinitalk = queued(submit(client, sim, inputs(peer), model=INFINITALK))
    omnihuman = queued(submit(client, sim, inputs(peer, resolution="4k"), model=OMNIHUMAN))

    # When they have run
    statuses = [wait_completed(client, answer["status_url"]) for answer in (kling, infinitalk, omnihuman)]
    results = [client.get(answer["response_url"]) for answer in (kling, infinitalk, omnihuman)]

    # Then each is COMPLETED with an error, and its result is the model's 422 {"detail": [{loc, msg, type}]}
    for status in statuses:
        assert status.status_code == 200 and status.json()["error"] == "Invalid status code: 422"
    assert [result.status_code for result in results] == [422, 422, 422]
    missing = results[0].json()["detail"]
    assert [(entry["loc"], entry["type"]) for entry in missing] == [
        (["body", "image_url"], "value_error.missing"),
        (["body", "audio_url"], "value_error.missing"),
    ]
    assert all(entry["msg"] for entry in missing)
    assert [entry["loc"] for entry in results[1].json()["detail"]] == [["body", "prompt"]]
    assert results[2].json()["detail"][0]["loc"] == ["body", "resolution"]
    # And the webhook says ERROR with the same detail as its payload
    event = hook_for(peer, path)[0].json
    assert event["status"] == "ERROR" and event["error"] == "Invalid status code: 422"
    assert event["request_id"] == kling["request_id"]
    assert event["payload"] == {"detail": missing}


def test_an_input_that_cannot_be_downloaded_fails_with_file_download_error(
    sim: FalSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given an image URL the peer answers 404 to
    answer = queued(submit(client, sim, inputs(peer, image_url=peer.url("/missing.png"))))

    # When the request has run
    status = wait_completed(client, answer["status_url"]).json()
    result = client.get(answer["response_url"])

    # Then it failed as fal reports an unreachable file: 422 file_download_error on image_url
    assert status["error"] == "Invalid status code: 422"
    assert result.status_code == 422
    detail = result.json()["detail"][0]
    assert detail["loc"] == ["body", "image_url"] and detail["type"] == "file_download_error"
    assert result.headers["x-fal-retryable"] == "false"


# ------------------------------------------------------------------------------------------------ cancel


def test_cancel_while_queued_means_it_never_runs_and_a_completed_one_is_already_completed(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given one worker busy with a long request (with a webhook) and a second waiting behind it
    sim = make_sim(max_concurrent=1, faults=FalFaultPlan(processing_seconds=3.0))
    path = peer.new_hook_path()
    running = queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))
    waiting = queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))
    assert wait_status(client, running["status_url"], "IN_PROGRESS")["status"] == "IN_PROGRESS"

    # When both are cancelled (the running one only gets the signal), and the finished one again afterwards
    cancelled_waiting = client.put(waiting["cancel_url"])
    cancelled_running = client.put(running["cancel_url"])
    assert sim.wait_until_idle(10)
    again = client.put(running["cancel_url"])

    # Then both cancels are 202 CANCELLATION_REQUESTED; the queued one never ran, the running one completed
    for response in (cancelled_waiting, cancelled_running):
        assert response.status_code == 202 and response.json() == {"status": "CANCELLATION_REQUESTED"}
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}
    assert client.get(running["response_url"]).status_code == 200
    waiting_status = client.get(waiting["status_url"]).json()
    assert waiting_status["status"] == "COMPLETED" and waiting_status["error_type"] == "client_cancelled"
    assert "Request started" not in [line["message"] for line in sim_logs(client, waiting["status_url"])]
    assert client.get(waiting["response_url"]).status_code == 499
    # And only the request that ran sent a webhook
    time.sleep(0.1)
    assert [hook.json["request_id"] for hook in peer.hooks_at(path)] == [running["request_id"]]
    assert sim.peak_processing == 1


def sim_logs(client: httpx.Client, status_url: str) -> list[dict[str, Any]]:
    logs: list[dict[str, Any]] = client.get(status_url, params={"logs": "1"}).json()["logs"]
    return logs


# ------------------------------------------------------------------------------------------------ webhooks


def test_webhook_is_the_ok_event_signed_with_ed25519_and_verifies_against_the_served_jwks(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator for user "user-42" and a request with a webhook
    sim = make_sim(user_id="user-42")
    path = peer.new_hook_path()
    answer = queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))

    # When it completes and the webhook arrives
    hook = hook_for(peer, path)[0]
    result = client.get(answer["response_url"]).json()

    # Then the body is {request_id, gateway_request_id, status: OK, payload: the result}
    assert hook.json == {
        "request_id": answer["request_id"],
        "gateway_request_id": answer["request_id"],
        "status": "OK",
        "payload": result,
    }
    # And the headers name the request and the user, with a current unix timestamp
    assert hook.headers["x-fal-webhook-request-id"] == answer["request_id"]
    assert hook.headers["x-fal-webhook-user-id"] == "user-42"
    assert abs(int(hook.headers["x-fal-webhook-timestamp"]) - time.time()) < 5
    # And the hex Ed25519 signature verifies against the served JWKS, the way fal documents it
    jwks = served_jwks(sim)
    assert [(key["kty"], key["crv"]) for key in jwks["keys"]] == [("OKP", "Ed25519")]
    assert len(_b64url_decode(jwks["keys"][0]["x"])) == 32 and "=" not in jwks["keys"][0]["x"]
    assert verify_fal_webhook(hook.headers, hook.body, jwks)
    # And a changed body, another user id or a timestamp out of tolerance does not verify
    assert not verify_fal_webhook(hook.headers, hook.body.replace(b'"OK"', b'"ERROR"'), jwks)
    assert not verify_fal_webhook({**hook.headers, "x-fal-webhook-user-id": "user-43"}, hook.body, jwks)
    assert not verify_fal_webhook(hook.headers, hook.body, jwks, now=time.time() + 301)


def test_webhook_is_retried_on_server_errors_and_each_attempt_is_signed(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given time 100x fast (first retries after 0.07 s and 0.14 s) and a receiver that answers 503 twice
    sim = make_sim(time_factor=100.0)
    path = peer.new_hook_path()
    peer.fail_first[path] = 2

    # When a request with that webhook completes
    answer = queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))
    hook = hook_for(peer, path)[0]
    assert sim.wait_until_idle(5)

    # Then the third attempt is taken, and the simulator recorded 503, 503, 200 for the same request
    deliveries = sim.webhook_deliveries()
    assert [(d["attempt"], d["status"]) for d in deliveries] == [(1, 503), (2, 503), (3, 200)]
    assert {d["request_id"] for d in deliveries} == {answer["request_id"]}
    assert verify_fal_webhook(hook.headers, hook.body, served_jwks(sim))
    assert WEBHOOK_ATTEMPTS == 11  # the first attempt and fal's 10 retries


def test_key_rotation_adds_a_signing_key_to_the_jwks_and_can_drop_the_old_one(
    sim: FalSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given the JWKS before rotation
    old_kid = sim.signing_kid
    before = served_jwks(sim)

    # When the signing key is rotated keeping the old one, and a webhook is sent
    new_kid = sim.rotate_signing_key()
    path = peer.new_hook_path()
    queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))
    hook = hook_for(peer, path)[0]
    during = served_jwks(sim)

    # Then both keys are listed, the webhook verifies with the new one and not with the old JWKS alone
    assert [key["kid"] for key in during["keys"]] == [old_kid, new_kid]
    assert verify_fal_webhook(hook.headers, hook.body, during)
    assert not verify_fal_webhook(hook.headers, hook.body, before)
    assert sim.webhook_deliveries()[-1]["kid"] == new_kid

    # When the old key is dropped, and later the key rotated without keeping the previous
    sim.drop_key(old_kid)
    after_drop = served_jwks(sim)
    with pytest.raises(ValueError, match="signing key"):
        sim.drop_key(new_kid)
    newest = sim.rotate_signing_key(keep_previous=False)

    # Then the JWKS lists only the remaining keys
    assert [key["kid"] for key in after_drop["keys"]] == [new_kid]
    assert verify_fal_webhook(hook.headers, hook.body, after_drop)
    assert [key["kid"] for key in served_jwks(sim)["keys"]] == [newest]


# ------------------------------------------------------------------------------------------------ faults


def test_webhook_signed_with_a_key_not_in_the_jwks_or_stale_fails_verification(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given one simulator that signs with a foreign key and one that stamps webhooks 10 min in the past
    foreign = make_sim(faults=FalFaultPlan(processing_seconds=1.0, foreign_key_signature_rate=1.0))
    stale = make_sim(faults=FalFaultPlan(processing_seconds=1.0, stale_timestamp_rate=1.0))
    foreign_path, stale_path = peer.new_hook_path(), peer.new_hook_path()

    # When each sends a webhook
    queued(submit(client, foreign, inputs(peer), webhook=peer.url(foreign_path)))
    queued(submit(client, stale, inputs(peer), webhook=peer.url(stale_path)))
    foreign_hook, stale_hook = hook_for(peer, foreign_path)[0], hook_for(peer, stale_path)[0]

    # Then the foreign one matches no JWKS key; the stale one is validly signed but outside the 300 s tolerance
    assert not verify_fal_webhook(foreign_hook.headers, foreign_hook.body, served_jwks(foreign))
    assert foreign.webhook_deliveries()[0]["kid"] not in {key["kid"] for key in served_jwks(foreign)["keys"]}
    timestamp = int(stale_hook.headers["x-fal-webhook-timestamp"])
    assert time.time() - timestamp >= 595
    assert not verify_fal_webhook(stale_hook.headers, stale_hook.body, served_jwks(stale))
    assert verify_fal_webhook(stale_hook.headers, stale_hook.body, served_jwks(stale), now=timestamp)


def test_payload_error_sends_a_null_payload_while_the_result_has_the_output(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator whose webhooks cannot carry the output
    sim = make_sim(faults=FalFaultPlan(processing_seconds=1.0, payload_error_rate=1.0))
    path = peer.new_hook_path()

    # When a request completes
    answer = queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))
    event = hook_for(peer, path)[0].json

    # Then the webhook is OK with payload null and a payload_error; the result endpoint has the video
    assert event["status"] == "OK" and event["payload"] is None and event["payload_error"]
    assert client.get(answer["response_url"]).json()["video"]["url"]


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [("request_timeout", 504, "request_timeout"), ("content_policy_violation", 422, None)],
)
def test_fail_rate_ends_the_request_with_the_plans_fal_error(
    make_sim: Callable[..., FalSimulator],
    peer: Peer,
    client: httpx.Client,
    kind: str,
    status: int,
    error_type: str | None,
) -> None:
    # Given a simulator failing every request with a request error or a model error
    sim = make_sim(
        faults=FalFaultPlan.model_validate({"processing_seconds": 1.0, "fail_rate": 1.0, "fail_error": kind})
    )
    path = peer.new_hook_path()

    # When a request has run
    answer = queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))
    completed = wait_completed(client, answer["status_url"]).json()
    result = client.get(answer["response_url"])
    event = hook_for(peer, path)[0].json

    # Then the status is COMPLETED with the error (and error_type for a request error), the result the error
    assert completed["error"] == f"Invalid status code: {status}"
    assert completed.get("error_type") == error_type
    assert result.status_code == status
    if error_type is None:
        assert result.json()["detail"][0]["type"] == kind
    else:
        assert result.json()["error_type"] == error_type and result.headers["x-fal-error-type"] == error_type
    assert event["status"] == "ERROR" and event["payload"] == result.json()


def test_submit_and_result_error_rates_answer_the_configured_status(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator answering 429 to every submit
    sim = make_sim(faults=FalFaultPlan(submit_error_rate=1.0, submit_error_status=429))

    # When a request is submitted
    refused = submit(client, sim, inputs(peer))

    # Then it is 429 with a Retry-After, and nothing is queued
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert sim.jobs() == []

    # When submits pass but status and result GETs all answer 503
    sim.set_faults(FalFaultPlan(processing_seconds=1.0))
    answer = queued(submit(client, sim, inputs(peer)))
    assert sim.wait_until_idle(5)
    sim.set_faults(FalFaultPlan(result_error_rate=1.0, result_error_status=503))

    # Then both answer 503; cancel is not affected
    assert client.get(answer["status_url"]).status_code == 503
    assert client.get(answer["response_url"]).status_code == 503
    assert client.put(answer["cancel_url"]).status_code == 400


def test_a_lost_answer_still_queues_the_request_and_it_completes(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator that loses the answer to every submit
    sim = make_sim(faults=FalFaultPlan(processing_seconds=1.0, lost_answer_rate=1.0))
    path = peer.new_hook_path()

    # When a request is submitted
    with pytest.raises(httpx.RemoteProtocolError):
        submit(client, sim, inputs(peer), webhook=peer.url(path))

    # Then the request exists anyway and completes, with its webhook sent; the log shows the submit as lost
    jobs = sim.jobs()
    assert len(jobs) == 1
    assert hook_for(peer, path)[0].json["request_id"] == jobs[0]["request_id"]
    assert sim.wait_until_idle(5)
    assert sim.jobs()[0]["status"] == "COMPLETED"
    assert [request["status"] for request in sim.submissions()] == ["lost"]


def test_webhooks_can_be_lost_duplicated_or_delayed(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given one simulator that loses webhooks, one that sends each twice, one that delays them 3 s (0.3 s real)
    lost = make_sim(faults=FalFaultPlan(processing_seconds=1.0, lost_webhook_rate=1.0))
    twice = make_sim(faults=FalFaultPlan(processing_seconds=1.0, duplicate_webhook_rate=1.0))
    late = make_sim(faults=FalFaultPlan(processing_seconds=1.0, webhook_delay_seconds=3.0))
    paths = {name: peer.new_hook_path() for name in ("lost", "twice", "late")}

    # When each completes a request
    answers = {
        name: queued(submit(client, sim, inputs(peer), webhook=peer.url(paths[name])))
        for name, sim in (("lost", lost), ("twice", twice), ("late", late))
    }
    assert wait_completed(client, answers["late"]["status_url"]).status_code == 200
    completed_at = time.monotonic()
    early = peer.hooks_at(paths["late"])
    late_hooks = hook_for(peer, paths["late"])
    waited = time.monotonic() - completed_at

    # Then the lost one never arrives (though the request completed), the duplicate twice with the same signed body
    assert lost.wait_until_idle(5) and lost.jobs()[0]["status"] == "COMPLETED"
    assert peer.hooks_at(paths["lost"]) == []
    assert lost.webhook_deliveries()[0]["lost"] is True
    copies = hook_for(peer, paths["twice"], 2)
    assert copies[0].body == copies[1].body
    assert all(verify_fal_webhook(copy.headers, copy.body, served_jwks(twice)) for copy in copies)
    assert [d["duplicate"] for d in twice.webhook_deliveries()] == [False, True]
    # And the delayed one arrives only about 0.3 s after the request showed COMPLETED
    assert early == [] and len(late_hooks) == 1
    assert waited >= 0.2
    assert late.wait_until_idle(5)


def test_a_truncated_download_sends_fewer_bytes_than_its_content_length(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a completed request, then a plan that cuts every output download halfway
    sim = make_sim()
    answer = queued(submit(client, sim, inputs(peer)))
    assert wait_completed(client, answer["status_url"]).status_code == 200
    video = client.get(answer["response_url"]).json()["video"]
    sim.set_faults(FaultPlan(truncated_download_rate=1.0))  # a plain plan is taken too

    # When the video is downloaded
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(video["url"])

    # Then the simulator counted one cut-off download
    assert sim.truncated_downloads == 1
    assert isinstance(sim.faults, FalFaultPlan)


def test_the_fault_plan_can_be_posted_with_fal_fields_and_inspections_list_everything(
    sim: FalSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a running simulator with one completed request
    queued(submit(client, sim, inputs(peer)))
    assert sim.wait_until_idle(5)

    # When a plan with fal's own fields is posted, and a bad one after it
    posted = httpx.post(
        f"{sim.base_url}/_sim/faults", json={"fail_error": "request_timeout", "stale_timestamp_rate": 1}
    )
    refused = httpx.post(f"{sim.base_url}/_sim/faults", json={"fail_error": "no_such_error"})

    # Then the first is in force and the second refused; the inspections list the request and the job
    assert posted.status_code == 200 and refused.status_code == 400
    assert sim.fal_faults.fail_error == "request_timeout" and sim.fal_faults.stale_timestamp_rate == 1.0
    assert [job["model"] for job in httpx.get(f"{sim.base_url}/_sim/jobs").json()] == [KLING]
    assert [r["path"] for r in httpx.get(f"{sim.base_url}/_sim/requests").json()] == [f"/{KLING}"]
    sim.reset()
    assert sim.requests() == [] and len(sim.jobs()) == 1


# ------------------------------------------------------------------------------------------------ fal's own client


def test_the_official_fal_client_submits_follows_status_and_fetches_the_result_over_https(
    make_sim: Callable[..., FalSimulator], peer: Peer, tmp_path: Path
) -> None:
    # Given the simulator serving HTTPS with its own CA, trusted through SSL_CERT_FILE, with a specific key
    sim = make_sim(tls=True, api_key="key-id:key-secret", faults=FalFaultPlan(processing_seconds=2.0))
    assert sim.base_url.startswith("https://") and sim.certificate_pem is not None
    ca = tmp_path / "fal-sim-ca.pem"
    ca.write_bytes(sim.certificate_pem)
    environment = {
        **os.environ,
        "FAL_QUEUE_RUN_HOST": sim.base_url.removeprefix("https://"),
        "FAL_KEY": "key-id:key-secret",
        "SSL_CERT_FILE": str(ca),
    }
    environment.pop("FAL_FORCE_AUTH_BY_USER", None)
    path = peer.new_hook_path()
    spec = {
        "model": KLING,
        "arguments": inputs(peer, prompt="A person talks."),
        "webhook_url": peer.url(path),
        "bad_arguments": {"image_url": peer.url("/image.png")},
    }

    # When fal_client (in its own process: it reads its host at import) submits, follows status and gets results
    run = subprocess.run(  # noqa: S603 - our interpreter and our script
        [sys.executable, str(OFFICIAL_CLIENT), json.dumps(spec)],
        env=environment,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr.decode()
    report = json.loads(run.stdout)

    # Then it used the simulator's host, and its handle holds the owner/app URLs the simulator answered
    assert report["queue_url_format"] == f"{sim.base_url}/"
    request_id = report["request_id"]
    assert report["urls"]["status"] == f"{sim.base_url}/fal-ai/kling-video/requests/{request_id}/status"
    # And it saw the request in progress, then completed (its Status types parse the simulator's answers)
    kinds = [event["type"] for event in report["events"]]
    assert kinds[-1] == "Completed" and "InProgress" in kinds
    assert report["status"]["type"] == "Completed" and report["status"]["error"] is None
    assert report["status"]["logs"]
    # And its result is the simulator's output, the same when fetched again
    job = sim.job(request_id)
    assert job is not None
    assert report["result"] == report["result_again"] == job["result"]
    assert report["result"]["video"]["url"].startswith(sim.base_url)
    # And its errors are FalClientHTTPError: 400 for cancelling a completed request, 422 with the detail for a
    # request that lacked its audio (whose status it reads as Completed with the error)
    assert report["cancel_completed"]["status_code"] == 400
    failed = report["failed_request"]
    assert failed["status_code"] == 422
    assert failed["message"][0]["loc"] == ["body", "audio_url"]
    assert report["failed_status"]["error"] == "Invalid status code: 422"
    # And the webhook it asked for arrived, verifiable against the simulator's JWKS
    hook = hook_for(peer, path)[0]
    assert hook.json["request_id"] == request_id
    jwks = httpx.get(f"{sim.base_url}/.well-known/jwks.json", verify=sim.client_ssl_context()).json()
    assert verify_fal_webhook(hook.headers, hook.body, jwks)
    # And every request it made carried its Key
    assert all(request["status"] != 401 for request in sim.requests())


def test_simulator_is_quiet_and_stops_promptly(
    make_sim: Callable[..., FalSimulator], peer: Peer, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a simulator with a long request running and a webhook receiver that keeps failing
    sim = make_sim(faults=FalFaultPlan(processing_seconds=100.0))
    path = peer.new_hook_path()
    peer.fail_first[path] = 100
    queued(submit(client, sim, inputs(peer), webhook=peer.url(path)))

    # When it is stopped
    started = time.monotonic()
    sim.stop()

    # Then it stops within a second and wrote nothing to stdout or stderr
    assert time.monotonic() - started < 1.0
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
