"""The provider simulators' chaos faults: answers lost after the job was made, and jittered webhook/callback delivery.

Each simulator test runs a simulator on 127.0.0.1 plus a small local peer that serves the input image and audio and
records, in arrival order, the webhooks/callbacks it receives. Time runs 10x fast (time_factor), so a simulated
second is 0.1 s of real time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from support.peer import Hook, Peer

from avatar_local.simulators.cometapi import CometApiSimulator
from avatar_local.simulators.faults import FaultPlan, SeededDecider
from avatar_local.simulators.media import make_sample_portrait, make_sample_speech
from avatar_local.simulators.wavespeed import DEFAULT_WEBHOOK_SECRET, WaveSpeedSimulator, sign_webhook

AUTH = {"Authorization": "Bearer test-key"}
TIME_FACTOR = 10.0
WAVESPEED_SUBMIT = "/api/v3/kwaivgi/kling-v1-ai-avatar-pro"
COMET_CREATE = "/kling/v1/videos/avatar/image2video"


# ------------------------------------------------------------------------------------------------ the local peer


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    serving = Peer(make_sample_portrait(160, 200), make_sample_speech(1.0))
    yield serving
    serving.close()


@pytest.fixture
def make_wavespeed() -> Iterator[Callable[..., WaveSpeedSimulator]]:
    started: list[WaveSpeedSimulator] = []

    def make(faults: FaultPlan, **kwargs: Any) -> WaveSpeedSimulator:
        sim = WaveSpeedSimulator(faults=faults, time_factor=TIME_FACTOR, **kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def make_comet() -> Iterator[Callable[..., CometApiSimulator]]:
    started: list[CometApiSimulator] = []

    def make(faults: FaultPlan, **kwargs: Any) -> CometApiSimulator:
        sim = CometApiSimulator(faults=faults, time_factor=TIME_FACTOR, **kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, timeout=10.0) as http:
        yield http


def wavespeed_submit(client: httpx.Client, sim: WaveSpeedSimulator, peer: Peer, webhook: str) -> httpx.Response:
    payload = {"image": peer.url("/image.png"), "audio": peer.url("/audio.mp3")}
    return client.post(sim.base_url + WAVESPEED_SUBMIT, params={"webhook": peer.url(webhook)}, json=payload)


def comet_create(client: httpx.Client, sim: CometApiSimulator, peer: Peer, callback: str) -> httpx.Response:
    payload = {
        "image": peer.url("/image.png"),
        "sound_file": peer.url("/audio.mp3"),
        "prompt": "A person talking to the camera.",
        "callback_url": peer.url(callback),
    }
    return client.post(sim.base_url + COMET_CREATE, json=payload)


def statuses(hooks: list[Hook]) -> list[str]:
    return [hook.json["task_status"] for hook in hooks]


# ------------------------------------------------------------------------------------------------ the plan


def test_uniform_stays_in_0_to_high_and_repeats_for_a_seed() -> None:
    # Given two deciders with the same seed and one with another seed
    first, same, other = SeededDecider(42), SeededDecider(42), SeededDecider(43)

    # When each draws 500 numbers below 2.5
    draws = [first.uniform(2.5) for _ in range(500)]
    again = [same.uniform(2.5) for _ in range(500)]
    elsewhere = [other.uniform(2.5) for _ in range(500)]

    # Then every draw lies in [0, 2.5), spread over the range, and the same seed draws the same numbers
    assert all(0.0 <= value < 2.5 for value in draws)
    assert min(draws) < 0.25 and max(draws) > 2.25
    assert draws == again
    assert draws != elsewhere


def test_uniform_with_no_range_is_zero_and_draws_nothing() -> None:
    # Given a decider, and a twin with the same seed
    decider, twin = SeededDecider(7), SeededDecider(7)

    # When the first is asked for numbers below 0 and below a negative bound, then both draw
    empty = [decider.uniform(0.0), decider.uniform(-3.0)]

    # Then those are 0 and consumed no randomness: both continue with the same numbers
    assert empty == [0.0, 0.0]
    assert [decider.uniform(1.0) for _ in range(5)] == [twin.uniform(1.0) for _ in range(5)]


def test_delivery_delay_is_the_fixed_delay_when_there_is_no_jitter() -> None:
    # Given a plan with a 3.5 s webhook delay and no jitter
    plan = FaultPlan(seed=1, webhook_delay_seconds=3.5)

    # When the delays of several deliveries are asked for
    delays = [plan.delivery_delay() for _ in range(20)]

    # Then each is exactly the fixed delay
    assert delays == [3.5] * 20
    assert FaultPlan().delivery_delay() == 0.0


def test_delivery_delay_with_jitter_adds_a_repeatable_random_share_of_it() -> None:
    # Given two plans with the same seed, a 1 s delay and up to 4 s of jitter
    plan, twin = (FaultPlan(seed=5, webhook_delay_seconds=1.0, webhook_jitter_seconds=4.0) for _ in range(2))

    # When each is asked for 200 delays
    delays = [plan.delivery_delay() for _ in range(200)]

    # Then each delay lies in [1, 5), they vary, and the same seed gives the same delays
    assert all(1.0 <= delay < 5.0 for delay in delays)
    assert len(set(delays)) > 150
    assert delays == [twin.delivery_delay() for _ in range(200)]


@pytest.mark.parametrize(
    "fields",
    [{"lost_answer_rate": 1.5}, {"lost_answer_rate": -0.1}, {"webhook_jitter_seconds": -1.0}],
)
def test_plan_rejects_a_lost_answer_rate_outside_0_to_1_and_negative_jitter(fields: dict[str, Any]) -> None:
    # Given an out-of-range lost-answer rate or a negative jitter
    # When a plan is built from it
    # Then validation refuses it
    with pytest.raises(ValidationError):
        FaultPlan.model_validate(fields)


def test_plan_with_the_new_fields_can_be_posted_to_a_running_simulator(
    make_wavespeed: Callable[..., WaveSpeedSimulator],
) -> None:
    # Given a running simulator
    sim = make_wavespeed(FaultPlan())

    # When a plan losing every answer and jittering webhooks is posted to /_sim/faults, and a bad one after it
    posted = httpx.post(f"{sim.base_url}/_sim/faults", json={"lost_answer_rate": 1.0, "webhook_jitter_seconds": 7})
    refused = httpx.post(f"{sim.base_url}/_sim/faults", json={"webhook_jitter_seconds": -1})

    # Then the first is in force, with its new fields, and the bad one is refused without replacing it
    assert posted.status_code == 200
    assert refused.status_code == 400
    current = httpx.get(f"{sim.base_url}/_sim/faults").json()
    assert current["lost_answer_rate"] == 1.0 and current["webhook_jitter_seconds"] == 7.0
    assert sim.faults.lost_answer_rate == 1.0


# ------------------------------------------------------------------------------------------------ WaveSpeed


def test_wavespeed_lost_answer_closes_the_connection_yet_the_prediction_exists_and_completes(
    make_wavespeed: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator that loses the answer to every submit
    sim = make_wavespeed(FaultPlan(processing_seconds=1.0, lost_answer_rate=1.0))
    path = peer.new_hook_path()

    # When a valid submit is posted
    with pytest.raises(httpx.RemoteProtocolError):
        wavespeed_submit(client, sim, peer, path)

    # Then the prediction was made anyway, and is processed to completion with its webhook sent
    predictions = sim.predictions()
    assert len(predictions) == 1
    hooks = peer.wait_for_hooks(path, 1)
    assert sim.wait_until_idle(5)
    assert sim.predictions()[0]["status"] == "completed"
    assert [hook.json["id"] for hook in hooks] == [predictions[0]["id"]]
    # And the request log shows the submit as lost
    assert [request["status"] for request in sim.submissions()] == ["lost"]
    # And only submits lose their answer: the prediction's result is answered
    answer = client.get(f"{sim.base_url}/api/v3/predictions/{predictions[0]['id']}/result")
    assert answer.status_code == 200 and answer.json()["data"]["status"] == "completed"


def test_wavespeed_duplicate_webhook_with_jitter_sends_both_copies_with_one_webhook_id(
    make_wavespeed: Callable[..., WaveSpeedSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator that duplicates every webhook and jitters each copy by up to 5 s (0.5 s real)
    sim = make_wavespeed(
        FaultPlan(seed=3, processing_seconds=1.0, duplicate_webhook_rate=1.0, webhook_jitter_seconds=5)
    )
    path = peer.new_hook_path()

    # When a prediction with a webhook completes
    response = wavespeed_submit(client, sim, peer, path)
    assert response.status_code == 200 and response.json()["code"] == 200
    hooks = peer.wait_for_hooks(path, 2)
    assert sim.wait_until_idle(5)

    # Then both copies arrive, with the same webhook-id and body, each correctly signed
    assert len(peer.hooks_at(path)) == 2
    assert hooks[0].headers["webhook-id"] == hooks[1].headers["webhook-id"]
    assert hooks[0].body == hooks[1].body
    for hook in hooks:
        expected = sign_webhook(
            DEFAULT_WEBHOOK_SECRET, hook.headers["webhook-id"], hook.headers["webhook-timestamp"], hook.body
        )
        assert hook.headers["webhook-signature"] == expected
    # And the simulator recorded one original and one duplicate delivery, each taken at the first attempt
    deliveries = sim.webhook_deliveries()
    assert [(d["duplicate"], d["attempt"], d["status"]) for d in deliveries] == [(False, 1, 200), (True, 1, 200)]


# ------------------------------------------------------------------------------------------------ CometAPI


def test_cometapi_lost_answer_closes_the_connection_yet_the_task_exists_and_succeeds(
    make_comet: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a simulator that loses the answer to every create
    sim = make_comet(FaultPlan(processing_seconds=1.0, lost_answer_rate=1.0))
    path = peer.new_hook_path()

    # When a valid create is posted
    with pytest.raises(httpx.RemoteProtocolError):
        comet_create(client, sim, peer, path)

    # Then the task was made anyway, and is processed to succeed with its callbacks sent
    tasks = sim.tasks()
    assert len(tasks) == 1
    hooks = peer.wait_for_hooks(path, 2)
    assert sim.wait_until_idle(5)
    assert sim.tasks()[0]["task_status"] == "succeed"
    assert statuses(hooks) == ["processing", "succeed"]
    assert {hook.json["task_id"] for hook in hooks} == {tasks[0]["task_id"]}
    # And the request log shows the create as lost
    assert [request["status"] for request in sim.submissions()] == ["lost"]
    # And only creates lose their answer: a query of the task is answered
    answer = client.get(f"{sim.base_url}{COMET_CREATE}/{tasks[0]['task_id']}")
    assert answer.status_code == 200 and answer.json()["data"]["task_status"] == "succeed"


def test_cometapi_jitter_can_deliver_succeed_before_processing(
    make_comet: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given a seed whose first two delivery delays, with up to 20 s (2 s real) of jitter, put the first one (the
    # processing callback's) at least 12 s (1.2 s real) after the second (the succeed callback's): far more than the
    # task takes to process
    jitter = 20.0

    def first_two_delays(seed: int) -> tuple[float, float]:
        plan = FaultPlan(seed=seed, webhook_jitter_seconds=jitter)
        return plan.delivery_delay(), plan.delivery_delay()

    seed = next(s for s in range(1000) if first_two_delays(s)[0] - first_two_delays(s)[1] >= 0.6 * jitter)
    sim = make_comet(FaultPlan(seed=seed, processing_seconds=1.0, webhook_jitter_seconds=jitter))
    path = peer.new_hook_path()

    # When one task with a callback_url succeeds
    response = comet_create(client, sim, peer, path)
    assert response.status_code == 200 and response.json()["code"] == 0
    hooks = peer.wait_for_hooks(path, 2)
    assert sim.wait_until_idle(5)

    # Then the succeed callback arrives first, the processing one after it, each exactly once
    assert statuses(hooks) == ["succeed", "processing"]
    assert [d["task_status"] for d in sim.callback_deliveries()] == ["succeed", "processing"]


def test_cometapi_jittered_callbacks_overtake_each_other_yet_each_arrives_exactly_once(
    make_comet: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given callbacks jittered by up to 10 s (1 s real), far more than a task takes: tasks that fail at once
    # (no rendering) and no lost or duplicated callbacks
    sim = make_comet(
        FaultPlan(seed=11, processing_seconds=0.0, fail_rate=1.0, webhook_jitter_seconds=10.0), max_concurrent=4
    )
    paths = [peer.new_hook_path() for _ in range(12)]

    # When 12 tasks are created, each with its own callback_url
    for path in paths:
        response = comet_create(client, sim, peer, path)
        assert response.status_code == 200 and response.json()["code"] == 0
    arrived = {path: peer.wait_for_hooks(path, 2) for path in paths}
    assert sim.wait_until_idle(5)

    # Then every task got exactly one processing and one failed callback
    for path in paths:
        assert Counter(statuses(peer.hooks_at(path))) == Counter({"processing": 1, "failed": 1})
    # And for some task the failed callback overtook the processing one
    orders = [statuses(hooks) for hooks in arrived.values()]
    assert ["failed", "processing"] in orders
    # And each callback went out once, taken at its first attempt
    deliveries = sim.callback_deliveries()
    assert len(deliveries) == 24
    assert all(d["attempt"] == 1 and d["status"] == 200 and not d["duplicate"] for d in deliveries)


def test_cometapi_callbacks_without_jitter_arrive_in_status_order_even_when_delayed(
    make_comet: Callable[..., CometApiSimulator], peer: Peer, client: httpx.Client
) -> None:
    # Given callbacks all delayed by the same 3 s (0.3 s real), without jitter, for tasks that fail at once
    sim = make_comet(FaultPlan(processing_seconds=0.0, fail_rate=1.0, webhook_delay_seconds=3.0), max_concurrent=4)
    paths = [peer.new_hook_path() for _ in range(6)]

    # When 6 tasks are created, each with its own callback_url
    for path in paths:
        response = comet_create(client, sim, peer, path)
        assert response.status_code == 200 and response.json()["code"] == 0
    arrived = {path: peer.wait_for_hooks(path, 2) for path in paths}
    assert sim.wait_until_idle(5)

    # Then each task's callbacks arrive in status order: the earlier status change is due first
    assert all(statuses(hooks) == ["processing", "failed"] for hooks in arrived.values())
