"""Each function validates its own settings: one deployed without a variable its work needs refuses to build its
pipeline on its first invocation, naming the variable, before it reads or writes anything; and the template gives
each function all it needs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from support.aws import Stack, template
from support.events import FakeLambdaContext, api_post

from avatar_pipeline import wiring
from avatar_pipeline.config import SenderSettings, Settings, WebhookSettings
from avatar_pipeline.domain.pairing import TASK_ID_LENGTH

SETTINGS_OF = {
    "SubmitFunction": Settings,
    "DispatchFunction": SenderSettings,
    "WebhookFunction": WebhookSettings,
    "PollerFunction": SenderSettings,
    "FinalizeFunction": Settings,
}


def required_variables(model: type[Settings]) -> set[str]:
    return {field.alias for field in model.model_fields.values() if field.is_required() and field.alias}


def invoke(function: str) -> Any:
    """One invocation of the function's handler with an event it takes."""
    if function == "DispatchFunction":
        from dispatch_handler import lambda_handler as dispatch

        return dispatch({"Records": []}, FakeLambdaContext())
    if function == "PollerFunction":
        from poller_handler import lambda_handler as poll

        return poll({}, FakeLambdaContext())
    from webhook_handler import lambda_handler as webhook

    return webhook(api_post("wavespeed", {"task_id": "0" * TASK_ID_LENGTH}, b"{}", {}), FakeLambdaContext())


MISSING = [
    (function, variable)
    for function in ("DispatchFunction", "PollerFunction", "WebhookFunction")
    for variable in sorted(required_variables(SETTINGS_OF[function]) - required_variables(Settings))
]


def test_the_functions_that_need_more_than_the_common_settings_each_name_what() -> None:
    assert {function for function, _ in MISSING} == {"DispatchFunction", "PollerFunction", "WebhookFunction"}
    assert ("WebhookFunction", "IDEMPOTENCY_TABLE_NAME") in MISSING
    assert ("DispatchFunction", "WEBHOOK_BASE_URL") in MISSING


@pytest.mark.parametrize(("function", "variable"), MISSING)
def test_a_function_deployed_without_a_variable_its_work_needs_refuses_to_start_naming_it(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, function: str, variable: str
) -> None:
    # Given the function's environment without one variable its own settings require
    monkeypatch.delenv(variable)
    wiring.pipeline.cache_clear()
    # When it is invoked, then it refuses to build its pipeline, naming the variable
    with pytest.raises(ValidationError, match=variable):
        invoke(function)


@pytest.mark.parametrize("function", SETTINGS_OF)
def test_the_template_gives_each_function_every_variable_its_settings_require(function: str) -> None:
    decoded = template()
    variables = {
        **decoded["Globals"]["Function"]["Environment"]["Variables"],
        **decoded["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {}),
    }
    assert required_variables(SETTINGS_OF[function]) <= set(variables)
