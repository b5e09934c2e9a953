"""What job.json may choose is bounded by the operator's settings: the models and providers allowed, whether a task may
fail over, and the most one pair may cost. A pair that asks for more is rejected before anything is paid."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from support.fakes import BUCKET, TEST_ENV, ScriptedProvider, World, make_settings, make_world, run_dispatcher, upload

from avatar_pipeline.config import Settings
from avatar_pipeline.domain.errors import ProviderTransientError
from avatar_pipeline.domain.models import ProviderJob, ProviderJobStatus, Task, TaskStatus
from avatar_pipeline.providers.registry import PROVIDERS
from avatar_pipeline.services.admission import dispatch
from avatar_pipeline.services.intake import UploadOutcome, handle_upload
from avatar_pipeline.services.tracking import record_provider_news

S = TaskStatus
ROOT = Path(__file__).resolve().parents[2]
IMAGE = upload("inbox/zoe/face.png", etag="img-1", size=200_000)
AUDIO = upload("inbox/zoe/voice.mp3", etag="aud-1", size=300_000)  # the fakes' sample: 3 s, one billing step


def two_providers(**settings: str) -> tuple[World, ScriptedProvider, ScriptedProvider]:
    """WaveSpeed and CometAPI configured, under these settings (the stack allowing those two unless they say)."""
    wavespeed, comet = ScriptedProvider(), ScriptedProvider("cometapi", "query")
    settings = {"ALLOWED_PROVIDERS": "wavespeed,cometapi", **settings}
    w = make_world(provider=wavespeed, providers={"wavespeed": wavespeed, "cometapi": comet}, settings=settings)
    return w, wavespeed, comet


def deliver(w: World, options: dict[str, Any] | None = None) -> UploadOutcome:
    """Job zoe's job.json (if given), then its image and its voice clip, arrive."""
    if options is not None:
        w.media.put_object(BUCKET, "inbox/zoe/job.json", json.dumps(options))
    assert handle_upload(w.ctx, IMAGE).action == "waiting"
    return handle_upload(w.ctx, AUDIO)


def the_task(w: World, outcome: UploadOutcome) -> Task:
    task = w.tasks.get(outcome.task_id or "")
    assert task is not None
    return task


def assert_rejected_unpaid(w: World, outcome: UploadOutcome, reason: str, *providers: ScriptedProvider) -> None:
    """The pair is REJECTED with `reason`, never joined a line, and no provider was sent anything."""
    assert outcome.action == "rejected"
    task = the_task(w, outcome)
    assert (task.status, task.reason) == (S.REJECTED, reason)
    assert [(step.from_status, step.to_status) for step in task.history] == [
        (None, S.WAITING_FOR_PAIR),
        (S.WAITING_FOR_PAIR, S.REJECTED),
    ]
    assert (w.tasks.line("wavespeed"), w.tasks.line("cometapi")) == ([], [])
    run_dispatcher(w)
    assert [provider.submit_count for provider in providers or (w.provider,)] == [0] * len(providers or (w.provider,))
    assert w.tasks.spent_on("2025-06-01") == Decimal(0)


# ============================================================================================== intake


@pytest.mark.parametrize("asked", [{"mode": "pro"}, {"model": "kling-v1-pro"}], ids=["by-mode", "by-model"])
def test_a_model_the_operator_does_not_allow_is_rejected_naming_the_allowed_models(asked: dict[str, str]) -> None:
    # Given a stack that allows Kling v1 standard only
    w = make_world(settings={"ALLOWED_MODELS": "kling-v1-std"})
    # When a job asks for pro in its job.json (by its mode, or by the model's name)
    outcome = deliver(w, asked)
    # Then the pair is rejected, naming the setting and what it allows, and nothing is sent or paid
    assert_rejected_unpaid(
        w,
        outcome,
        'job.json asks for model "kling-v1-pro", which this stack does not allow (AllowedModels: kling-v1-std)',
    )


def test_a_provider_the_operator_does_not_allow_is_rejected_naming_the_allowed_providers() -> None:
    # Given a stack with both providers configured that allows WaveSpeed only
    w, wavespeed, comet = two_providers(ALLOWED_PROVIDERS="wavespeed")
    # When a job asks for CometAPI
    outcome = deliver(w, {"provider": "cometapi"})
    # Then the pair is rejected, and neither provider is sent anything
    assert_rejected_unpaid(
        w,
        outcome,
        'job.json asks for provider "cometapi", which this stack does not allow (AllowedProviders: wavespeed)',
        wavespeed,
        comet,
    )


def test_a_jobs_failover_cannot_override_the_operators_allow_failover_false() -> None:
    # Given a stack whose operator forbids failover
    w, wavespeed, comet = two_providers(ALLOW_FAILOVER="false")
    # When a job asks for failover in its job.json
    outcome = deliver(w, {"failover": True})
    # Then the pair is rejected, saying the stack does not allow it
    assert_rejected_unpaid(
        w,
        outcome,
        "job.json asks for failover, which this stack does not allow (AllowFailover: false)",
        wavespeed,
        comet,
    )


def test_a_jobs_failover_is_rejected_when_no_other_provider_is_allowed() -> None:
    # Given a stack that allows failover but only WaveSpeed
    w, wavespeed, comet = two_providers(ALLOWED_PROVIDERS="wavespeed")
    # When a job asks for failover
    outcome = deliver(w, {"failover": True})
    # Then the pair is rejected: failing over could only go to CometAPI (the other provider of Kling v1), which the
    # stack does not allow
    assert_rejected_unpaid(
        w,
        outcome,
        "job.json asks for failover, but none of the other providers offering kling-v1-std (cometapi) is allowed"
        " (AllowedProviders: wavespeed)",
        wavespeed,
        comet,
    )


def test_a_pair_that_costs_more_than_the_per_pair_limit_is_rejected_saying_so() -> None:
    # Given a per-pair limit of $0.40, and a job asking for pro ($0.50 for its 3 s clip at WaveSpeed)
    w = make_world(settings={"MAX_COST_PER_PAIR_USD": "0.40"})
    # When its pair arrives
    outcome = deliver(w, {"mode": "pro"})
    # Then it is rejected with its estimate and the limit, and nothing is sent or paid
    assert_rejected_unpaid(
        w, outcome, "its estimated cost of $0.50 is more than the per-pair cost limit of $0.40 (MaxCostPerPairUsd)"
    )


def test_a_job_within_every_limit_is_still_queued_and_sent_as_it_asks() -> None:
    # Given a stack that limits models, providers and cost, with room for what this job asks
    w, wavespeed, comet = two_providers(
        ALLOWED_MODELS="kling-v1-std,kling-v1-pro", ALLOWED_PROVIDERS="wavespeed cometapi", MAX_COST_PER_PAIR_USD="0.60"
    )
    # When a job asks for CometAPI in pro ($0.60) with failover
    outcome = deliver(w, {"provider": "cometapi", "mode": "pro", "failover": True})
    # Then it joins CometAPI's line as asked, may fail over (WaveSpeed's pro is $0.50), and is sent
    assert outcome.action == "queued"
    task = the_task(w, outcome)
    assert (task.provider, task.model, task.estimated_cost_usd, task.failover_targets) == (
        "cometapi",
        "kling-v1-pro",
        "0.60",
        ("wavespeed",),
    )
    assert run_dispatcher(w) == {"submit-submitted": 1}
    assert (wavespeed.submit_count, comet.submit_count) == (0, 1)
    assert comet.submissions[0].options == {"mode": "pro"}


def test_without_a_cost_limit_a_costly_pair_is_queued() -> None:
    # Given no per-pair limit (the default)
    w = make_world()
    assert w.ctx.settings.max_cost_per_pair_usd == 0
    # When a pro pair arrives
    outcome = deliver(w, {"mode": "pro"})
    # Then it is queued
    assert outcome.action == "queued"


def test_a_providers_kling_for_the_default_model_is_rejected_when_the_operator_does_not_allow_it() -> None:
    # Given a stack that allows Kling v1 standard only (the default model), which fal does not run
    w = make_world(settings={"ALLOWED_MODELS": "kling-v1-std"})
    # When a job asks for fal alone (which would run its Kling v2 standard instead)
    outcome = deliver(w, {"provider": "fal"})
    # Then the pair is rejected, saying so, and nothing is sent or paid
    assert_rejected_unpaid(
        w,
        outcome,
        'fal.ai runs the default model kling-v1-std as "kling-v2-std" only, which this stack does not allow'
        " (AllowedModels: kling-v1-std)",
    )


# ============================================================================================== failover targets


def test_a_task_never_fails_over_to_a_provider_the_operator_does_not_allow() -> None:
    # Given failover is the stack's default, but only WaveSpeed is allowed; the job says nothing about failover
    w, wavespeed, comet = two_providers(ALLOWED_PROVIDERS="wavespeed")
    outcome = deliver(w)
    assert outcome.action == "queued"
    # Then its task may not fail over
    assert the_task(w, outcome).failover_targets == ()
    # When WaveSpeed turns it away
    wavespeed.script_submit(ProviderTransientError("HTTP 429", code="429"))
    assert run_dispatcher(w) == {"submit-requeued": 1}
    # Then it is back in WaveSpeed's line, and CometAPI is never sent it
    task = the_task(w, outcome)
    assert (task.status, task.provider, task.failed_over_from) == (S.QUEUED, "wavespeed", None)
    assert (w.tasks.line("wavespeed"), w.tasks.line("cometapi")) == ([task.task_id], [])
    assert comet.submit_count == 0


def test_a_task_does_not_fail_over_where_it_would_cost_more_than_the_per_pair_limit() -> None:
    # Given a per-pair limit of $0.28: WaveSpeed's std costs $0.25 for the clip, CometAPI's $0.30
    w, _, _ = two_providers(MAX_COST_PER_PAIR_USD="0.28")
    # When a job that asks for failover arrives
    outcome = deliver(w, {"failover": True})
    # Then it is queued at WaveSpeed, but may not fail over
    assert outcome.action == "queued"
    assert the_task(w, outcome).failover_targets == ()


@pytest.mark.parametrize(
    "redeployed",
    [{"ALLOW_FAILOVER": "false"}, {"ALLOWED_PROVIDERS": "wavespeed"}],
    ids=["failover-forbidden", "other-provider-not-allowed"],
)
def test_a_task_queued_before_the_operator_restricted_failover_does_not_fail_over(redeployed: dict[str, str]) -> None:
    # Given a task queued while failover was allowed
    w, wavespeed, comet = two_providers(WAVESPEED_RENDERS_AT_ONCE="1")
    outcome = deliver(w)
    assert the_task(w, outcome).failover_targets == ("cometapi",)
    # When the stack is redeployed without failover to CometAPI, and WaveSpeed turns the task away
    w.ctx.settings = make_settings(**redeployed, WAVESPEED_RENDERS_AT_ONCE="1")
    wavespeed.script_submit(ProviderTransientError("HTTP 503", code="503"))
    assert run_dispatcher(w) == {"submit-requeued": 1}
    # Then it waits in WaveSpeed's line
    task = the_task(w, outcome)
    assert (task.status, task.provider) == (S.QUEUED, "wavespeed")
    # and when it has waited past the spill-over time while CometAPI has room, it still does not move there
    w.clock.advance(w.ctx.settings.spill_over_after_seconds + w.ctx.settings.rate_window_seconds)
    dispatch(w.ctx, "cometapi", lambda: timedelta(minutes=5))
    task = the_task(w, outcome)
    assert task.provider == "wavespeed"
    assert comet.submit_count == 0


# ============================================================================================== settings


def test_the_defaults_allow_every_model_and_provider_and_set_no_cost_limit() -> None:
    settings = make_settings()
    assert settings.allowed_models == PROVIDERS.model_names()
    assert "infinitetalk" in settings.allowed_models
    assert settings.allowed_providers == ("wavespeed", "cometapi", "fal")
    assert settings.max_cost_per_pair_usd == Decimal(0)


@pytest.mark.parametrize(
    "written", ["kling-v1-std,omnihuman-1.5", "kling-v1-std omnihuman-1.5", " kling-v1-std ,  omnihuman-1.5 "]
)
def test_allowed_models_are_split_on_commas_or_whitespace(written: str) -> None:
    assert make_settings(ALLOWED_MODELS=written).allowed_models == ("kling-v1-std", "omnihuman-1.5")


def test_fal_as_the_default_provider_runs_the_default_kling_model_as_its_own_kling_v2() -> None:
    # Given fal.ai as the default provider with the default model, Kling v1 standard, which fal runs as Kling v2
    settings = make_settings(DEFAULT_PROVIDER="fal")
    # Then the settings stand (the functions start), and a job naming nothing gets fal's Kling v2 standard
    w = make_world(settings={"DEFAULT_PROVIDER": "fal"})
    assert settings.default_model == "kling-v1-std"
    outcome = deliver(w, {})
    assert outcome.action == "queued"
    assert (the_task(w, outcome).provider, the_task(w, outcome).model) == ("fal", "kling-v2-std")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ALLOWED_MODELS": "kling-v1-std", "DEFAULT_MODEL": "kling-v1-pro"},
            "DEFAULT_MODEL (kling-v1-pro) must be one of ALLOWED_MODELS (kling-v1-std)",
        ),
        (
            {"DEFAULT_MODEL": "omnihuman-1.5", "DEFAULT_PROVIDER": "cometapi"},
            "DEFAULT_MODEL (omnihuman-1.5) must be a model DEFAULT_PROVIDER (cometapi) offers",
        ),
        (
            {"ALLOWED_PROVIDERS": "cometapi"},
            "DEFAULT_PROVIDER (wavespeed) must be one of ALLOWED_PROVIDERS (cometapi)",
        ),
        (
            {"DEFAULT_PROVIDER": "fal", "ALLOWED_MODELS": "kling-v1-std"},
            "DEFAULT_PROVIDER (fal) runs DEFAULT_MODEL (kling-v1-std) as kling-v2-std, which must be one of"
            " ALLOWED_MODELS (kling-v1-std)",
        ),
    ],
    ids=["default-model", "model-of-another-provider", "default-provider", "run-as-a-model-not-allowed"],
)
def test_a_default_the_operator_does_not_allow_is_refused_with_a_clear_message(
    env: dict[str, str], message: str
) -> None:
    # Given settings whose default is not among the allowed values; When they are read; Then they are refused
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings.from_env({**TEST_ENV, **env})


@pytest.mark.parametrize(
    "env",
    [
        {"ALLOWED_MODELS": "ultra"},
        {"ALLOWED_MODELS": ""},
        {"DEFAULT_MODEL": "std"},
        {"ALLOWED_PROVIDERS": "openai"},
        {"MAX_COST_PER_PAIR_USD": "-1"},
    ],
)
def test_unknown_or_empty_allowed_values_and_a_negative_cost_limit_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        Settings.from_env({**TEST_ENV, **env})


# ============================================================================================== the template


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from avatar_local.twin.template import load_template

    return load_template(ROOT / "template.yaml")


PARAMETERS = {
    "AllowedModels": ("ALLOWED_MODELS", "allowed_models"),
    "AllowedProviders": ("ALLOWED_PROVIDERS", "allowed_providers"),
    "MaxCostPerPairUsd": ("MAX_COST_PER_PAIR_USD", "max_cost_per_pair_usd"),
}


@pytest.mark.parametrize("parameter", PARAMETERS)
def test_every_function_gets_the_limits_from_parameters_whose_defaults_are_the_settings_defaults(
    template: dict[str, Any], parameter: str
) -> None:
    variable, field = PARAMETERS[parameter]
    declared = template["Parameters"][parameter]
    assert declared["Description"].strip()
    assert re.fullmatch(declared["AllowedPattern"], str(declared["Default"]))
    assert template["Globals"]["Function"]["Environment"]["Variables"][variable] == {"Ref": parameter}
    settings = Settings.from_env({**TEST_ENV, variable: str(declared["Default"])})
    assert getattr(settings, field) == Settings.model_fields[field].get_default(call_default_factory=True)


@pytest.mark.parametrize(
    ("parameter", "accepted", "refused"),
    [
        (
            "AllowedModels",
            [
                "kling-v1-std",
                "kling-v1-std infinitetalk-fast",
                "wan-2.2-s2v,kling-v1-std",
                "omnihuman-1.5, kling-v1-std",
            ],
            ["", "std", "kling-v1-std,", "kling-v1-std;kling-v1-pro", "omnihuman-1x5", "infinitetalk-"],
        ),
        ("AllowedProviders", ["wavespeed", "wavespeed cometapi", "cometapi,wavespeed"], ["", "openai", ",cometapi"]),
        ("MaxCostPerPairUsd", ["0", "5", "12.50"], ["", "-1", "$5", "1e3", "12."]),
    ],
)
def test_the_limit_parameters_take_what_the_settings_take(
    template: dict[str, Any], parameter: str, accepted: list[str], refused: list[str]
) -> None:
    variable, _ = PARAMETERS[parameter]
    pattern = template["Parameters"][parameter]["AllowedPattern"]
    default = {"AllowedModels": "DEFAULT_MODEL", "AllowedProviders": "DEFAULT_PROVIDER"}.get(parameter)
    for value in accepted:
        assert re.fullmatch(pattern, value), value
        # (with a default among the allowed values, as the settings require)
        chosen = {default: re.split(r"[\s,]+", value)[0]} if default else {}
        Settings.from_env({**TEST_ENV, **chosen, variable: value})
    for value in refused:
        assert not re.fullmatch(pattern, value), value


def test_the_local_stack_passes_the_limits_on_and_refuses_values_the_stack_would() -> None:
    """Given the local stack resolves the template's parameters as CloudFormation does, then an override reaches the
    functions' ALLOWED_MODELS, ALLOWED_PROVIDERS and MAX_COST_PER_PAIR_USD, and a value CloudFormation would refuse
    is refused."""
    from avatar_local.twin.template import Resolver, TemplateError, functions, load_template

    template = load_template(ROOT / "template.yaml")
    overrides = {"AllowedModels": "kling-v1-std", "AllowedProviders": "wavespeed", "MaxCostPerPairUsd": "5"}
    resolver = Resolver(template, stack_name="s", region="us-east-1", account_id="123456789012", parameters=overrides)
    for spec in functions(template):
        environment = spec.environment
        for parameter, (variable, _) in PARAMETERS.items():
            assert resolver.resolve(environment[variable]) == overrides[parameter], (spec.logical_id, variable)
    for parameter, refused in (("AllowedModels", "ultra"), ("AllowedProviders", "openai"), ("MaxCostPerPairUsd", "-1")):
        with pytest.raises(TemplateError, match=parameter):
            Resolver(
                template, stack_name="s", region="us-east-1", account_id="123456789012", parameters={parameter: refused}
            ).ref(parameter)


@pytest.mark.parametrize(
    ("redeployed", "reason"),
    [
        (
            {"ALLOWED_MODELS": "kling-v1-std"},
            "its model kling-v1-pro is no longer allowed (AllowedModels: kling-v1-std)",
        ),
        (
            {"MAX_COST_PER_PAIR_USD": "0.40"},
            "its estimated cost of $0.50 is more than the per-pair cost limit of $0.40 (MaxCostPerPairUsd)",
        ),
        (
            {"ALLOWED_PROVIDERS": "cometapi", "DEFAULT_PROVIDER": "cometapi"},
            "its provider wavespeed is no longer allowed (AllowedProviders: cometapi)",
        ),
    ],
    ids=["model", "cost", "provider"],
)
def test_a_task_queued_before_the_operator_tightened_the_limits_is_not_sent(
    redeployed: dict[str, str], reason: str
) -> None:
    # Given a pro task queued at WaveSpeed ($0.50) while the stack allowed it, behind a full render slot
    w, wavespeed, comet = two_providers(WAVESPEED_RENDERS_AT_ONCE="1")
    first = deliver(w)
    assert first.action == "queued"
    w.clock.advance(1)  # so the line's order is the arrival order
    w.media.put_object(BUCKET, "inbox/amy/job.json", json.dumps({"mode": "pro"}))
    handle_upload(w.ctx, upload("inbox/amy/face.png", etag="img-2", size=200_000))
    outcome = handle_upload(w.ctx, upload("inbox/amy/voice.mp3", etag="aud-2", size=300_000))
    assert the_task(w, outcome).estimated_cost_usd == "0.50"
    assert run_dispatcher(w) == {"submit-submitted": 1}
    # When the stack is redeployed with tighter limits, and the render slot comes free
    w.ctx.settings = make_settings(**redeployed, WAVESPEED_RENDERS_AT_ONCE="1")
    rendered = the_task(w, first)
    done = ProviderJob(
        provider_task_id=rendered.provider_task_id or "",
        status=ProviderJobStatus.SUCCEEDED,
        output_url="https://cdn.example/v.mp4",
    )
    assert record_provider_news(w.ctx, rendered.task_id, done) == "recorded"
    assert run_dispatcher(w) == {"not-allowed": 1}
    # Then the task is not sent, and ends FAILED saying which limit it is beyond
    task = the_task(w, outcome)
    assert (task.status, task.reason) == (S.FAILED, f"not sent: {reason}")
    assert (wavespeed.submit_count, comet.submit_count) == (1, 0)
