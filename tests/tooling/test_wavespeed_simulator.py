"""The WaveSpeed simulator speaks the provider's API: envelopes, statuses, queueing, signed webhooks and faults.

Each test runs a simulator on 127.0.0.1 plus a small local peer that serves the input image and audio and records
the webhooks it receives. Time runs fast (time_factor) so the whole file stays quick.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.peer import Peer

from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import audio_duration, make_sample_portrait, make_sample_speech, probe_media
from avatar_local.simulators.wavespeed import MODELS, WaveSpeedSimulator
from avatar_pipeline.adapters.http_retry import RetryPolicy
from avatar_pipeline.domain.errors import ProviderTransientError, WebhookAuthError
from avatar_pipeline.domain.models import ProviderJobStatus, SubmissionRequest
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.wavespeed.adapter import WaveSpeedProvider

PRO = "/api/v3/kwaivgi/kling-v1-ai-avatar-pro"
STANDARD = "/api/v3/kwaivgi/kling-v1-ai-avatar-standard"
KLING_V2_STANDARD = MODELS["kwaivgi/kling-v2-ai-avatar-standard"].path
OMNIHUMAN = MODELS["bytedance/avatar-omni-human-1.5"].path
INFINITETALK = MODELS["wavespeed-ai/infinitetalk"].path
INFINITETALK_FAST = MODELS["wavespeed-ai/infinitetalk-fast"].path
WAN_S2V = MODELS["wavespeed-ai/wan-2.2/speech-to-video"].path
AUTH = {"Authorization": "Bearer test-key"}
SPEECH_SECONDS = 1.5
QUICK = FaultPlan(processing_seconds=1.0)  # with time_factor=10: 0.1 s of real time


# ------------------------------------------------------------------------------------------------ the local peer


@pytest.fixture(scope="module")
def speech() -> bytes:
    return make_sample_speech(SPEECH_SECONDS)


@pytest.fixture(scope="module")
def peer(speech: bytes) -> Iterator[Peer]:
    serving = Peer(make_sample_portrait(240, 320), speech)
    yield serving
    serving.close()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., WaveSpeedSimulator]]:
    started: list[WaveSpeedSimulator] = []

    def make(**kwargs: Any) -> WaveSpeedSimulator:
        kwargs.setdefault("time_factor", 10.0)
        kwargs.setdefault("faults", QUICK.model_copy())
        sim = WaveSpeedSimulator(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., WaveSpeedSimulator]) -> WaveSpeedSimulator:
    return make_sim()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, timeout=10.0) as http:
        yield http


# ------------------------------------------------------------------------------------------------ helpers


def submit(
    client: httpx.Client,
    sim: WaveSpeedSimulator,
    peer: Peer,
    *,
    webhook: str | None = None,
    model_path: str = PRO,
    **body: Any,
) -> httpx.Response:
    payload: dict[str, Any] = {"image": peer.url("/image.png"), "audio": peer.url("/audio.mp3"), **body}
    params = {"webhook": peer.url(webhook)} if webhook else None
    return client.post(sim.base_url + model_path, params=params, json=payload)


def submitted_id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["code"] == 200, envelope
    prediction_id = envelope["data"]["id"]
    assert isinstance(prediction_id, str)
    return prediction_id


def refusal(response: httpx.Response) -> tuple[int, str]:
    """The envelope code and message of a refused submit (HTTP 200, no data)."""
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["data"] is None, envelope
    return envelope["code"], envelope["message"]


def result(client: httpx.Client, sim: WaveSpeedSimulator, prediction_id: str) -> dict[str, Any]:
    response = client.get(f"{sim.base_url}/api/v3/predictions/{prediction_id}/result")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert isinstance(data, dict)
    return data


def wait_terminal(
    client: httpx.Client, sim: WaveSpeedSimulator, prediction_id: str, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = result(client, sim, prediction_id)
        if data["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def download_counting(url: str, progress: dict[str, int]) -> None:
    """Stream `url`, recording the announced Content-Length and the bytes received so far in `progress`."""
    progress["received"] = 0
    with httpx.stream("GET", url) as response:
        progress["announced"] = int(response.headers["content-length"])
        for chunk in response.iter_raw():
            progress["received"] += len(chunk)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


# ------------------------------------------------------------------------------------------------ auth and shape


def test_requests_without_a_valid_api_key_are_401(make_sim: Callable[..., WaveSpeedSimulator], peer: Peer) -> None:
    # Given one simulator accepting any key and one configured with a specific key
    open_sim, keyed_sim = make_sim(), make_sim(api_key="right-key")
    body = {"image": peer.url("/image.png"), "audio": peer.url("/audio.mp3")}

    # When requests come without a key, with an empty one, or with the wrong one
    missing = httpx.post(open_sim.base_url + PRO, json=body)
    empty = httpx.post(open_sim.base_url + PRO, json=body, headers={"Authorization": "Bearer"})
    wrong = httpx.post(keyed_sim.base_url + PRO, json=body, headers={"Authorization": "Bearer wrong-key"})
    right = httpx.post(keyed_sim.base_url + PRO, json=body, headers={"Authorization": "Bearer right-key"})

    # Then they are 401 Unauthorized, and only the right key gets through
    for response in (missing, empty, wrong):
        assert response.status_code == 401
        assert response.json() == {"code": 401, "message": "Unauthorized"}
    assert right.status_code == 200 and right.json()["code"] == 200
    assert open_sim.predictions() == []


def test_submit_answers_the_envelope_with_a_created_prediction(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a running simulator, When a pro and a standard task are submitted
    pro = submit(client, sim, peer, prompt="say hi").json()
    standard = submit(client, sim, peer, model_path=STANDARD).json()

    # Then each answer is the {code, message, data} envelope holding a freshly created prediction
    assert pro["code"] == 200 and pro["message"] == "success"
    data = pro["data"]
    assert re.fullmatch(r"[0-9a-f]{32}", data["id"])
    assert data["model"] == "kwaivgi/kling-v1-ai-avatar-pro"
    assert standard["data"]["model"] == "kwaivgi/kling-v1-ai-avatar-standard"
    assert data["outputs"] == [] and data["has_nsfw_contents"] == []
    assert data["urls"] == {"get": f"{sim.base_url}/api/v3/predictions/{data['id']}/result"}
    assert data["status"] == "created"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", data["created_at"])
    assert data["error"] == ""
    assert data["timings"] == {"inference": 0}


def test_missing_or_invalid_inputs_are_envelope_errors(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a running simulator, When a submit lacks the audio, or gives a non-http URL, or no body at all
    missing = client.post(sim.base_url + PRO, json={"image": peer.url("/image.png")})
    invalid = client.post(sim.base_url + PRO, json={"image": "ftp://example/x.png", "audio": peer.url("/audio.mp3")})
    empty = client.post(sim.base_url + PRO)

    # Then they are HTTP 200 envelopes with code 1400 (missing param) or 1401 (invalid param), and no task is made
    assert missing.status_code == 200 and missing.json()["code"] == 1400
    assert "missing param" in missing.json()["message"]
    assert invalid.status_code == 200 and invalid.json()["code"] == 1401
    assert empty.json()["code"] == 1400
    assert sim.predictions() == []


# ------------------------------------------------------------------------------------------------ model schemas


@pytest.mark.parametrize(
    ("model_path", "fields", "named"),
    [
        (INFINITETALK, {"resolution": "1080p"}, "resolution"),
        (INFINITETALK, {"resolution": "720P"}, "resolution"),
        (INFINITETALK_FAST, {"resolution": "720p"}, "resolution"),
        (WAN_S2V, {"resolution": 720}, "resolution"),
    ],
)
def test_a_resolution_outside_the_models_choices_is_refused_naming_the_field(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client, model_path: str, fields: dict[str, Any], named: str
) -> None:
    # Given a model whose resolution is one of a few strings (InfiniteTalk Fast: 480p alone)
    # When a submit asks for a resolution outside them (or not a string)
    code, message = refusal(submit(client, sim, peer, model_path=model_path, **fields))

    # Then it is refused with 1401 "invalid param" naming the field and its choices, and no prediction is made
    assert code == 1401
    assert message.startswith(f"invalid param: {named} must be one of '480p'")
    assert sim.predictions() == []


@pytest.mark.parametrize("seed", [-2, 2_147_483_648, "7", 1.5, True])
def test_a_seed_out_of_range_or_not_an_integer_is_refused(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client, seed: object
) -> None:
    # Given InfiniteTalk, whose seed is an integer from -1 to 2147483647
    # When a submit gives a seed below or above that range, or one that is not an integer
    code, message = refusal(submit(client, sim, peer, model_path=INFINITETALK, seed=seed))

    # Then it is refused with 1401 naming the seed, and no prediction is made
    assert code == 1401 and message.startswith("invalid param: seed must be")
    assert sim.predictions() == []


@pytest.mark.parametrize(
    ("model_path", "fields", "named"),
    [
        (OMNIHUMAN, {"prompt": "smile"}, "prompt"),
        (OMNIHUMAN, {"enable_base64_output": False}, "enable_base64_output"),
        (KLING_V2_STANDARD, {"resolution": "720p"}, "resolution"),
        (PRO, {"seed": 7}, "seed"),
        (WAN_S2V, {"mask_image": "https://example.com/mask.png"}, "mask_image"),
        (INFINITETALK, {"num_frames": 145}, "num_frames"),
    ],
)
def test_a_field_the_model_does_not_document_is_refused(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client, model_path: str, fields: dict[str, Any], named: str
) -> None:
    # Given a model and a field its documentation does not list (however valid for another model)
    # When a submit sends it
    code, message = refusal(submit(client, sim, peer, model_path=model_path, **fields))

    # Then it is refused with 1401 naming the field and the model, and no prediction is made
    assert code == 1401
    assert message == f"invalid param: {named} is not a parameter of {model_path.removeprefix('/api/v3/')}"
    assert sim.predictions() == []


@pytest.mark.parametrize("model_id", list(MODELS))
def test_a_missing_image_is_refused_by_every_model(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client, model_id: str
) -> None:
    # Given any model, When a submit has the audio but no image
    response = client.post(sim.base_url + MODELS[model_id].path, json={"audio": peer.url("/audio.mp3")})

    # Then it is refused with 1400 "missing param: image", and no prediction is made
    assert refusal(response) == (1400, "missing param: image")
    assert sim.predictions() == []


def test_a_mask_image_that_is_not_a_url_is_refused_naming_it(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given InfiniteTalk, whose optional mask_image is an http(s) URL, When a submit gives a file: URL instead
    code, message = refusal(submit(client, sim, peer, model_path=INFINITETALK, mask_image="file:///srv/mask.png"))

    # Then it is refused with 1401 naming mask_image
    assert (code, message) == (1401, "invalid param: mask_image must be an http(s) URL")


def test_every_model_completes_with_a_real_mp4_whatever_its_fields(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client, speech: bytes, tmp_path: Path
) -> None:
    # Given a simulator that renders all the models at once, and for each a body with every field it documents
    sim = make_sim(max_concurrent=len(MODELS))
    bodies: dict[str, dict[str, Any]] = {
        model_id: {
            **({"prompt": "a warm greeting"} if "prompt" in spec.strings else {}),
            **({"mask_image": peer.url("/image.png")} if "mask_image" in spec.urls else {}),
            **{name: allowed[-1] for name, allowed in spec.choices.items()},
            **{name: high for name, (_, high) in spec.ranges.items()},
        }
        for model_id, spec in MODELS.items()
    }

    # When each is submitted and runs to its end
    ids = {
        model_id: submitted_id(submit(client, sim, peer, model_path=MODELS[model_id].path, **body))
        for model_id, body in bodies.items()
    }
    finals = {model_id: wait_terminal(client, sim, prediction_id) for model_id, prediction_id in ids.items()}

    # Then each completed under its own model id, and its output is an MP4 with video and audio as long as the speech
    for model_id, final in finals.items():
        assert final["status"] == "completed", (model_id, final)
        assert final["model"] == model_id
        response = httpx.get(final["outputs"][0])
        assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
        video = tmp_path / f"{final['id']}.mp4"
        video.write_bytes(response.content)
        info = probe_media(video)
        assert info.has_video and info.has_audio, model_id
        assert abs(info.duration - audio_duration(speech)) <= 0.2, model_id


def test_the_model_fields_sent_are_recorded_on_the_prediction(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given an InfiniteTalk submit with a resolution, a seed and a mask (and a webhook), and a Kling one with none
    path = peer.new_hook_path()
    mask = peer.url("/image.png")
    talk = submitted_id(
        submit(client, sim, peer, webhook=path, model_path=INFINITETALK, resolution="720p", seed=7, mask_image=mask)
    )
    kling = submitted_id(submit(client, sim, peer, prompt="hi"))
    [hook] = peer.wait_for_hooks(path, 1)

    # When the predictions are inspected
    listed = {p["id"]: p for p in sim.predictions()}
    served = {p["id"]: p for p in httpx.get(sim.base_url + "/_sim/predictions").json()}

    # Then the model's fields are recorded as sent (prompt, image and audio aside), by id and in both listings
    sent = {"resolution": "720p", "seed": 7, "mask_image": mask}
    assert sim.model_fields(talk) == sent and sim.model_fields(kling) == {}
    assert sim.model_fields(uuid.uuid4().hex) is None
    assert listed[talk]["model_fields"] == served[talk]["model_fields"] == sent
    assert listed[kling]["model_fields"] == served[kling]["model_fields"] == {}
    # And the prediction's input (in the listing and the webhook) holds them along with the media and prompt
    media = {"image": peer.url("/image.png"), "audio": peer.url("/audio.mp3")}
    assert listed[talk]["input"] == hook.json["input"] == {**media, "prompt": None, **sent}
    assert listed[kling]["input"] == {**media, "prompt": "hi"}
    # And the submission keeps the body as sent
    assert sim.submissions()[0]["json"] == {**media, **sent}


def test_the_adapter_sends_a_models_options_and_the_simulator_takes_them(sim: WaveSpeedSimulator, peer: Peer) -> None:
    # Given our adapter, and a Wan 2.2 request with the options its catalog entry offers
    model = PROVIDERS.model("wavespeed", "wan-2.2-s2v")
    provider = WaveSpeedProvider(api_key="k", webhook_secrets=[sim.webhook_secret], base_url=sim.base_url)
    request = SubmissionRequest(
        task_id="task-2", image_url=peer.url("/image.png"), audio_url=peer.url("/audio.mp3"), prompt="hello",
        model_id=model.model_id, webhook_url=peer.url(peer.new_hook_path()),
        options={"resolution": "720p", "seed": 42},
    )  # fmt: skip

    # When it submits
    job = provider.submit(request)
    provider.close()

    # Then the simulator took it, under that model, with those fields recorded
    assert sim.model_fields(job.provider_task_id) == {"resolution": "720p", "seed": 42}
    [prediction] = sim.predictions()
    assert prediction["model"] == "wavespeed-ai/wan-2.2/speech-to-video"


def test_the_pipelines_wavespeed_catalog_fits_the_simulators_schemas() -> None:
    # Given the pipeline's WaveSpeed models, When each is compared with the simulator's schema of its model id
    for model in PROVIDERS["wavespeed"].models.values():
        spec = MODELS.get(model.model_id)

        # Then the simulator knows the model, takes a prompt exactly when the pipeline sends one, and every option
        # the pipeline offers is a field of the model whose values and default the model accepts
        assert spec is not None, model.model_id
        assert model.takes_prompt == ("prompt" in spec.strings), model.name
        for option in model.options:
            if option.kind == "mask":
                # Sent as a link to the job's mask file
                assert option.name in spec.urls, (model.name, option.name)
                continue
            if option.kind == "choice":
                assert set(option.choices) <= set(spec.choices[option.name]), (model.name, option.name)
            else:
                assert option.kind == "integer", (model.name, option.name)
                low, high = spec.ranges[option.name]
                assert option.minimum is not None and option.maximum is not None
                assert low <= option.minimum and option.maximum <= high, (model.name, option.name)
            assert option.default == spec.defaults[option.name], (model.name, option.name)
        assert set(model.request_fields) <= spec.fields, model.name


def test_unknown_prediction_is_404(sim: WaveSpeedSimulator, client: httpx.Client) -> None:
    # Given no such prediction, When its result is asked for, Then the answer is HTTP 404 with envelope code 404
    response = client.get(f"{sim.base_url}/api/v3/predictions/{uuid.uuid4().hex}/result")
    assert response.status_code == 404
    assert response.json()["code"] == 404


# ------------------------------------------------------------------------------------------------ lifecycle


def test_status_goes_created_then_processing_then_completed(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator that processes one prediction at a time, for at least 0.4 s each
    sim = make_sim(max_concurrent=1, time_factor=5.0, faults=FaultPlan(processing_seconds=2.0))

    # When two are submitted and the second is watched through both result endpoints
    submitted_id(submit(client, sim, peer))
    second = submitted_id(submit(client, sim, peer))
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for url in (f"/api/v3/predictions/{second}/result", f"/api/v3/predictions/{second}"):
            status = client.get(sim.base_url + url).json()["data"]["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
        if seen[-1] == "completed":
            break
        time.sleep(0.02)

    # Then it waits in "created", then is "processing", then "completed" — and stays completed
    assert seen == ["created", "processing", "completed"]
    final = result(client, sim, second)
    assert final["status"] == "completed"
    assert final["outputs"] == [f"{sim.base_url}/outputs/{second}.mp4"]
    assert final["has_nsfw_contents"] == [False]
    assert final["timings"]["inference"] >= 2000  # simulated ms
    time.sleep(0.1)
    assert result(client, sim, second)["status"] == "completed"


def test_output_is_a_real_mp4_as_long_as_the_audio(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client, speech: bytes, tmp_path: Path
) -> None:
    # Given a completed prediction
    data = wait_terminal(client, sim, submitted_id(submit(client, sim, peer)))
    assert data["status"] == "completed"

    # When its output is downloaded
    response = httpx.get(data["outputs"][0])

    # Then it is an MP4 with video and audio streams, lasting as long as the input audio (within 0.2 s)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    video = tmp_path / "out.mp4"
    video.write_bytes(response.content)
    info = probe_media(video)
    assert info.has_video and info.has_audio
    assert abs(info.duration - audio_duration(speech)) <= 0.2


def test_no_more_than_three_process_at_once_and_the_rest_wait(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given the default concurrency limit of 3 and predictions taking at least 0.5 s
    sim = make_sim(time_factor=2.0, faults=FaultPlan(processing_seconds=1.0))

    # When 5 are submitted at once and the simulator is watched until all are done
    ids = [submitted_id(submit(client, sim, peer)) for _ in range(5)]
    most_processing, saw_queue_behind_full_house = 0, False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        statuses = [prediction["status"] for prediction in sim.predictions()]
        processing = statuses.count("processing")
        most_processing = max(most_processing, processing)
        saw_queue_behind_full_house |= processing == 3 and "created" in statuses
        if statuses.count("completed") == 5:
            break
        time.sleep(0.01)

    # Then never more than 3 were processing, the others were queued (not refused), and all completed
    assert most_processing == 3 and sim.peak_processing == 3
    assert saw_queue_behind_full_house
    assert [result(client, sim, i)["status"] for i in ids] == ["completed"] * 5


def test_submissions_beyond_the_per_minute_limit_get_429_with_retry_after(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a limit of 2 submissions per minute, and a clock 60x fast (the window is 1 s)
    sim = make_sim(submissions_per_minute=2, time_factor=60.0)

    # When 3 are submitted in a row
    answers = [submit(client, sim, peer) for _ in range(3)]

    # Then the third is 429 "rate limit exceeded" with a Retry-After, and is not taken
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json() == {"code": 429, "message": "rate limit exceeded"}
    assert 1 <= int(answers[2].headers["retry-after"]) <= 60
    assert len(sim.predictions()) == 2

    # And once the window has passed, a submission is taken again
    time.sleep(1.05)
    assert submit(client, sim, peer).status_code == 200


# ------------------------------------------------------------------------------------------------ webhooks


@pytest.mark.parametrize("where", ["query", "body"])
def test_webhook_url_is_taken_from_the_query_or_the_body(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client, where: str
) -> None:
    # Given a webhook URL passed as ?webhook= or as the body's webhook_url
    path = peer.new_hook_path()
    if where == "query":
        response = submit(client, sim, peer, webhook=path)
    else:
        response = submit(client, sim, peer, webhook_url=peer.url(path))

    # When the prediction ends, Then the webhook arrives at that URL
    prediction_id = submitted_id(response)
    hooks = peer.wait_for_hooks(path, 1)
    assert len(hooks) == 1 and hooks[0].json["id"] == prediction_id


def test_webhook_is_the_bare_signed_prediction_and_the_adapter_verifies_it(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a prediction submitted with a webhook, and our adapter configured with the simulator's secret
    path = peer.new_hook_path()
    prediction_id = submitted_id(submit(client, sim, peer, webhook=path, prompt="hello there"))
    provider = WaveSpeedProvider(api_key="k", webhook_secrets=[sim.webhook_secret], base_url=sim.base_url)
    stranger = WaveSpeedProvider(api_key="k", webhook_secrets=["whsec_someone_else"], base_url=sim.base_url)

    # When the webhook arrives
    [hook] = peer.wait_for_hooks(path, 1)

    # Then its body is the bare prediction (no envelope) with input and executionTime, signed v3
    body = hook.json
    assert "data" not in body and body["id"] == prediction_id and body["status"] == "completed"
    assert body["input"] == {"image": peer.url("/image.png"), "audio": peer.url("/audio.mp3"), "prompt": "hello there"}
    assert isinstance(body["executionTime"], int) and body["outputs"] == [f"{sim.base_url}/outputs/{prediction_id}.mp4"]
    assert re.fullmatch(r"msg_[0-9a-f]+", hook.headers["webhook-id"])
    assert abs(int(hook.headers["webhook-timestamp"]) - time.time()) < 30
    assert hook.headers["webhook-signature"].startswith("v3,")
    # And the adapter accepts it (signature verified), while a different secret is refused
    job = provider.parse_callback(hook.headers, hook.body, datetime.now(UTC))
    assert job.status is ProviderJobStatus.SUCCEEDED and job.provider_task_id == prediction_id
    assert job.output_url == body["outputs"][0]
    with pytest.raises(WebhookAuthError):
        stranger.parse_callback(hook.headers, hook.body, datetime.now(UTC))
    provider.close()
    stranger.close()


def test_the_adapter_submits_and_fetches_against_the_simulator(sim: WaveSpeedSimulator, peer: Peer) -> None:
    # Given our WaveSpeed adapter pointed at the simulator
    provider = WaveSpeedProvider(api_key="k", webhook_secrets=[sim.webhook_secret], base_url=sim.base_url)
    path = peer.new_hook_path()
    request = SubmissionRequest(
        task_id="task-1",
        image_url=peer.url("/image.png"),
        audio_url=peer.url("/audio.mp3"),
        prompt="a friendly greeting",
        model_id=PROVIDERS.model("wavespeed", "kling-v1-std").model_id,
        webhook_url=peer.url(path),
    )

    # When it submits and then fetches until the job ends
    job = provider.submit(request)
    queued_status = job.status
    deadline = time.monotonic() + 10
    while job.status not in (ProviderJobStatus.SUCCEEDED, ProviderJobStatus.FAILED) and time.monotonic() < deadline:
        time.sleep(0.05)
        job = provider.fetch(job.provider_task_id)
    provider.close()

    # Then the job went from queued to succeeded with a downloadable output, and the webhook went by query parameter
    assert queued_status is ProviderJobStatus.QUEUED
    assert job.status is ProviderJobStatus.SUCCEEDED
    assert job.output_url is not None and httpx.get(job.output_url).status_code == 200
    [submission] = sim.submissions()
    assert submission["path"] == STANDARD and submission["query"] == {"webhook": peer.url(path)}
    assert submission["json"]["prompt"] == "a friendly greeting"
    assert len(peer.wait_for_hooks(path, 1)) == 1


def test_only_terminal_states_are_webhooked(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a prediction that processes for at least 0.5 s, with a webhook
    sim = make_sim(time_factor=2.0, faults=FaultPlan(processing_seconds=1.0))
    path = peer.new_hook_path()
    prediction_id = submitted_id(submit(client, sim, peer, webhook=path))

    # When it is created and then processing
    deadline = time.monotonic() + 5
    while result(client, sim, prediction_id)["status"] != "processing" and time.monotonic() < deadline:
        time.sleep(0.01)
    hooks_while_processing = len(peer.hooks_at(path))
    final = wait_terminal(client, sim, prediction_id)
    assert sim.wait_until_idle(5)

    # Then no webhook went out before it ended, and exactly one went out when it completed
    assert hooks_while_processing == 0
    assert final["status"] == "completed"
    hooks = peer.hooks_at(path)
    assert [hook.json["status"] for hook in hooks] == ["completed"]


def test_webhooks_are_retried_on_server_errors_with_the_same_id(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a webhook receiver that answers 503 to the first two deliveries
    path = peer.new_hook_path()
    with peer.lock:
        peer.fail_first[path] = 2

    # When a prediction with that webhook ends
    submitted_id(submit(client, sim, peer, webhook=path))
    hooks = peer.wait_for_hooks(path, 1)
    assert sim.wait_until_idle(5)

    # Then the third attempt is delivered, and all three attempts carried the same webhook-id
    assert len(hooks) == 1
    attempts = sim.webhook_deliveries()
    assert [a["status"] for a in attempts] == [503, 503, 200]
    assert {a["webhook_id"] for a in attempts} == {hooks[0].headers["webhook-id"]}


# ------------------------------------------------------------------------------------------------ faults


def test_fail_rate_one_ends_the_prediction_failed_with_the_code(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every prediction fails with code 1403
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, fail_rate=1.0, fail_code=1403))
    path = peer.new_hook_path()

    # When one is submitted with a webhook and runs to its end
    prediction_id = submitted_id(submit(client, sim, peer, webhook=path))
    final = wait_terminal(client, sim, prediction_id)
    [hook] = peer.wait_for_hooks(path, 1)

    # Then it is failed with code 1403, a message and no output — in the result, the webhook and the adapter's view
    assert final["status"] == "failed" and final["code"] == 1403 and final["error"] and final["outputs"] == []
    assert hook.json["status"] == "failed" and hook.json["code"] == 1403
    provider = WaveSpeedProvider(api_key="k", webhook_secrets=[sim.webhook_secret], base_url=sim.base_url)
    job = provider.fetch(prediction_id)
    provider.close()
    assert job.status is ProviderJobStatus.FAILED and job.error_code == "1403" and job.error_message
    # And a terminal state never changes
    time.sleep(0.2)
    assert result(client, sim, prediction_id)["status"] == "failed"


def test_lost_webhook_never_arrives_though_the_prediction_completes(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every webhook is lost
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, lost_webhook_rate=1.0))
    path = peer.new_hook_path()

    # When a prediction with a webhook completes
    final = wait_terminal(client, sim, submitted_id(submit(client, sim, peer, webhook=path)))
    assert sim.wait_until_idle(5)
    time.sleep(0.3)

    # Then the result says completed but no webhook ever arrived
    assert final["status"] == "completed"
    assert peer.hooks_at(path) == []
    assert [d.get("lost") for d in sim.webhook_deliveries()] == [True]


def test_duplicated_webhook_arrives_twice_with_the_same_id(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every webhook is duplicated
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, duplicate_webhook_rate=1.0))
    path = peer.new_hook_path()

    # When a prediction with a webhook completes
    submitted_id(submit(client, sim, peer, webhook=path))
    hooks = peer.wait_for_hooks(path, 2)
    assert sim.wait_until_idle(5)

    # Then two deliveries arrive with the same webhook-id and the same body
    assert len(peer.hooks_at(path)) == 2
    assert hooks[0].headers["webhook-id"] == hooks[1].headers["webhook-id"]
    assert hooks[0].body == hooks[1].body


def test_delayed_webhook_arrives_late(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given webhooks delayed by 5 simulated seconds (0.5 s real)
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, webhook_delay_seconds=5.0))
    path = peer.new_hook_path()

    # When a prediction completes
    wait_terminal(client, sim, submitted_id(submit(client, sim, peer, webhook=path)))
    completed_at = time.monotonic()
    hooks = peer.wait_for_hooks(path, 1)

    # Then its webhook arrives, but only after the delay
    assert len(hooks) == 1
    assert time.monotonic() - completed_at >= 0.35


def test_truncated_download_sends_fewer_bytes_than_its_content_length(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every output download is cut short
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, truncated_download_rate=1.0))
    final = wait_terminal(client, sim, submitted_id(submit(client, sim, peer)))

    # When the output is downloaded
    progress: dict[str, int] = {}
    with pytest.raises(httpx.RemoteProtocolError):
        download_counting(final["outputs"][0], progress)

    # Then the connection closed after about half of the announced bytes
    assert 0 < progress["received"] < progress["announced"]
    assert progress["received"] == progress["announced"] // 2


def test_submit_error_rate_one_answers_503_and_takes_nothing(
    make_sim: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every submit fails with 503
    sim = make_sim(faults=FaultPlan(submit_error_rate=1.0, submit_error_status=503))

    # When a task is submitted directly and through the adapter (one attempt, no retries)
    response = submit(client, sim, peer)
    provider = WaveSpeedProvider(
        api_key="k", webhook_secrets=[sim.webhook_secret], base_url=sim.base_url, retry=RetryPolicy(max_attempts=1)
    )
    request = SubmissionRequest(
        task_id="t", image_url=peer.url("/image.png"), audio_url=peer.url("/audio.mp3"), prompt=None,
        model_id=PROVIDERS.model("wavespeed", "kling-v1-pro").model_id,
        webhook_url=peer.url("/hooks/none"),
    )  # fmt: skip

    # Then the answer is HTTP 503, the adapter sees a transient error, and no prediction exists
    assert response.status_code == 503 and response.json()["code"] == 503
    with pytest.raises(ProviderTransientError):
        provider.submit(request)
    provider.close()
    assert sim.predictions() == []


def test_result_error_rate_one_answers_the_configured_status(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a prediction, and then a plan where every result query fails with 502
    prediction_id = submitted_id(submit(client, sim, peer))
    sim.set_faults(FaultPlan(processing_seconds=1.0, result_error_rate=1.0, result_error_status=502))

    # When its result is asked for, Then the answer is HTTP 502
    response = client.get(f"{sim.base_url}/api/v3/predictions/{prediction_id}/result")
    assert response.status_code == 502


def test_latency_fault_delays_every_api_answer(
    make_sim: Callable[..., WaveSpeedSimulator], client: httpx.Client
) -> None:
    # Given 2 simulated seconds of latency at time_factor 10
    sim = make_sim(faults=FaultPlan(latency_seconds=2.0))

    # When the secret is asked for, Then the answer takes at least 0.2 s
    started = time.monotonic()
    client.get(sim.base_url + "/api/v3/webhook/secret")
    assert time.monotonic() - started >= 0.19


def test_unreachable_image_url_fails_with_1402(sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client) -> None:
    # Given an image URL nobody listens on
    image = f"http://127.0.0.1:{closed_port()}/image.png"

    # When a task with it is submitted and runs
    final = wait_terminal(client, sim, submitted_id(submit(client, sim, peer, image=image)))

    # Then it fails with code 1402 "media fetch failed"
    assert final["status"] == "failed" and final["code"] == 1402
    assert "media fetch failed" in final["error"]


def test_an_image_that_is_not_an_image_fails_with_1401(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given an "image" URL that serves an MP3
    final = wait_terminal(client, sim, submitted_id(submit(client, sim, peer, image=peer.url("/audio.mp3"))))

    # Then the task fails with code 1401 and ffmpeg's reason
    assert final["status"] == "failed" and final["code"] == 1401
    assert "invalid param" in final["error"]


# ------------------------------------------------------------------------------------------------ inspection


def test_sim_requests_lists_submissions_and_control_endpoints_work(
    sim: WaveSpeedSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given one submission with a webhook and a prompt
    path = peer.new_hook_path()
    prediction_id = submitted_id(submit(client, sim, peer, webhook=path, prompt="hi"))

    # When the inspection endpoints are read
    requests = httpx.get(sim.base_url + "/_sim/requests").json()
    predictions = httpx.get(sim.base_url + "/_sim/predictions").json()

    # Then the submission is listed with its method, path, query and body, and the prediction too
    [submission] = [r for r in requests if r["method"] == "POST"]
    assert submission["path"] == PRO and submission["query"] == {"webhook": peer.url(path)}
    assert submission["json"] == {"image": peer.url("/image.png"), "audio": peer.url("/audio.mp3"), "prompt": "hi"}
    assert submission["at"] and submission["status"] == 200
    assert sim.submissions() == [submission]
    assert [p["id"] for p in predictions] == [prediction_id]

    # And a fault plan posted at run time applies at once, and reset forgets the recorded requests
    assert httpx.post(sim.base_url + "/_sim/faults", json={"submit_error_rate": 1.0}).status_code == 200
    assert submit(client, sim, peer).status_code == 503
    assert httpx.post(sim.base_url + "/_sim/faults", json={"no_such_fault": 1}).status_code == 400
    assert httpx.post(sim.base_url + "/_sim/reset").status_code == 200
    assert httpx.get(sim.base_url + "/_sim/requests").json() == []


def test_webhook_secret_endpoint_needs_auth_and_returns_the_secret(
    make_sim: Callable[..., WaveSpeedSimulator], client: httpx.Client
) -> None:
    # Given a simulator with a chosen secret
    sim = make_sim(webhook_secret="whsec_test_secret")

    # When the secret is asked for with and without a key
    with_key = client.get(sim.base_url + "/api/v3/webhook/secret")
    without_key = httpx.get(sim.base_url + "/api/v3/webhook/secret")

    # Then it is returned in the envelope only to an authenticated caller
    assert with_key.json() == {"code": 200, "message": "success", "data": {"secret": "whsec_test_secret"}}
    assert without_key.status_code == 401


def test_simulator_is_quiet_and_stops_promptly(
    peer: Peer, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a simulator busy with a long prediction and an open keep-alive connection
    sim = WaveSpeedSimulator(faults=FaultPlan(processing_seconds=60.0)).start()
    prediction_id = submitted_id(submit(client, sim, peer, webhook=peer.new_hook_path()))
    deadline = time.monotonic() + 5
    while result(client, sim, prediction_id)["status"] != "processing" and time.monotonic() < deadline:
        time.sleep(0.02)

    # When it is stopped
    started = time.monotonic()
    sim.stop()

    # Then it stops within moments (a render in flight at most), leaves no thread behind and logged nothing
    assert time.monotonic() - started < 2.0
    assert not [t for t in threading.enumerate() if t.name.startswith("wavespeed-sim")]
    assert "HTTP/1.1" not in capfd.readouterr().err
