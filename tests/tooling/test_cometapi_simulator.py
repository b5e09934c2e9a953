"""The CometAPI simulator speaks the provider's Kling avatar API: envelopes, errors, statuses, queueing, callbacks
and faults.

Each test runs a simulator on 127.0.0.1 plus a small local peer that serves the input image and audio and records
the callbacks it receives. Time runs fast (time_factor) so the whole file stays quick.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from avatar_local.simulators.cometapi import CometApiSimulator, CometFaultPlan
from avatar_local.simulators.faults import FaultPlan
from avatar_local.simulators.media import audio_duration, make_sample_portrait, make_sample_speech, probe_media

CREATE = "/kling/v1/videos/avatar/image2video"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEECH_SECONDS = 2.5
QUICK = FaultPlan(processing_seconds=1.0)  # with time_factor=10: 0.1 s of real time
CALLBACK_KEYS = {"task_id", "task_status", "task_status_msg", "created_at", "updated_at", "task_result"}


# ------------------------------------------------------------------------------------------------ the local peer


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes
    seen_status: str | None = None  # what a GET of the task answered while this callback was being delivered

    @property
    def json(self) -> dict[str, Any]:
        payload = json.loads(self.body)
        assert isinstance(payload, dict)
        return payload


class Peer:
    """Serves /image.png and /audio.mp3, and records every POST (a callback) with its headers and raw body.

    With `observe_at(sim)` set, it asks the simulator for the task's status while each callback is in flight.
    """

    def __init__(self, image: bytes, audio: bytes) -> None:
        self.image, self.audio = image, audio
        self.hooks: list[Hook] = []
        self.fail_first: dict[str, int] = {}  # path -> how many deliveries to answer 503 before accepting
        self.observed_sim: CometApiSimulator | None = None
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                content = {"/image.png": peer.image, "/audio.mp3": peer.audio}.get(self.path)
                self.send_response(200 if content else 404)
                self.send_header("Content-Length", str(len(content or b"")))
                self.end_headers()
                self.wfile.write(content or b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook = Hook(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if peer.observed_sim is not None:
                    task_url = f"{peer.observed_sim.base_url}{CREATE}/{hook.json['task_id']}"
                    hook.seen_status = httpx.get(task_url, headers=AUTH).json()["data"]["task_status"]
                with peer.lock:
                    refuse = peer.fail_first.get(self.path, 0)
                    if refuse:
                        peer.fail_first[self.path] = refuse - 1
                    else:
                        peer.hooks.append(hook)
                self.send_response(503 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def new_hook_path(self) -> str:
        return f"/hooks/{uuid.uuid4().hex}"

    def hooks_at(self, path: str) -> list[Hook]:
        with self.lock:
            return [hook for hook in self.hooks if hook.path == path]

    def wait_for_hooks(self, path: str, count: int, timeout: float = 10.0) -> list[Hook]:
        deadline = time.monotonic() + timeout
        while len(self.hooks_at(path)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.hooks_at(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def speech() -> bytes:
    return make_sample_speech(SPEECH_SECONDS)


@pytest.fixture(scope="module")
def peer(speech: bytes) -> Iterator[Peer]:
    serving = Peer(make_sample_portrait(320, 400), speech)
    yield serving
    serving.close()


@pytest.fixture
def make_sim(peer: Peer) -> Iterator[Callable[..., CometApiSimulator]]:
    started: list[CometApiSimulator] = []

    def make(**kwargs: Any) -> CometApiSimulator:
        kwargs.setdefault("time_factor", 10.0)
        kwargs.setdefault("faults", QUICK.model_copy())
        sim = CometApiSimulator(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    peer.observed_sim = None
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., CometApiSimulator]) -> CometApiSimulator:
    return make_sim()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, timeout=10.0) as http:
        yield http


# ------------------------------------------------------------------------------------------------ helpers


def create(
    client: httpx.Client, sim: CometApiSimulator, peer: Peer, *, callback: str | None = None, **body: Any
) -> httpx.Response:
    payload: dict[str, Any] = {
        "image": peer.url("/image.png"),
        "sound_file": peer.url("/audio.mp3"),
        "prompt": "A person talking to the camera.",
        **body,
    }
    if callback is not None:
        payload["callback_url"] = peer.url(callback)
    return client.post(sim.base_url + CREATE, json=payload)


def created_id(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    envelope = response.json()
    assert envelope["code"] == 0, envelope
    task_id = envelope["data"]["task_id"]
    assert isinstance(task_id, str)
    return task_id


def query(client: httpx.Client, sim: CometApiSimulator, task_id: str) -> dict[str, Any]:
    response = client.get(f"{sim.base_url}{CREATE}/{task_id}")
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert isinstance(data, dict)
    return data


def wait_terminal(client: httpx.Client, sim: CometApiSimulator, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = query(client, sim, task_id)
        if data["task_status"] in ("succeed", "failed") or time.monotonic() > deadline:
            return data
        time.sleep(0.02)


def assert_gateway_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "comet_api_error"
    assert body["error"]["param"] == "" and body["error"]["code"] == ""
    assert re.search(r"\(request id: \w+\)$", body["error"]["message"])


def assert_kling_error(response: httpx.Response, status: int, code: int, message: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    if message is not None:
        assert body["message"] == message
    assert isinstance(body["request_id"], str)


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


# ------------------------------------------------------------------------------------------------ auth and shapes


def test_requests_without_a_valid_api_key_are_gateway_401s(
    make_sim: Callable[..., CometApiSimulator], peer: Peer
) -> None:
    # Given one simulator accepting any key and one configured with a specific key
    open_sim, keyed_sim = make_sim(), make_sim(api_key="right-key")
    body = {"image": peer.url("/image.png"), "sound_file": peer.url("/audio.mp3"), "prompt": "hi"}

    # When requests come without a key, with an empty one, or with the wrong one
    missing = httpx.post(open_sim.base_url + CREATE, json=body)
    empty = httpx.post(open_sim.base_url + CREATE, json=body, headers={"Authorization": "Bearer"})
    wrong = httpx.post(keyed_sim.base_url + CREATE, json=body, headers={"Authorization": "Bearer wrong-key"})
    query_without_key = httpx.get(f"{open_sim.base_url}{CREATE}/123456789012345678")
    right = httpx.post(keyed_sim.base_url + CREATE, json=body, headers={"Authorization": "Bearer right-key"})

    # Then they are HTTP 401 in the gateway's error shape, and only the right key gets through
    for response in (missing, empty, wrong, query_without_key):
        assert_gateway_error(response, 401)
    assert right.status_code == 200 and right.json()["code"] == 0
    assert open_sim.tasks() == []


def test_create_answers_the_envelope_with_a_submitted_task(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a running simulator
    before = time.time() * 1000

    # When a task is created with an external_task_id, and another without one
    envelope = create(client, sim, peer, external_task_id="ours-1", mode="pro").json()
    bare = create(client, sim, peer).json()

    # Then each answer is the {code: 0, message: SUCCEED, request_id, data} envelope with a submitted task
    assert set(envelope) == {"code", "message", "request_id", "data"}
    assert envelope["code"] == 0 and envelope["message"] == "SUCCEED"
    uuid.UUID(envelope["request_id"])
    data = envelope["data"]
    assert set(data) == {"task_id", "task_status", "task_info", "created_at", "updated_at"}
    assert re.fullmatch(r"[1-9]\d{17}", data["task_id"])
    assert data["task_status"] == "submitted"
    assert data["task_info"] == {"external_task_id": "ours-1"}
    assert isinstance(data["created_at"], int) and before - 1 <= data["created_at"] <= time.time() * 1000 + 1
    assert data["updated_at"] == data["created_at"]
    assert bare["data"]["task_info"] == {"external_task_id": None}
    assert bare["data"]["task_id"] != data["task_id"]
    # And the simulator remembers the mode (std by default)
    assert [task["mode"] for task in sim.tasks()] == ["pro", "std"]


def test_prompt_is_required_and_parameter_errors_are_kling_1201(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a running simulator
    inputs = {"image": peer.url("/image.png"), "sound_file": peer.url("/audio.mp3")}

    # When creates come without a prompt, with a blank or too long one, an unknown mode, no sound_file, no body
    no_prompt = client.post(sim.base_url + CREATE, json=inputs)
    blank_prompt = client.post(sim.base_url + CREATE, json={**inputs, "prompt": "  "})
    long_prompt = client.post(sim.base_url + CREATE, json={**inputs, "prompt": "x" * 2501})
    bad_mode = create(client, sim, peer, mode="ultra")
    no_sound = client.post(sim.base_url + CREATE, json={"image": inputs["image"], "prompt": "hi"})
    not_url = create(client, sim, peer, image="data:image/png;base64,AAAA")
    no_body = client.post(sim.base_url + CREATE)

    # Then each is HTTP 400 with Kling code 1201 and says what is wrong, and no task is made
    assert_kling_error(no_prompt, 400, 1201, "prompt is required")
    assert_kling_error(blank_prompt, 400, 1201, "prompt is required")
    assert_kling_error(long_prompt, 400, 1201)
    assert "2500" in long_prompt.json()["message"]
    assert_kling_error(bad_mode, 400, 1201, "mode must be std or pro")
    assert_kling_error(no_sound, 400, 1201, "sound_file is required")
    assert_kling_error(not_url, 400, 1201)
    assert_kling_error(no_body, 400, 1201)
    assert sim.tasks() == []
    # And a prompt of exactly 2500 characters is fine
    assert created_id(create(client, sim, peer, prompt="x" * 2500))


def test_external_task_id_is_unique_per_account_and_finds_the_task(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a task created with external_task_id "job-42"
    task_id = created_id(create(client, sim, peer, external_task_id="job-42"))

    # When the same create is retried, and another account uses the same external_task_id
    retried = create(client, sim, peer, external_task_id="job-42")
    with httpx.Client(headers={"Authorization": "Bearer other-key"}) as other:
        other_account = create(other, sim, peer, external_task_id="job-42")
        other_lookup = other.get(f"{sim.base_url}{CREATE}/job-42")

    # Then the retry is refused with 1201 "external_task_id already exists" and makes no second task
    assert_kling_error(retried, 400, 1201, "external_task_id already exists")
    assert other_account.status_code == 200
    assert [t["task_info"]["external_task_id"] for t in sim.tasks()] == ["job-42", "job-42"]
    # And the task can be queried by its external_task_id, which each account resolves to its own task
    assert query(client, sim, "job-42")["task_id"] == task_id
    assert other_lookup.json()["data"]["task_id"] == other_account.json()["data"]["task_id"] != task_id


def test_unknown_task_is_kling_404(sim: CometApiSimulator, client: httpx.Client) -> None:
    # Given no such task, When it is queried, Then the answer is HTTP 404 with Kling code 1203
    assert_kling_error(client.get(f"{sim.base_url}{CREATE}/123456789012345678"), 404, 1203, "task not found")
    # And an unknown path is a gateway-style 404
    assert_gateway_error(client.get(sim.base_url + "/kling/v1/no/such/thing"), 404)


# ------------------------------------------------------------------------------------------------ lifecycle


def test_status_goes_submitted_then_processing_then_succeed(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator that processes one task at a time, for at least 0.4 s each
    sim = make_sim(max_concurrent=1, time_factor=5.0, faults=FaultPlan(processing_seconds=2.0))

    # When two are created and the second is watched through GET
    created_id(create(client, sim, peer))
    second = created_id(create(client, sim, peer))
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = query(client, sim, second)["task_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "succeed":
            break
        time.sleep(0.02)

    # Then it waits in "submitted", then is "processing", then "succeed" — and stays so
    assert seen == ["submitted", "processing", "succeed"]
    final = query(client, sim, second)
    assert final["task_status_msg"] == ""
    assert final["updated_at"] > final["created_at"]
    [video] = final["task_result"]["videos"]
    assert video["url"] == f"{sim.base_url}/outputs/{second}.mp4"
    uuid.UUID(video["id"])
    time.sleep(0.1)
    assert query(client, sim, second)["task_status"] == "succeed"


def test_output_is_a_real_mp4_as_long_as_the_audio_and_its_duration_string_matches(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client, speech: bytes, tmp_path: Path
) -> None:
    # Given a task that succeeded
    data = wait_terminal(client, sim, created_id(create(client, sim, peer)))
    assert data["task_status"] == "succeed"
    [video] = data["task_result"]["videos"]

    # When its video is downloaded
    response = httpx.get(video["url"])

    # Then it is an MP4 with video and audio, as long as the input audio (within 0.2 s)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    path = tmp_path / "out.mp4"
    path.write_bytes(response.content)
    info = probe_media(path)
    assert info.has_video and info.has_audio
    assert abs(info.duration - audio_duration(speech)) <= 0.2
    # And its duration is a string of seconds that agrees with the file
    assert isinstance(video["duration"], str) and re.fullmatch(r"\d+\.\d", video["duration"])
    assert abs(float(video["duration"]) - info.duration) <= 0.051


def test_no_more_than_three_process_at_once_and_the_rest_wait(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given the default concurrency limit of 3 and tasks taking at least 0.5 s
    sim = make_sim(time_factor=2.0, faults=FaultPlan(processing_seconds=1.0))

    # When 5 are created at once and the simulator is watched until all are done
    ids = [created_id(create(client, sim, peer)) for _ in range(5)]
    most_processing, saw_queue_behind_full_house = 0, False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        statuses = [task["task_status"] for task in sim.tasks()]
        processing = statuses.count("processing")
        most_processing = max(most_processing, processing)
        saw_queue_behind_full_house |= processing == 3 and "submitted" in statuses
        if statuses.count("succeed") == 5:
            break
        time.sleep(0.01)

    # Then never more than 3 were processing, the others were queued (not refused), and all succeeded
    assert most_processing == 3 and sim.peak_processing == 3
    assert saw_queue_behind_full_house
    assert [query(client, sim, i)["task_status"] for i in ids] == ["succeed"] * 5


# ------------------------------------------------------------------------------------------------ callbacks


def test_callbacks_on_processing_and_succeed_are_bare_unsigned_and_follow_get(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a task created with a callback_url, and a receiver that queries the task as each callback arrives
    peer.observed_sim = sim
    path = peer.new_hook_path()
    task_id = created_id(create(client, sim, peer, callback=path))

    # When it runs to its end
    hooks = peer.wait_for_hooks(path, 2)
    assert sim.wait_until_idle(5)
    final = query(client, sim, task_id)

    # Then exactly two callbacks came, for processing and then succeed (none for submitted)
    assert [hook.json["task_status"] for hook in peer.hooks_at(path)] == ["processing", "succeed"]
    processing, succeed = hooks
    # And each is the bare task (no envelope), unsigned
    for hook in hooks:
        assert set(hook.json) == CALLBACK_KEYS
        assert hook.json["task_id"] == task_id and hook.json["created_at"] == final["created_at"]
        assert hook.headers["content-type"] == "application/json"
        assert not [name for name in hook.headers if "signature" in name or name.startswith("webhook-")]
    assert processing.json["task_result"] == {} and processing.json["task_status_msg"] == ""
    assert succeed.json["task_result"] == final["task_result"]
    assert succeed.json["updated_at"] == final["updated_at"] >= processing.json["updated_at"]
    # And each status was already visible through GET when its callback arrived
    assert processing.seen_status in ("processing", "succeed")
    assert succeed.seen_status == "succeed"


def test_callbacks_are_retried_on_server_errors(sim: CometApiSimulator, peer: Peer, client: httpx.Client) -> None:
    # Given a callback receiver that answers 503 to the first two deliveries
    path = peer.new_hook_path()
    with peer.lock:
        peer.fail_first[path] = 2

    # When a task with that callback runs to its end
    created_id(create(client, sim, peer, callback=path))
    hooks = peer.wait_for_hooks(path, 2)
    assert sim.wait_until_idle(5)

    # Then the processing callback got through on the third attempt, and the succeed one after it
    assert [hook.json["task_status"] for hook in hooks] == ["processing", "succeed"]
    attempts = [(a["task_status"], a["attempt"], a["status"]) for a in sim.callback_deliveries()]
    assert attempts == [("processing", 1, 503), ("processing", 2, 503), ("processing", 3, 200), ("succeed", 1, 200)]


def test_lost_callbacks_never_arrive_though_the_task_succeeds(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every callback is lost
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, lost_webhook_rate=1.0))
    path = peer.new_hook_path()

    # When a task with a callback_url succeeds
    final = wait_terminal(client, sim, created_id(create(client, sim, peer, callback=path)))
    assert sim.wait_until_idle(5)
    time.sleep(0.2)

    # Then GET says succeed but no callback ever arrived, and the simulator says both were lost
    assert final["task_status"] == "succeed"
    assert peer.hooks_at(path) == []
    assert [(d["task_status"], d["lost"]) for d in sim.callback_deliveries()] == [
        ("processing", True),
        ("succeed", True),
    ]


def test_duplicated_callbacks_arrive_twice(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every callback is duplicated
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, duplicate_webhook_rate=1.0))
    path = peer.new_hook_path()

    # When a task with a callback_url succeeds
    created_id(create(client, sim, peer, callback=path))
    peer.wait_for_hooks(path, 4)
    assert sim.wait_until_idle(5)

    # Then each status change arrives twice, with the same body, still in status order
    hooks = peer.hooks_at(path)
    assert [hook.json["task_status"] for hook in hooks] == ["processing", "processing", "succeed", "succeed"]
    assert hooks[0].body == hooks[1].body and hooks[2].body == hooks[3].body
    assert [d["duplicate"] for d in sim.callback_deliveries()] == [False, True, False, True]


def test_delayed_callback_arrives_late(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given callbacks delayed by 4 simulated seconds (0.4 s real)
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, webhook_delay_seconds=4.0))
    path = peer.new_hook_path()

    # When a task succeeds
    wait_terminal(client, sim, created_id(create(client, sim, peer, callback=path)))
    succeeded_at = time.monotonic()
    hooks = peer.wait_for_hooks(path, 2)

    # Then its succeed callback arrives, but only after the delay
    assert [hook.json["task_status"] for hook in hooks] == ["processing", "succeed"]
    assert time.monotonic() - succeeded_at >= 0.3


# ------------------------------------------------------------------------------------------------ failures and faults


def test_fail_rate_one_ends_the_task_failed_with_a_message(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every task fails
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, fail_rate=1.0))
    path = peer.new_hook_path()

    # When one is created with a callback_url and runs to its end
    task_id = created_id(create(client, sim, peer, callback=path))
    final = wait_terminal(client, sim, task_id)
    hooks = peer.wait_for_hooks(path, 2)

    # Then it is failed with a message and no task_result — through GET and in the last callback
    assert final["task_status"] == "failed" and final["task_status_msg"]
    assert "task_result" not in final
    assert [hook.json["task_status"] for hook in hooks] == ["processing", "failed"]
    assert hooks[1].json["task_status_msg"] == final["task_status_msg"] and hooks[1].json["task_result"] == {}
    # And a terminal status never changes
    time.sleep(0.2)
    assert query(client, sim, task_id)["task_status"] == "failed"


def test_unreachable_or_undecodable_inputs_fail_the_task(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given an image URL nobody listens on, a sound_file URL that is 404, and an "image" that is an MP3
    unreachable = created_id(create(client, sim, peer, image=f"http://127.0.0.1:{closed_port()}/image.png"))
    missing = created_id(create(client, sim, peer, sound_file=peer.url("/nothing.mp3")))
    not_an_image = created_id(create(client, sim, peer, image=peer.url("/audio.mp3")))

    # When they run, Then each ends failed, saying why
    first, second, third = (wait_terminal(client, sim, i) for i in (unreachable, missing, not_an_image))
    assert first["task_status"] == "failed" and first["task_status_msg"].startswith("media fetch failed: image:")
    assert second["task_status"] == "failed" and second["task_status_msg"] == "media fetch failed: sound_file: HTTP 404"
    assert third["task_status"] == "failed" and third["task_status_msg"].startswith("invalid input:")


def test_truncated_download_sends_fewer_bytes_than_its_content_length(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every output download is cut short
    sim = make_sim(faults=FaultPlan(processing_seconds=1.0, truncated_download_rate=1.0))
    final = wait_terminal(client, sim, created_id(create(client, sim, peer)))
    url = final["task_result"]["videos"][0]["url"]

    # When the video is downloaded
    progress: dict[str, int] = {}
    with pytest.raises(httpx.RemoteProtocolError):
        download_counting(url, progress)

    # Then the connection closed after half of the announced bytes
    assert 0 < progress["received"] == progress["announced"] // 2


def test_injected_submit_errors_are_gateway_or_kling_style(
    make_sim: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given every create fails: first with a gateway 503, then 429, then Kling's 1303 concurrency limit
    sim = make_sim(faults=FaultPlan(submit_error_rate=1.0, submit_error_status=503))
    unavailable = create(client, sim, peer)
    sim.set_faults(FaultPlan(submit_error_rate=1.0, submit_error_status=429))
    too_many = create(client, sim, peer)
    sim.set_faults(CometFaultPlan(submit_error_rate=1.0, submit_error_status=1303))
    concurrency = create(client, sim, peer)

    # Then 503 and 429 come in the gateway's shape, 1303 as HTTP 429 with a Kling body, and no task is made
    assert_gateway_error(unavailable, 503)
    assert_gateway_error(too_many, 429)
    assert_kling_error(concurrency, 429, 1303)
    assert "concurrency" in concurrency.json()["message"]
    assert "retry-after" not in concurrency.headers
    assert sim.tasks() == []
    # And only the CometAPI plan accepts the Kling code
    with pytest.raises(ValidationError):
        FaultPlan(submit_error_status=1303)
    with pytest.raises(ValidationError):
        CometFaultPlan(submit_error_status=404)


def test_result_error_rate_one_answers_the_configured_status(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given a task, and then a plan where every query fails with 502
    task_id = created_id(create(client, sim, peer))
    sim.set_faults(FaultPlan(processing_seconds=1.0, result_error_rate=1.0, result_error_status=502))

    # When it is queried, Then the answer is a gateway-style HTTP 502
    assert_gateway_error(client.get(f"{sim.base_url}{CREATE}/{task_id}"), 502)


def test_latency_fault_delays_every_api_answer(
    make_sim: Callable[..., CometApiSimulator], client: httpx.Client
) -> None:
    # Given 2 simulated seconds of latency at time_factor 10
    sim = make_sim(faults=FaultPlan(latency_seconds=2.0))

    # When a task is queried, Then the answer takes at least 0.2 s
    started = time.monotonic()
    client.get(f"{sim.base_url}{CREATE}/123456789012345678")
    assert time.monotonic() - started >= 0.19


# ------------------------------------------------------------------------------------------------ inspection


def test_inspection_endpoints_show_requests_tasks_callbacks_and_control_faults(
    sim: CometApiSimulator, peer: Peer, client: httpx.Client
) -> None:
    # Given one task created with a callback_url that ran to its end
    path = peer.new_hook_path()
    task_id = created_id(create(client, sim, peer, callback=path, external_task_id="x-1"))
    peer.wait_for_hooks(path, 2)
    assert sim.wait_until_idle(5)

    # When the inspection endpoints are read
    requests = httpx.get(sim.base_url + "/_sim/requests").json()
    tasks = httpx.get(sim.base_url + "/_sim/tasks").json()
    callbacks = httpx.get(sim.base_url + "/_sim/callbacks").json()
    faults = httpx.get(sim.base_url + "/_sim/faults").json()

    # Then the create is listed with its method, path, body and status, and the task and its callbacks too
    [submission] = requests
    assert submission["method"] == "POST" and submission["path"] == CREATE and submission["status"] == 200
    assert submission["json"]["external_task_id"] == "x-1" and submission["at"]
    assert sim.submissions() == [submission]
    [task] = tasks
    assert task["task_id"] == task_id and task["task_status"] == "succeed"
    assert task["callback_url"] == peer.url(path) and task["mode"] == "std"
    assert [(c["task_status"], c["status"]) for c in callbacks] == [("processing", 200), ("succeed", 200)]
    assert faults["processing_seconds"] == 1.0

    # And a fault plan posted at run time applies at once (Kling codes included), a bad one is refused,
    # and reset forgets recorded requests and callbacks but not tasks
    posted = httpx.post(sim.base_url + "/_sim/faults", json={"submit_error_rate": 1.0, "submit_error_status": 1303})
    assert posted.status_code == 200
    assert create(client, sim, peer).json()["code"] == 1303
    assert httpx.post(sim.base_url + "/_sim/faults", json={"no_such_fault": 1}).status_code == 400
    assert httpx.post(sim.base_url + "/_sim/reset").status_code == 200
    assert httpx.get(sim.base_url + "/_sim/requests").json() == []
    assert httpx.get(sim.base_url + "/_sim/callbacks").json() == []
    assert [t["task_id"] for t in sim.tasks()] == [task_id]


def test_simulator_is_quiet_and_stops_promptly(
    peer: Peer, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    # Given a simulator busy with a long task and an open keep-alive connection
    sim = CometApiSimulator(faults=FaultPlan(processing_seconds=60.0)).start()
    task_id = created_id(create(client, sim, peer, callback=peer.new_hook_path()))
    deadline = time.monotonic() + 5
    while query(client, sim, task_id)["task_status"] != "processing" and time.monotonic() < deadline:
        time.sleep(0.02)

    # When it is stopped
    started = time.monotonic()
    sim.stop()

    # Then it stops within moments (a render in flight at most), leaves no thread behind and logged nothing
    assert time.monotonic() - started < 2.0
    assert not [t for t in threading.enumerate() if t.name.startswith("cometapi-sim")]
    assert "HTTP/1.1" not in capfd.readouterr().err
