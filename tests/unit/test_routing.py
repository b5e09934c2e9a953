"""Routing a job by its model: job.json names the model, its options and the providers to try in order; intake
checks the pair against the first provider's model and keeps, of the rest, those that could run it with these very
files; the dispatcher sends the model's id and fields, and a task turned away moves forward along the list, never
back. Run on the in-memory fakes, with a scripted provider for each of WaveSpeed, CometAPI and fal.ai."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ConfigDict
from support.corpus import wav
from support.fakes import (
    BUCKET,
    ScriptedProvider,
    World,
    callback_query,
    make_world,
    run_dispatcher,
    upload,
)

from avatar_pipeline.domain.errors import ProviderTransientError
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, Task, TaskStatus
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.providers.spec import (
    MIB,
    BillingRule,
    InputLimits,
    ModelSpec,
    ProviderSettings,
    ProviderSpec,
    catalog,
    env_prefixed,
)
from avatar_pipeline.services.admission import dispatch
from avatar_pipeline.services.finishing import announce, finalize_output
from avatar_pipeline.services.intake import handle_upload
from avatar_pipeline.services.tracking import receive_callback

S = TaskStatus
# WAV clips last exactly as long as asked (an MP3's encoder adds a frame or two), so costs and frame counts can be
# worked out by hand. 12.3 s: 13 whole seconds, 3 started 5 s steps, 308 frames at 25 a second.
CLIP = 12.3
VIDEO = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64
KLING_V2_STD = {
    "wavespeed": "kwaivgi/kling-v2-ai-avatar-standard",
    "fal": "fal-ai/kling-video/ai-avatar/v2/standard",
}
TODAY = "2025-06-01"  # the fakes' clock


Providers = dict[str, ScriptedProvider]


def three_providers(*extra: str) -> tuple[World, Providers]:
    """WaveSpeed, CometAPI and fal.ai (and any `extra` registered provider) configured and allowed."""
    providers = {
        name: ScriptedProvider(name, "query" if name == "cometapi" else "signature")
        for name in ("wavespeed", "cometapi", "fal", *extra)
    }
    return make_world(provider=providers["wavespeed"], providers=providers), providers


@pytest.fixture
def world() -> tuple[World, Providers]:
    return three_providers()


def deliver(w: World, job: str, options: dict[str, Any], seconds: float = CLIP) -> Task:
    """Job `job`'s job.json, then its portrait and a voice clip of `seconds`, arrive; the task they made."""
    w.media.put_object(BUCKET, f"inbox/{job}/job.json", json.dumps(options))
    clip = wav(seconds)
    w.media.put_object(BUCKET, f"inbox/{job}/voice.wav", clip)
    assert handle_upload(w.ctx, upload(f"inbox/{job}/face.png", etag=f"{job}-img", size=200_000)).action == "waiting"
    outcome = handle_upload(w.ctx, upload(f"inbox/{job}/voice.wav", etag=f"{job}-aud", size=len(clip)))
    task = w.tasks.get(outcome.task_id or "")
    assert task is not None
    return task


def queued(w: World, job: str, options: dict[str, Any], seconds: float = CLIP) -> Task:
    task = deliver(w, job, options, seconds)
    assert task.status is S.QUEUED, task.reason
    return task


def current(w: World, task: Task) -> Task:
    found = w.tasks.get(task.task_id)
    assert found is not None
    return found


def reasons(task: Task) -> list[str]:
    return [step.reason for step in task.history]


def submit_counts(providers: Providers) -> dict[str, int]:
    return {name: provider.submit_count for name, provider in providers.items()}


def every_line_moves_later(w: World, providers: Providers) -> None:
    """Long after every pause is over, each provider's line is moved once more."""
    w.clock.advance(3600)
    for name in providers:
        dispatch(w.ctx, name, lambda: timedelta(minutes=5))


# ============================================================================================== a list of providers


def test_a_job_listing_wavespeed_then_fal_goes_to_wavespeed_and_when_turned_away_to_fal_once(
    world: tuple[World, Providers],
) -> None:
    w, providers = world
    # Given a job asking for Kling v2 standard at WaveSpeed, else at fal.ai, with a 12.3 s clip
    task = queued(w, "ann", {"providers": ["wavespeed", "fal"], "model": "kling-v2-std"})
    # Then it waits in WaveSpeed's line at WaveSpeed's price (3 started 5 s steps x $0.28), fal.ai its one target
    assert (task.provider, task.model, task.failover_targets) == ("wavespeed", "kling-v2-std", ("fal",))
    assert task.estimated_cost_usd == "0.84"
    assert (w.tasks.line("wavespeed"), w.tasks.line("fal")) == ([task.task_id], [])
    # When WaveSpeed turns the submission away, and the dispatcher follows the table's stream
    providers["wavespeed"].script_submit(ProviderTransientError("HTTP 503", code="503"))
    assert run_dispatcher(w) == {"submit-requeued": 1, "submit-submitted": 1}
    # Then fal.ai was sent it, for its own Kling v2 standard, once; CometAPI never
    assert submit_counts(providers) == {"wavespeed": 1, "cometapi": 0, "fal": 1}
    assert [r.model_id for r in providers["wavespeed"].submissions] == [KLING_V2_STD["wavespeed"]]
    assert [r.model_id for r in providers["fal"].submissions] == [KLING_V2_STD["fal"]]
    # and the task says where it is, where it came from, its model and fal.ai's estimate (13 s x $0.0562, rounded up)
    moved = current(w, task)
    assert (moved.status, moved.provider, moved.failed_over_from, moved.model) == (
        S.SUBMITTED,
        "fal",
        "wavespeed",
        "kling-v2-std",
    )
    assert moved.estimated_cost_usd == "0.74"
    assert "WaveSpeed is unavailable (HTTP 503); failing over to fal.ai" in reasons(moved)
    assert w.meter.submissions == [("fal", "0.74")]
    # and when every line moves again later, nothing more is sent anywhere
    every_line_moves_later(w, providers)
    assert submit_counts(providers) == {"wavespeed": 1, "cometapi": 0, "fal": 1}


# A provider of the test's, offering Kling v2 standard as well: no model of the catalog is offered by all three real
# providers (Kling v1: WaveSpeed and CometAPI; Kling v2, OmniHuman and InfiniteTalk: WaveSpeed and fal.ai).
class AcmeSettings(ProviderSettings):
    model_config = ConfigDict(alias_generator=env_prefixed("ACME_"))

    base_url: str = "https://api.acme.test"


ACME = ProviderSpec(
    name="acme",
    display_name="Acme Video",
    models=catalog(
        ModelSpec(
            name="kling-v2-std",
            model_id="acme/kling-v2-avatar-std",
            title="Kling v2 AI Avatar (standard, at Acme)",
            limits=InputLimits(max_image_bytes=10 * MIB, max_audio_bytes=5 * MIB, max_audio_seconds=60.0),
            price_per_step=Decimal("0.05"),
            billing=BillingRule(step_seconds=1),
            render_seconds_per_second=20.0,
        )
    ),
    settings=AcmeSettings,
    output_retention=timedelta(days=3),
    output_hosts=("*.acme.test",),
    build=lambda settings, secret, http: None,
)


@pytest.fixture
def with_acme() -> Iterator[tuple[World, Providers]]:
    with PROVIDERS.registered(ACME):
        yield three_providers("acme")


def test_a_three_provider_list_moves_forward_twice_and_the_third_gets_it(with_acme: tuple[World, Providers]) -> None:
    w, providers = with_acme
    # Given a job listing WaveSpeed, fal.ai and Acme for Kling v2 standard
    task = queued(w, "bea", {"providers": ["wavespeed", "fal", "acme"], "model": "kling-v2-std"})
    assert (task.provider, task.failover_targets) == ("wavespeed", ("fal", "acme"))
    # When WaveSpeed turns it away, and then fal.ai does too
    providers["wavespeed"].script_submit(ProviderTransientError("HTTP 503", code="503"))
    providers["fal"].script_submit(ProviderTransientError("HTTP 429", code="429"))
    assert run_dispatcher(w) == {"submit-requeued": 2, "submit-submitted": 1}
    # Then each was sent it once, in the job's order, and Acme took it, at Acme's price (13 s x $0.05)
    assert submit_counts(providers) == {"wavespeed": 1, "cometapi": 0, "fal": 1, "acme": 1}
    assert providers["acme"].submissions[0].model_id == "acme/kling-v2-avatar-std"
    done = current(w, task)
    assert (done.status, done.provider, done.failed_over_from) == (S.SUBMITTED, "acme", "fal")
    assert done.estimated_cost_usd == "0.65"
    assert done.targets_ahead == ()
    assert "WaveSpeed is unavailable (HTTP 503); failing over to fal.ai" in reasons(done)
    assert "fal.ai is unavailable (HTTP 429); failing over to Acme Video" in reasons(done)
    # and it never goes back
    every_line_moves_later(w, providers)
    assert submit_counts(providers) == {"wavespeed": 1, "cometapi": 0, "fal": 1, "acme": 1}


def test_a_task_turned_away_by_the_last_provider_of_its_list_waits_there_and_never_goes_back(
    with_acme: tuple[World, Providers],
) -> None:
    w, providers = with_acme
    # Given all three listed providers turn it away (Acme once)
    task = queued(w, "cal", {"providers": ["wavespeed", "fal", "acme"], "model": "kling-v2-std"})
    providers["wavespeed"].script_submit(ProviderTransientError("HTTP 503"))
    providers["fal"].script_submit(ProviderTransientError("HTTP 503"))
    providers["acme"].script_submit(
        ProviderTransientError("HTTP 503"), ProviderJob(provider_task_id="acme-1", status=ProviderJobStatus.QUEUED)
    )
    assert run_dispatcher(w) == {"submit-requeued": 3}
    # Then it waits in Acme's line, the end of its list
    waiting = current(w, task)
    assert (waiting.status, waiting.provider, waiting.failed_over_from) == (S.QUEUED, "acme", "fal")
    assert waiting.reason is not None and waiting.reason.startswith("Acme Video turned it away (HTTP 503)")
    assert (w.tasks.line("wavespeed"), w.tasks.line("fal"), w.tasks.line("acme")) == ([], [], [task.task_id])
    # When every line moves again once the pauses are over
    every_line_moves_later(w, providers)
    # Then Acme is sent it again; WaveSpeed and fal.ai never again
    assert submit_counts(providers) == {"wavespeed": 1, "cometapi": 0, "fal": 1, "acme": 2}
    assert current(w, task).status is S.SUBMITTED


def test_a_listed_provider_that_does_not_offer_the_model_is_no_target_and_the_reason_says_why(
    world: tuple[World, Providers],
) -> None:
    w, providers = world
    # Given a job listing all three providers for OmniHuman 1.5, which CometAPI does not offer
    task = queued(w, "dan", {"providers": ["wavespeed", "cometapi", "fal"], "model": "omnihuman-1.5"})
    # Then only fal.ai is a target, and the task says why CometAPI is not
    assert task.failover_targets == ("fal",)
    assert task.reason is not None
    assert (
        "never moves to CometAPI: CometAPI does not offer the model omnihuman-1.5 (its models: kling-v1-std,"
        " kling-v1-pro)" in task.reason
    )
    # When WaveSpeed turns it away
    providers["wavespeed"].script_submit(ProviderTransientError("HTTP 503"))
    run_dispatcher(w)
    # Then it skips CometAPI for fal.ai
    assert submit_counts(providers) == {"wavespeed": 1, "cometapi": 0, "fal": 1}
    assert current(w, task).provider == "fal"


def test_a_listed_provider_whose_limits_do_not_fit_the_files_is_passed_over_saying_so(
    world: tuple[World, Providers],
) -> None:
    w, providers = world
    # Given a 45 s clip for InfiniteTalk: WaveSpeed's takes 600 s, fal.ai's at most 28.84 s (721 frames)
    task = queued(w, "eve", {"providers": ["wavespeed", "fal"], "model": "infinitetalk"}, seconds=45.0)
    # Then it waits at WaveSpeed (45 s x $0.03), may not move, and says why
    assert (task.provider, task.estimated_cost_usd, task.failover_targets) == ("wavespeed", "1.35", ())
    assert task.reason is not None and "never moves to fal.ai: its limits do not fit these files" in task.reason
    # When WaveSpeed turns it away
    providers["wavespeed"].script_submit(ProviderTransientError("HTTP 503"))
    assert run_dispatcher(w) == {"submit-requeued": 1}
    # Then it is back in WaveSpeed's line, and fal.ai is never sent it
    back = current(w, task)
    assert (back.status, back.provider, back.failed_over_from) == (S.QUEUED, "wavespeed", None)
    assert submit_counts(providers) == {"wavespeed": 1, "cometapi": 0, "fal": 0}


def test_the_same_list_with_a_clip_both_models_take_keeps_fal_as_a_target(world: tuple[World, Providers]) -> None:
    w, _ = world
    # Given a 20 s clip for InfiniteTalk, within fal.ai's 28.84 s
    task = queued(w, "fay", {"providers": ["wavespeed", "fal"], "model": "infinitetalk"}, seconds=20.0)
    # Then fal.ai is its target, and nothing is said to be passed over
    assert task.failover_targets == ("fal",)
    assert task.reason is not None and "never moves" not in task.reason


def test_a_listed_provider_whose_model_does_not_take_the_options_is_passed_over_naming_the_option(
    world: tuple[World, Providers],
) -> None:
    w, _ = world
    # Given a seed of -1 (WaveSpeed's "random"), which fal.ai's InfiniteTalk does not take (its seeds start at 0)
    task = queued(w, "gus", {"providers": ["wavespeed", "fal"], "model": "infinitetalk", "options": {"seed": -1}})
    # Then it may not move to fal.ai, and the task says why
    assert task.failover_targets == ()
    assert task.reason is not None
    passed_over = task.reason.split("never moves to fal.ai: ", 1)[-1]
    assert "never moves to fal.ai: " in task.reason
    assert "InfiniteTalk" in passed_over and 'option "seed" must be from 0 to 2147483647' in passed_over


def test_a_job_asking_for_failover_is_told_where_its_task_will_never_go(world: tuple[World, Providers]) -> None:
    w, _ = world
    # Given a job naming no list but asking for failover, with an option fal.ai's InfiniteTalk does not take
    task = queued(w, "hal", {"model": "infinitetalk", "options": {"seed": -1}, "failover": True})
    # Then it has no target, and the task says why fal.ai is none
    assert task.failover_targets == ()
    assert 'never moves to fal.ai: fal.ai\'s InfiniteTalk: option "seed" must be from 0' in (task.reason or "")


def test_a_turned_away_task_does_not_move_to_a_target_that_no_longer_runs_its_model(
    world: tuple[World, Providers],
) -> None:
    w, providers = world
    # Given a task queued at WaveSpeed with fal.ai as its target for Kling v2 standard
    task = queued(w, "ivy", {"providers": ["wavespeed", "fal"], "model": "kling-v2-std"})
    assert task.failover_targets == ("fal",)
    # When fal.ai no longer offers that model (a redeploy changed its catalog) and WaveSpeed turns the task away
    fal = PROVIDERS["fal"]
    without = dataclasses.replace(fal, models={k: v for k, v in fal.models.items() if k != "kling-v2-std"})
    providers["wavespeed"].script_submit(ProviderTransientError("HTTP 503", code="503"))
    with PROVIDERS.registered(without, replacing=True):
        run_dispatcher(w)
    # Then it goes back to its place in WaveSpeed's line: nothing was sent to fal.ai
    after = current(w, task)
    assert (after.status, after.provider, after.failed_over_from) == (S.QUEUED, "wavespeed", None)
    assert providers["fal"].submit_count == 0


def test_a_listed_provider_over_the_per_pair_cost_limit_is_passed_over_saying_so() -> None:
    # Given a per-pair limit of $1.00, and InfiniteTalk at 720p: 13 s x $0.06 = $0.78 at WaveSpeed, x $0.40 = $5.20
    # at fal.ai
    providers = {name: ScriptedProvider(name) for name in ("wavespeed", "fal")}
    w = make_world(provider=providers["wavespeed"], providers=providers, settings={"MAX_COST_PER_PAIR_USD": "1.00"})
    task = queued(
        w, "hal", {"providers": ["wavespeed", "fal"], "model": "infinitetalk", "options": {"resolution": "720p"}}
    )
    # Then it waits at WaveSpeed and may not move to fal.ai, saying why
    assert (task.provider, task.estimated_cost_usd, task.failover_targets) == ("wavespeed", "0.78", ())
    assert task.reason is not None
    assert "never moves to fal.ai: it would cost more than the per-pair cost limit" in task.reason


def test_a_listed_provider_the_operator_does_not_allow_rejects_the_pair_naming_the_setting() -> None:
    # Given a stack that allows WaveSpeed and CometAPI only
    providers = {name: ScriptedProvider(name) for name in ("wavespeed", "fal")}
    w = make_world(
        provider=providers["wavespeed"], providers=providers, settings={"ALLOWED_PROVIDERS": "wavespeed,cometapi"}
    )
    # When a job lists fal.ai after WaveSpeed
    task = deliver(w, "ivy", {"providers": ["wavespeed", "fal"], "model": "kling-v2-std"})
    # Then the pair is rejected (a pair asking for a provider the stack does not allow is), unpaid
    assert_rejected_unpaid(
        w,
        providers,
        task,
        'job.json asks for provider "fal", which this stack does not allow (AllowedProviders: wavespeed, cometapi)',
    )


def test_a_mode_with_a_list_means_the_first_providers_kling_model_of_that_tier(world: tuple[World, Providers]) -> None:
    w, providers = world
    # Given a job asking for "pro" at fal.ai, else WaveSpeed (the default model being Kling v1 standard)
    task = queued(w, "jim", {"providers": ["fal", "wavespeed"], "mode": "pro"})
    # Then it is fal.ai's Kling (v2) pro, at 13 s x $0.115 = $1.495, and WaveSpeed (which offers it too) is its target
    assert (task.provider, task.model, task.estimated_cost_usd, task.failover_targets) == (
        "fal",
        "kling-v2-pro",
        "1.50",
        ("wavespeed",),
    )
    run_dispatcher(w)
    assert providers["fal"].submissions[0].model_id == "fal-ai/kling-video/ai-avatar/v2/pro"


# ============================================================================================== rejected before paying


def assert_rejected_unpaid(w: World, providers: Providers, task: Task, *reason: str) -> None:
    """REJECTED, straight from waiting for its pair, with a reason holding each of `reason` (the whole of it, when
    one is given whole); in no line, never sent, nothing spent."""
    assert task.status is S.REJECTED
    assert task.reason is not None
    assert all(part in task.reason for part in reason), task.reason
    assert [(step.from_status, step.to_status) for step in task.history] == [
        (None, S.WAITING_FOR_PAIR),
        (S.WAITING_FOR_PAIR, S.REJECTED),
    ]
    assert task.estimated_cost_usd is None
    assert all(w.tasks.line(name) == [] for name in providers)
    run_dispatcher(w)
    assert set(submit_counts(providers).values()) == {0}
    assert w.tasks.spent_on(TODAY) == Decimal(0)


# How an option problem is worded around the model and the provider may change; what it must name may not: the
# model (its title), the option and what is wrong with it, and the provider.
@pytest.mark.parametrize(
    ("options", "names"),
    [
        (
            {"providers": ["wavespeed", "fal"], "model": "kling-v2-std", "options": {"seed": 7}},
            ["Kling v2 AI Avatar (standard)", 'has no option "seed" (its options: none)', "WaveSpeed"],
        ),
        (
            # fal.ai's OmniHuman takes a resolution, but the pair goes to the first provider, whose does not
            {"providers": ["wavespeed", "fal"], "model": "omnihuman-1.5", "options": {"resolution": "720p"}},
            ["OmniHuman 1.5", 'has no option "resolution" (its options: none)', "WaveSpeed"],
        ),
        (
            {"model": "infinitetalk", "options": {"resolution": "1080p"}},
            ["InfiniteTalk", "option \"resolution\" must be one of '480p', '720p'", "WaveSpeed"],
        ),
        (
            {"model": "infinitetalk", "options": {"seed": True}},
            ["InfiniteTalk", 'option "seed" must be a whole number', "WaveSpeed"],
        ),
        (
            {"provider": "fal", "model": "infinitetalk", "options": {"seed": -1}},
            ["InfiniteTalk", 'option "seed" must be from 0 to 2147483647', "fal.ai"],
        ),
        (
            {"mode": "pro", "options": {"seed": 1}},
            [
                "job.json's mode 'pro' means kling-v1-pro: ",
                "Kling v1 AI Avatar (pro)",
                'has no option "seed"',
                "WaveSpeed",
            ],
        ),
    ],
    ids=[
        "no-such-option",
        "only-a-later-provider-takes-it",
        "wrong-choice",
        "bool-for-integer",
        "out-of-range",
        "mode",
    ],
)
def test_options_the_first_providers_model_does_not_take_are_rejected_naming_the_model_and_option(
    world: tuple[World, Providers], options: dict[str, Any], names: list[str]
) -> None:
    w, providers = world
    # When a pair arrives whose job.json gives options its (first) provider's model does not take
    task = deliver(w, "hal", options)
    # Then it is rejected, naming the model, the option and the provider, and nothing is sent or paid
    assert_rejected_unpaid(w, providers, task, *names)


@pytest.mark.parametrize(
    ("options", "seconds", "reason"),
    [
        (
            {"provider": "fal", "model": "omnihuman-1.5"},
            35.0,
            "voice.wav lasts 35.0 s; the limit is 30 s for OmniHuman 1.5 at 1080p on fal.ai",
        ),
        (
            {"provider": "fal", "model": "omnihuman-1.5", "options": {"resolution": "1080p"}},
            35.0,
            "voice.wav lasts 35.0 s; the limit is 30 s for OmniHuman 1.5 at 1080p on fal.ai",
        ),
        (
            {"provider": "fal", "model": "infinitetalk", "options": {"resolution": "720p"}},
            29.0,
            "voice.wav lasts 29.0 s; the limit is 28.84 s for InfiniteTalk at 720p on fal.ai",
        ),
        (
            {"provider": "cometapi", "model": "kling-v1-std"},
            61.0,
            "voice.wav lasts 61.0 s; the limit is 60 s for Kling AI Avatar (std) on CometAPI",
        ),
    ],
    ids=["omnihuman-default-1080p", "omnihuman-1080p", "infinitetalk-fal", "kling-cometapi"],
)
def test_a_clip_over_its_models_limit_is_rejected_naming_the_model_and_the_limit(
    world: tuple[World, Providers], options: dict[str, Any], seconds: float, reason: str
) -> None:
    w, providers = world
    task = deliver(w, "ian", options, seconds=seconds)
    assert_rejected_unpaid(w, providers, task, reason)


def test_the_same_35_s_clip_for_omnihuman_on_fal_at_720p_is_queued(world: tuple[World, Providers]) -> None:
    w, providers = world
    # Given fal.ai's OmniHuman takes 60 s at 720p
    task = queued(w, "jo", {"provider": "fal", "model": "omnihuman-1.5", "options": {"resolution": "720p"}}, 35.0)
    # Then it waits in fal.ai's line, at 35 s x $0.16, named at its resolution
    assert (task.provider, task.model, task.options, task.estimated_cost_usd) == (
        "fal",
        "omnihuman-1.5",
        {"resolution": "720p"},
        "5.60",
    )
    assert task.reason is not None and "OmniHuman 1.5 at 720p, 1st in line for fal.ai" in task.reason
    # and is sent at that resolution
    assert run_dispatcher(w) == {"submit-submitted": 1}
    (request,) = providers["fal"].submissions
    assert (request.model_id, request.options) == ("fal-ai/bytedance/omnihuman/v1.5", {"resolution": "720p"})


# ============================================================================================== what is sent


def test_a_prompt_for_omnihuman_on_wavespeed_is_not_sent_and_the_task_says_so(world: tuple[World, Providers]) -> None:
    w, providers = world
    # Given a job with a prompt, for a model that takes none
    task = queued(w, "kay", {"model": "omnihuman-1.5", "prompt": "Smile, then nod."})
    # Then the task keeps it but says it is not sent
    assert task.prompt == "Smile, then nod."
    assert task.reason is not None
    assert task.reason.endswith("; its prompt is not sent: OmniHuman 1.5 on WaveSpeed takes none")
    # When the dispatcher sends it
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then WaveSpeed gets no prompt
    (request,) = providers["wavespeed"].submissions
    assert (request.model_id, request.prompt) == ("bytedance/avatar-omni-human-1.5", None)


def test_a_prompt_for_a_model_that_takes_one_is_sent(world: tuple[World, Providers]) -> None:
    w, providers = world
    task = queued(w, "lee", {"model": "kling-v1-std", "prompt": "Smile, then nod."})
    assert task.reason is not None and "prompt" not in task.reason
    run_dispatcher(w)
    (request,) = providers["wavespeed"].submissions
    assert request.prompt == "Smile, then nod."


def test_a_prompt_dropped_on_failing_over_to_a_model_that_takes_none_is_said_too(
    world: tuple[World, Providers],
) -> None:
    w, providers = world
    # Given a job with a prompt for OmniHuman at fal.ai (whose OmniHuman takes one), else at WaveSpeed (whose does not)
    task = queued(w, "kit", {"providers": ["fal", "wavespeed"], "model": "omnihuman-1.5", "prompt": "Smile."})
    assert task.reason is not None and "prompt" not in task.reason
    # When fal.ai turns it away and it fails over to WaveSpeed
    providers["fal"].script_submit(ProviderTransientError("HTTP 503"))
    assert run_dispatcher(w) == {"submit-requeued": 1, "submit-submitted": 1}
    # Then WaveSpeed is sent no prompt
    assert [r.prompt for r in providers["fal"].submissions] == ["Smile."]
    assert [r.prompt for r in providers["wavespeed"].submissions] == [None]
    # and the task says so, as it does when WaveSpeed is the first provider
    assert any("prompt is not sent" in reason for reason in reasons(current(w, task)))


@pytest.mark.parametrize(
    ("options", "provider", "model_id", "fields", "cost"),
    [
        (
            {"model": "infinitetalk", "options": {"resolution": "720p", "seed": 7}},
            "wavespeed",
            "wavespeed-ai/infinitetalk",
            {"resolution": "720p", "seed": 7},
            "0.78",  # 13 s x $0.06
        ),
        (
            {"provider": "fal", "model": "infinitetalk", "options": {"resolution": "720p", "seed": 7}},
            "fal",
            "fal-ai/infinitalk",
            {"resolution": "720p", "seed": 7, "num_frames": 308},  # 12.3 s x 25 frames a second, rounded up
            "5.20",  # 13 s x $0.40
        ),
        (
            {"provider": "fal", "model": "infinitetalk"},
            "fal",
            "fal-ai/infinitalk",
            {"num_frames": 308},
            "2.60",  # 13 s x $0.20
        ),
        (
            {"model": "wan-2.2-s2v", "options": {"resolution": "720p"}},
            "wavespeed",
            "wavespeed-ai/wan-2.2/speech-to-video",
            {"resolution": "720p"},
            "0.78",  # 13 s x $0.06
        ),
        (
            {"provider": "fal", "model": "omnihuman-1.5", "options": {"turbo_mode": True}},
            "fal",
            "fal-ai/bytedance/omnihuman/v1.5",
            {"turbo_mode": True},
            "2.08",  # 13 s x $0.16
        ),
        (
            {"provider": "cometapi", "model": "kling-v1-pro"},
            "cometapi",
            "kling/v1/videos/avatar/image2video",
            {"mode": "pro"},
            "1.80",  # 3 started 5 s steps x $0.60
        ),
    ],
    ids=[
        "infinitetalk-wavespeed",
        "infinitetalk-fal",
        "infinitetalk-fal-defaults",
        "wan-wavespeed",
        "omnihuman-fal",
        "kling-cometapi",
    ],
)
def test_the_submission_carries_the_models_id_and_fields(
    world: tuple[World, Providers],
    options: dict[str, Any],
    provider: str,
    model_id: str,
    fields: dict[str, Any],
    cost: str,
) -> None:
    w, providers = world
    # Given a 12.3 s clip for the model, with its options
    task = queued(w, "max", {**options, "failover": False})
    assert (task.provider, task.estimated_cost_usd) == (provider, cost)
    # When the dispatcher sends it
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # Then its provider alone got the model's id and fields
    assert {name: count for name, count in submit_counts(providers).items() if count} == {provider: 1}
    (request,) = providers[provider].submissions
    assert (request.model_id, request.options) == (model_id, fields)
    assert w.meter.submissions == [(provider, cost)]


# ============================================================================================== the notification


def test_the_notification_names_the_model_at_its_resolution_and_the_estimated_cost(
    world: tuple[World, Providers],
) -> None:
    w, providers = world
    # Given an InfiniteTalk video at 720p, sent to WaveSpeed
    task = queued(w, "ned", {"model": "infinitetalk", "options": {"resolution": "720p", "seed": 7}})
    run_dispatcher(w)
    # When WaveSpeed says it is ready, it is copied and announced
    url = "https://d1example.cloudfront.net/output/ned.mp4"
    providers["wavespeed"].script_callback(
        ProviderJob(provider_task_id="ws-1", status=ProviderJobStatus.SUCCEEDED, output_url=url)
    )
    query = callback_query("wavespeed", task.task_id)
    assert receive_callback(w.ctx, "wavespeed", task.task_id, {}, b"{}", query) == "recorded"
    w.media.script_download(url, VIDEO)
    assert finalize_output(w.ctx, task.task_id, timedelta(minutes=5)) == "completed"
    assert announce(w.ctx, task.task_id) == "published"
    # Then the notification names the model, as jobs name it and as people read it, and the estimate (13 s x $0.06)
    (note,) = w.notifier.published
    assert (note.status, note.provider, note.model, note.model_title, note.estimated_cost_usd) == (
        S.COMPLETED,
        "wavespeed",
        "infinitetalk",
        "InfiniteTalk at 720p",
        "0.78",
    )
    assert f"Task {task.task_id} (wavespeed, InfiniteTalk at 720p)" in note.email_text
    assert "Estimated provider cost: $0.78" in note.email_text


def test_a_rejected_pairs_notification_names_the_model_it_was_checked_against(world: tuple[World, Providers]) -> None:
    w, _ = world
    # Given a 35 s clip for OmniHuman on fal.ai at its default 1080p, rejected
    task = deliver(w, "ola", {"provider": "fal", "model": "omnihuman-1.5"}, seconds=35.0)
    assert task.status is S.REJECTED
    # When it is announced
    assert announce(w.ctx, task.task_id) == "published"
    # Then the notification names the model at the resolution whose limit it broke, and no cost
    (note,) = w.notifier.published
    assert (note.provider, note.model, note.model_title, note.estimated_cost_usd) == (
        "fal",
        "omnihuman-1.5",
        "OmniHuman 1.5 at 1080p",
        None,
    )
    assert note.reason == "voice.wav lasts 35.0 s; the limit is 30 s for OmniHuman 1.5 at 1080p on fal.ai"
