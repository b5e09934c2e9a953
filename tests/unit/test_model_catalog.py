"""The providers' model catalogs and the rules read from them: how each model is billed and priced, which options it
takes, its limits, what is sent for it, which model a job gets, how job.json and older task records are read, how
long a task may render, and how a model is named to people. Pure: no world, no provider, no media."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError
from support.fakes import T0, make_settings

from avatar_pipeline.domain.model_choice import choose_model, request_fields, unrunnable
from avatar_pipeline.domain.models import JobOptions, Task, TaskStatus
from avatar_pipeline.domain.pricing import estimate_cost
from avatar_pipeline.providers.registry import PROVIDERS, describe_model
from avatar_pipeline.providers.spec import BillingRule, ModelOption

KNOWN_MODELS = (
    "'kling-v1-std', 'kling-v1-pro', 'kling-v2-std', 'kling-v2-pro', 'omnihuman-1.5', 'infinitetalk',"
    " 'infinitetalk-fast' or 'wan-2.2-s2v'"
)


def billing(provider: str, model: str) -> BillingRule:
    return PROVIDERS.model(provider, model).billing


# ============================================================================================== who offers what


def test_kling_v1_is_offered_by_wavespeed_and_cometapi_and_the_other_families_by_wavespeed_and_fal() -> None:
    assert PROVIDERS.offering("kling-v1-std") == ("wavespeed", "cometapi")
    assert PROVIDERS.offering("kling-v1-pro") == ("wavespeed", "cometapi")
    for model in ("kling-v2-std", "kling-v2-pro", "omnihuman-1.5", "infinitetalk"):
        assert PROVIDERS.offering(model) == ("wavespeed", "fal"), model
    for model in ("infinitetalk-fast", "wan-2.2-s2v"):
        assert PROVIDERS.offering(model) == ("wavespeed",), model
    # so no model is offered by all three, and a task only ever moves to a provider offering its model
    assert not [model for model in PROVIDERS.model_names() if len(PROVIDERS.offering(model)) == 3]
    assert PROVIDERS.others("wavespeed", "kling-v1-std") == ("cometapi",)
    assert PROVIDERS.others("fal", "infinitetalk") == ("wavespeed",)
    assert PROVIDERS.others("wavespeed", "wan-2.2-s2v") == ()


# ============================================================================================== billing rules


@pytest.mark.parametrize(("seconds", "steps"), [(3.0, 1), (5.0, 1), (5.1, 2), (10.0, 2), (12.3, 3)])
def test_kling_on_wavespeed_is_billed_per_started_5_s_with_the_first_5_s_always_billed(
    seconds: float, steps: int
) -> None:
    rule = billing("wavespeed", "kling-v1-std")
    assert rule == BillingRule(step_seconds=5, minimum_seconds=5)
    assert rule.steps(seconds) == steps


def test_a_length_a_hair_over_a_whole_second_from_float_arithmetic_is_not_billed_a_step_more() -> None:
    # 0.1 * 50 is 5.000000000000001 in floating point: still one 5 s step
    assert BillingRule(step_seconds=5, minimum_seconds=5).steps(0.1 * 50) == 1
    assert BillingRule(step_seconds=1).steps(0.1 * 30) == 3


@pytest.mark.parametrize(("seconds", "steps"), [(2.2, 5), (4.99, 5), (5.0, 5), (5.01, 6), (12.3, 13), (700.0, 600)])
def test_infinitetalk_on_wavespeed_is_billed_per_second_with_a_5_s_minimum_and_a_600_s_cap(
    seconds: float, steps: int
) -> None:
    rule = billing("wavespeed", "infinitetalk")
    assert rule.steps(seconds) == steps


@pytest.mark.parametrize(("seconds", "steps"), [(2.2, 3), (12.3, 13), (600.0, 600), (700.0, 600)])
def test_omnihuman_on_wavespeed_is_billed_per_second_up_to_600_s(seconds: float, steps: int) -> None:
    rule = billing("wavespeed", "omnihuman-1.5")
    assert rule == BillingRule(step_seconds=1, cap_seconds=600)
    assert rule.steps(seconds) == steps


@pytest.mark.parametrize(
    ("provider", "model", "described"),
    [
        ("wavespeed", "kling-v1-std", "per started 5 s, at least 5 s"),
        ("cometapi", "kling-v1-pro", "per started 5 s, at least 5 s"),
        ("wavespeed", "infinitetalk", "per second, at least 5 s, at most 600 s"),
        ("wavespeed", "omnihuman-1.5", "per second, at most 600 s"),
        ("wavespeed", "wan-2.2-s2v", "per second, at least 5 s"),
        ("fal", "kling-v2-std", "per second"),
        ("fal", "infinitetalk", "per second"),
    ],
)
def test_a_billing_rule_describes_itself(provider: str, model: str, described: str) -> None:
    assert billing(provider, model).describe() == described


def test_a_billing_rule_of_other_steps_describes_them() -> None:
    assert BillingRule(step_seconds=2).describe() == "per started 2 s"
    assert BillingRule(step_seconds=10, minimum_seconds=10, cap_seconds=300).describe() == (
        "per started 10 s, at least 10 s, at most 300 s"
    )


# ============================================================================================== cost estimates

CLIP = 12.3  # seconds: 13 whole seconds, 3 started 5 s steps


@pytest.mark.parametrize(
    ("provider", "model", "options", "cost"),
    [
        # WaveSpeed: Kling per started 5 s (3 steps)
        ("wavespeed", "kling-v1-std", {}, "0.75"),  # 3 x $0.25
        ("wavespeed", "kling-v1-pro", {}, "1.50"),  # 3 x $0.50
        ("wavespeed", "kling-v2-std", {}, "0.84"),  # 3 x $0.28
        ("wavespeed", "kling-v2-pro", {}, "1.68"),  # 3 x $0.56
        # WaveSpeed: its own models per second (13 s)
        ("wavespeed", "omnihuman-1.5", {}, "2.08"),  # 13 x $0.16
        ("wavespeed", "infinitetalk", {}, "0.39"),  # 13 x $0.03 (480p, the default)
        ("wavespeed", "infinitetalk", {"resolution": "480p"}, "0.39"),
        ("wavespeed", "infinitetalk", {"resolution": "720p"}, "0.78"),  # 13 x $0.06
        ("wavespeed", "infinitetalk", {"resolution": "720p", "seed": 7}, "0.78"),
        ("wavespeed", "infinitetalk-fast", {}, "0.20"),  # 13 x $0.015 = $0.195
        ("wavespeed", "wan-2.2-s2v", {}, "0.39"),  # 13 x $0.03
        ("wavespeed", "wan-2.2-s2v", {"resolution": "720p"}, "0.78"),  # 13 x $0.06
        # CometAPI: the operator's prices per started 5 s (the settings' defaults)
        ("cometapi", "kling-v1-std", {}, "0.90"),  # 3 x $0.30
        ("cometapi", "kling-v1-pro", {}, "1.80"),  # 3 x $0.60
        # fal.ai: per second (13 s)
        ("fal", "kling-v2-std", {}, "0.74"),  # 13 x $0.0562 = $0.7306, rounded up to the cent
        ("fal", "kling-v2-pro", {}, "1.50"),  # 13 x $0.115 = $1.495
        ("fal", "omnihuman-1.5", {}, "2.08"),  # 13 x $0.16 (1080p, the default)
        ("fal", "omnihuman-1.5", {"resolution": "720p"}, "2.08"),  # the same price at 720p
        ("fal", "infinitetalk", {}, "2.60"),  # 13 x $0.20 (480p, the default)
        ("fal", "infinitetalk", {"resolution": "720p"}, "5.20"),  # 13 x $0.40
    ],
)
def test_a_12_3_s_clip_costs_what_each_providers_catalog_says(
    provider: str, model: str, options: dict[str, Any], cost: str
) -> None:
    assert estimate_cost(provider, model, CLIP, make_settings(), options) == Decimal(cost)


def test_the_estimate_is_in_whole_cents() -> None:
    assert estimate_cost("fal", "kling-v2-std", CLIP, make_settings(), {}).as_tuple().exponent == -2


def test_infinitetalk_on_wavespeed_bills_a_short_clip_as_5_s() -> None:
    # 2.2 s, billed as 5 s: 5 x $0.03 at 480p, 5 x $0.06 at 720p
    settings = make_settings()
    assert estimate_cost("wavespeed", "infinitetalk", 2.2, settings, {}) == Decimal("0.15")
    assert estimate_cost("wavespeed", "infinitetalk", 2.2, settings, {"resolution": "720p"}) == Decimal("0.30")


def test_omnihuman_on_wavespeed_bills_at_most_600_s() -> None:
    # 700 s, billed as 600 s: 600 x $0.16
    assert estimate_cost("wavespeed", "omnihuman-1.5", 700.0, make_settings(), {}) == Decimal("96.00")


def test_cometapis_price_is_the_operators_setting() -> None:
    settings = make_settings(COMETAPI_PRICE_STD_PER_5S="0.35", COMETAPI_PRICE_PRO_PER_5S="0.70")
    assert estimate_cost("cometapi", "kling-v1-std", CLIP, settings, {}) == Decimal("1.05")  # 3 x $0.35
    assert estimate_cost("cometapi", "kling-v1-pro", CLIP, settings, {}) == Decimal("2.10")  # 3 x $0.70


# ============================================================================================== options


def test_an_option_the_model_does_not_have_is_named_with_the_models_title_and_its_options() -> None:
    infinitetalk = PROVIDERS.model("wavespeed", "infinitetalk")
    assert infinitetalk.option_problems({"fps": 30}) == [
        'InfiniteTalk has no option "fps" (its options: resolution, seed, mask_image)'
    ]
    kling = PROVIDERS.model("wavespeed", "kling-v1-std")
    assert kling.option_problems({"seed": 7}) == [
        'Kling v1 AI Avatar (standard) has no option "seed" (its options: none)'
    ]


@pytest.mark.parametrize(
    ("seed", "problem"),
    [
        (-1, None),
        (0, None),
        (2_147_483_647, None),
        (-2, "must be from -1 to 2147483647"),
        (2**31, "must be from -1 to 2147483647"),
    ],
)
def test_a_seed_out_of_its_range_is_refused_naming_the_range(seed: int, problem: str | None) -> None:
    option = PROVIDERS.model("wavespeed", "infinitetalk").option("seed")
    assert option is not None
    assert option.problem(seed) == problem
    # and named with its model and option
    if problem is not None:
        assert PROVIDERS.model("wavespeed", "infinitetalk").option_problems({"seed": seed}) == [
            f'InfiniteTalk: option "seed" {problem}'
        ]


def test_fals_infinitetalk_seed_starts_at_0() -> None:
    fal = PROVIDERS.model("fal", "infinitetalk")
    assert fal.option_problems({"seed": -1}) == ['InfiniteTalk: option "seed" must be from 0 to 2147483647']
    assert fal.option_problems({"seed": 0}) == []


@pytest.mark.parametrize("value", [True, False, "7", 7.0])
def test_an_integer_option_takes_whole_numbers_only_not_a_bool_nor_text(value: object) -> None:
    option = PROVIDERS.model("wavespeed", "infinitetalk").option("seed")
    assert option is not None
    assert option.problem(value) == "must be a whole number"


def test_a_boolean_option_takes_true_or_false_only() -> None:
    omnihuman = PROVIDERS.model("fal", "omnihuman-1.5")
    assert omnihuman.option_problems({"turbo_mode": True}) == []
    assert omnihuman.option_problems({"turbo_mode": 1}) == ['OmniHuman 1.5: option "turbo_mode" must be true or false']
    assert omnihuman.option_problems({"turbo_mode": "yes"}) == [
        'OmniHuman 1.5: option "turbo_mode" must be true or false'
    ]


def test_a_choice_outside_the_models_choices_is_refused_listing_them() -> None:
    assert PROVIDERS.model("wavespeed", "infinitetalk").option_problems({"resolution": "1080p"}) == [
        "InfiniteTalk: option \"resolution\" must be one of '480p', '720p'"
    ]
    assert PROVIDERS.model("fal", "omnihuman-1.5").option_problems({"resolution": "480p"}) == [
        "OmniHuman 1.5: option \"resolution\" must be one of '720p', '1080p'"
    ]
    assert PROVIDERS.model("fal", "omnihuman-1.5").option_problems({"resolution": "1080p"}) == []


def test_every_problem_of_the_options_is_given_at_once() -> None:
    problems = PROVIDERS.model("wavespeed", "infinitetalk").option_problems({"resolution": "4k", "seed": -9, "fps": 24})
    assert problems == [
        "InfiniteTalk: option \"resolution\" must be one of '480p', '720p'",
        'InfiniteTalk: option "seed" must be from -1 to 2147483647',
        'InfiniteTalk has no option "fps" (its options: resolution, seed, mask_image)',
    ]


def test_a_model_option_without_bounds_takes_any_whole_number() -> None:
    assert ModelOption("steps", "integer").problem(10**9) is None


def test_what_a_provider_cannot_run_names_the_model_the_option_and_the_provider() -> None:
    assert unrunnable("wavespeed", "infinitetalk", {"resolution": "720p", "seed": 7}) == []
    # (how the provider is worked into an option's problem may change; that it is named may not)
    (problem,) = unrunnable("wavespeed", "omnihuman-1.5", {"resolution": "720p"})
    assert 'OmniHuman 1.5 has no option "resolution" (its options: none)' in problem
    assert "WaveSpeed" in problem
    (problem,) = unrunnable("fal", "infinitetalk", {"seed": -1})
    assert 'InfiniteTalk: option "seed" must be from 0 to 2147483647' in problem
    assert "fal.ai" in problem
    assert unrunnable("cometapi", "omnihuman-1.5", {}) == [
        "CometAPI does not offer the model omnihuman-1.5 (its models: kling-v1-std, kling-v1-pro)"
    ]


# ============================================================================================== limits


def test_omnihuman_on_fal_takes_30_s_at_1080p_its_default_and_60_s_at_720p() -> None:
    omnihuman = PROVIDERS.model("fal", "omnihuman-1.5")
    assert omnihuman.limits_for({}).max_audio_seconds == 30.0
    assert omnihuman.limits_for({"resolution": "1080p"}).max_audio_seconds == 30.0
    assert omnihuman.limits_for({"resolution": "720p"}).max_audio_seconds == 60.0


def test_infinitetalk_on_fal_takes_what_721_frames_at_25_a_second_last() -> None:
    infinitetalk = PROVIDERS.model("fal", "infinitetalk")
    assert infinitetalk.limits.max_audio_seconds == pytest.approx(28.84)
    assert infinitetalk.limits_for({"resolution": "720p"}).max_audio_seconds == pytest.approx(28.84)
    # while WaveSpeed's takes 10 min
    assert PROVIDERS.model("wavespeed", "infinitetalk").limits.max_audio_seconds == 600.0


def test_a_model_without_limits_by_resolution_has_the_same_limits_at_every_resolution() -> None:
    infinitetalk = PROVIDERS.model("wavespeed", "infinitetalk")
    assert infinitetalk.limits_for({"resolution": "720p"}) == infinitetalk.limits_for({}) == infinitetalk.limits


# ============================================================================================== request fields


@pytest.mark.parametrize("mode", ["std", "pro"])
def test_cometapi_is_sent_the_mode_that_names_its_model(mode: str) -> None:
    spec = PROVIDERS.model("cometapi", f"kling-v1-{mode}")
    assert spec.model_id == "kling/v1/videos/avatar/image2video"
    assert request_fields(spec, {}, CLIP) == {"mode": mode}


@pytest.mark.parametrize(
    ("seconds", "frames"),
    [(12.3, 308), (2.0, 50), (1.0, 41), (0.0, 41), (28.84, 721), (45.0, 721)],
    ids=["12.3s", "2s", "under-the-minimum", "unknown-length", "the-maximum", "over-the-maximum"],
)
def test_infinitetalk_on_fal_is_sent_the_clips_length_in_frames_within_41_to_721(seconds: float, frames: int) -> None:
    spec = PROVIDERS.model("fal", "infinitetalk")
    assert request_fields(spec, {}, seconds) == {"num_frames": frames}


def test_the_jobs_options_are_sent_as_they_are_with_the_models_own_fields() -> None:
    wavespeed = PROVIDERS.model("wavespeed", "infinitetalk")
    assert request_fields(wavespeed, {"resolution": "720p", "seed": 7}, CLIP) == {"resolution": "720p", "seed": 7}
    fal = PROVIDERS.model("fal", "infinitetalk")
    assert request_fields(fal, {"resolution": "720p", "acceleration": "high"}, CLIP) == {
        "resolution": "720p",
        "acceleration": "high",
        "num_frames": 308,
    }
    # and a model with no options of the job's is sent none of its own
    assert request_fields(PROVIDERS.model("wavespeed", "kling-v1-std"), {}, CLIP) == {}


def test_request_fields_do_not_change_the_options_they_are_given() -> None:
    options = {"resolution": "720p"}
    request_fields(PROVIDERS.model("fal", "infinitetalk"), options, CLIP)
    assert options == {"resolution": "720p"}


# ============================================================================================== choosing the model


@pytest.mark.parametrize("provider", ["wavespeed", "cometapi", "fal"])
def test_a_jobs_model_is_the_one_it_names(provider: str) -> None:
    assert choose_model(JobOptions(model="omnihuman-1.5"), "kling-v1-std", provider) == "omnihuman-1.5"


def test_a_job_naming_neither_model_nor_mode_gets_the_default_model() -> None:
    assert choose_model(JobOptions(), "kling-v1-std", "wavespeed") == "kling-v1-std"
    assert choose_model(JobOptions(), "infinitetalk", "fal") == "infinitetalk"


@pytest.mark.parametrize(
    ("provider", "mode", "model"),
    [
        ("wavespeed", "std", "kling-v1-std"),
        ("wavespeed", "pro", "kling-v1-pro"),
        ("cometapi", "pro", "kling-v1-pro"),
        # fal offers no Kling v1: its Kling v2 of that tier
        ("fal", "std", "kling-v2-std"),
        ("fal", "pro", "kling-v2-pro"),
    ],
)
def test_a_mode_alone_means_the_kling_model_of_that_tier_the_provider_offers(
    provider: str, mode: str, model: str
) -> None:
    assert choose_model(JobOptions.model_validate({"mode": mode}), "kling-v1-std", provider) == model


def test_a_mode_alone_prefers_the_default_models_kling_version() -> None:
    pro = JobOptions(mode="pro")
    assert choose_model(pro, "kling-v2-std", "wavespeed") == "kling-v2-pro"
    # CometAPI offers no Kling v2: its v1
    assert choose_model(pro, "kling-v2-std", "cometapi") == "kling-v1-pro"
    # A default model that is not Kling's: v1 first, then v2
    assert choose_model(pro, "omnihuman-1.5", "wavespeed") == "kling-v1-pro"
    assert choose_model(pro, "omnihuman-1.5", "fal") == "kling-v2-pro"


# ============================================================================================== job.json


def job_options(**given: Any) -> JobOptions:
    return JobOptions.model_validate(given)


def test_provider_and_providers_together_are_refused() -> None:
    with pytest.raises(ValidationError, match='give "provider" or "providers", not both'):
        job_options(provider="wavespeed", providers=["fal"])


def test_a_provider_listed_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match='"providers" names a provider twice'):
        job_options(providers=["wavespeed", "fal", "wavespeed"])


def test_several_providers_with_failover_false_are_refused() -> None:
    with pytest.raises(ValidationError, match='"providers" lists several providers to move between, but "failover"'):
        job_options(providers=["wavespeed", "fal"], failover=False)
    # one provider without failover is a plain choice
    assert job_options(providers=["fal"], failover=False).preference == ("fal",)


def test_an_empty_list_of_providers_is_refused() -> None:
    with pytest.raises(ValidationError, match="providers"):
        job_options(providers=[])


def test_a_model_and_a_mode_that_disagree_are_refused() -> None:
    with pytest.raises(ValidationError, match='"model" kling-v1-std and "mode" pro disagree: give one of them'):
        job_options(model="kling-v1-std", mode="pro")
    with pytest.raises(ValidationError, match=re.escape('"model" omnihuman-1.5 and "mode" std disagree')):
        job_options(model="omnihuman-1.5", mode="std")
    # and agreeing ones are taken
    assert job_options(model="kling-v2-pro", mode="pro").model == "kling-v2-pro"


def test_an_unknown_model_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ValidationError, match=re.escape(f"Input should be {KNOWN_MODELS}")):
        job_options(model="sora-2")


def test_a_jobs_preference_is_its_providers_or_its_provider() -> None:
    assert job_options(providers=["fal", "wavespeed"]).preference == ("fal", "wavespeed")
    assert job_options(provider="cometapi").preference == ("cometapi",)
    assert job_options().preference is None


def test_options_keep_their_json_types() -> None:
    # a bool stays a bool (and so is refused for an integer option), a whole number an int, text text
    options = job_options(options={"seed": True, "resolution": "720p", "steps": 7}).options
    assert options == {"seed": True, "resolution": "720p", "steps": 7}
    assert [type(value) for value in options.values()] == [bool, str, int]


# ============================================================================================== older task records


def stored_record(**fields: Any) -> dict[str, Any]:
    return {
        "task_id": "t-1",
        "job": "zoe",
        "status": "SUBMITTED",
        "created_at": T0.isoformat(),
        "updated_at": T0.isoformat(),
        **fields,
    }


@pytest.mark.parametrize(
    ("provider", "mode", "model"),
    [
        ("wavespeed", "std", "kling-v1-std"),
        ("wavespeed", "pro", "kling-v1-pro"),
        ("cometapi", "std", "kling-v1-std"),
        ("cometapi", "pro", "kling-v1-pro"),
        ("fal", "std", "kling-v2-std"),
        ("fal", "pro", "kling-v2-pro"),
    ],
)
def test_a_task_stored_with_a_mode_reads_as_its_providers_kling_model_of_that_tier(
    provider: str, mode: str, model: str
) -> None:
    task = Task.model_validate(stored_record(provider=provider, mode=mode))
    assert (task.provider, task.model, task.options) == (provider, model, {})
    assert "mode" not in task.model_dump()


def test_a_stored_task_with_a_model_keeps_it() -> None:
    task = Task.model_validate(stored_record(provider="wavespeed", model="infinitetalk", options={"seed": 7}))
    assert (task.model, task.options) == ("infinitetalk", {"seed": 7})


# ============================================================================================== render limit


def task_of(provider: str, model: str, audio_ms: int | None) -> Task:
    return Task(
        task_id="t-1",
        job="zoe",
        status=TaskStatus.PROCESSING,
        provider=provider,
        model=model,
        audio_ms=audio_ms,
        created_at=T0,
        updated_at=T0,
    )


@pytest.mark.parametrize(
    ("provider", "model", "audio_ms", "limit"),
    [
        # 2 x 20 s a second x 10 s = 400 s: the floor of 3600 s holds
        ("wavespeed", "kling-v1-std", 10_000, 3600),
        # unknown length: the floor
        ("wavespeed", "kling-v1-std", None, 3600),
        # 2 x 30 x 60 s = 3600 s: the floor exactly
        ("wavespeed", "infinitetalk", 60_000, 3600),
        # 2 x 30 x 61 s = 3660 s
        ("wavespeed", "infinitetalk", 61_000, 3660),
        # 2 x 30 x 600 s = 10 h
        ("wavespeed", "infinitetalk", 600_000, 36_000),
        # 2 x 20 x 120 s = 4800 s
        ("wavespeed", "omnihuman-1.5", 120_000, 4800),
        # 2 x 30 x 28.8 s = 1728 s: the floor
        ("fal", "infinitetalk", 28_800, 3600),
    ],
)
def test_a_task_may_render_for_max_render_seconds_or_twice_its_models_expected_time(
    provider: str, model: str, audio_ms: int | None, limit: int
) -> None:
    assert make_settings().render_limit(task_of(provider, model, audio_ms)) == timedelta(seconds=limit)


def test_a_lower_max_render_seconds_gives_way_to_twice_the_expected_time() -> None:
    settings = make_settings(MAX_RENDER_SECONDS="300")
    # 2 x 20 x 10 s = 400 s
    assert settings.render_limit(task_of("wavespeed", "kling-v1-std", 10_000)) == timedelta(seconds=400)
    # 2 x 20 x 5 s = 200 s: the floor of 300 s
    assert settings.render_limit(task_of("wavespeed", "kling-v1-std", 5_000)) == timedelta(seconds=300)


# ============================================================================================== as people read it


def test_a_model_is_described_with_the_resolution_it_renders_at() -> None:
    assert describe_model("wavespeed", "infinitetalk", {"resolution": "720p"}) == "InfiniteTalk at 720p"
    assert describe_model("fal", "infinitetalk", {"resolution": "720p", "seed": 3}) == "InfiniteTalk at 720p"


def test_without_a_resolution_the_models_default_one_is_shown() -> None:
    assert describe_model("wavespeed", "infinitetalk", {}) == "InfiniteTalk at 480p"
    assert describe_model("fal", "omnihuman-1.5", {}) == "OmniHuman 1.5 at 1080p"
    assert describe_model("wavespeed", "wan-2.2-s2v", {"seed": 1}) == "Wan 2.2 Speech-to-Video at 480p"


def test_a_model_without_resolutions_is_described_by_its_title_alone() -> None:
    assert describe_model("wavespeed", "kling-v1-std", {}) == "Kling v1 AI Avatar (standard)"
    assert describe_model("fal", "kling-v2-pro", {}) == "Kling AI Avatar v2 (pro)"
    assert describe_model("cometapi", "kling-v1-pro", {}) == "Kling AI Avatar (pro)"
    assert describe_model("wavespeed", "omnihuman-1.5", {}) == "OmniHuman 1.5"


def test_a_model_or_provider_not_in_the_catalog_is_described_by_its_name() -> None:
    assert describe_model("cometapi", "infinitetalk", {}) == "infinitetalk"
    assert describe_model("nobody", "kling-v1-std", {}) == "kling-v1-std"
