"""avatar_local.deploy_checks.rehearsal: template.yaml, transformed as `sam deploy` does, created as a stack in moto's
CloudFormation; and every IAM grant on Resource "*" explained in the template's Metadata."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest
from moto.dynamodb.models import dynamodb_backends
from moto.s3.models import s3_backends

from avatar_local.deploy_checks.rehearsal import (
    ACCOUNT_ID,
    METADATA_KEY,
    REGION,
    SCENARIOS,
    WILDCARD_KEY,
    Outcome,
    Rehearsal,
    RehearsalFailed,
    Scenario,
    StackRehearsal,
    check_wildcards,
    main,
    rehearse,
    resource_results,
    stand_ins,
)
from avatar_local.twin.sam_transform import transform
from avatar_local.twin.template import Resolver, load_template

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = SCENARIOS[0]

# What the pipeline cannot run without, each of a type moto's CloudFormation creates.
DATA_RESOURCES = (
    "MediaBucket",
    "TaskTable",
    "IdempotencyTable",
    "NotificationTopic",
    "AlarmTopic",
    "AsyncFailureQueue",
    "FinalizeFailureQueue",
    "AdmissionWakeupQueue",
)
ROLES = (
    "SubmitFunctionRole",
    "DispatchFunctionRole",
    "WebhookFunctionRole",
    "PollerFunctionRole",
    "FinalizeFunctionRole",
)
FUNCTIONS = ("SubmitFunction", "DispatchFunction", "WebhookFunction", "PollerFunction", "FinalizeFunction")


def unique_prefix() -> str:
    """A stack name prefix new to this process: moto's state, stacks and buckets included, outlives each rehearsal."""
    return f"r{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    return transform(template, REGION)


@pytest.fixture(scope="module")
def rehearsal(template: dict[str, Any]) -> Rehearsal:
    return rehearse(template, stack_prefix=unique_prefix())


def stack(rehearsal: Rehearsal, scenario: Scenario) -> StackRehearsal:
    return next(s for s in rehearsal.stacks if s.scenario == scenario)


def with_policy_statement(template: dict[str, Any], function: str, statement: dict[str, Any]) -> dict[str, Any]:
    """A copy of `template` whose `function` has one more policy statement (SAM's Policies: - Statement: ...)."""
    changed = copy.deepcopy(template)
    changed["Resources"][function]["Properties"]["Policies"].append({"Statement": [statement]})
    return changed


def with_explanations(template: dict[str, Any], explanations: dict[str, str]) -> dict[str, Any]:
    changed = copy.deepcopy(template)
    changed["Metadata"][METADATA_KEY][WILDCARD_KEY].update(explanations)
    return changed


# ------------------------------------------------------------------------------------------------- the rehearsal


def test_given_template_yaml_when_rehearsed_then_each_stack_is_created_with_its_tables_bucket_topics_queues_and_roles(
    rehearsal: Rehearsal,
) -> None:
    assert rehearsal.failures == []
    rehearsal.check()
    assert [s.scenario for s in rehearsal.stacks] == list(SCENARIOS)
    for result in rehearsal.stacks:
        assert result.status == "CREATE_COMPLETE"
        assert result.error is None
        created = result.created()
        assert set(DATA_RESOURCES + ROLES + FUNCTIONS) <= set(created)
        assert {"DispatchFunctionLineChanged", "DispatchFunctionWakeup", "FinalizeFunctionTaskStream"} <= set(created)
        assert any(logical_id.startswith("SharedLayer") for logical_id in created)  # SAM suffixes a layer's id
        assert created["TaskTable"].startswith(f"{result.stack_name}-TaskTable-")
        assert created["SubmitFunction"] == f"{result.stack_name}-submit"
        # What the stack lists exists in moto's services.
        assert created["MediaBucket"] in s3_backends[ACCOUNT_ID]["aws"].buckets
        assert created["TaskTable"] in dynamodb_backends[ACCOUNT_ID][REGION].tables


def test_given_the_optional_parameters_when_rehearsed_then_conditional_resources_follow_their_conditions(
    rehearsal: Rehearsal,
) -> None:
    defaults, options = stack(rehearsal, SCENARIOS[0]), stack(rehearsal, SCENARIOS[1])
    by_id = {r.logical_id: r for r in defaults.resources}
    assert by_id["WebhookApiAccessLogGroup"].outcome is Outcome.CONDITION_FALSE
    assert by_id["NotificationEmailSubscription"].outcome is Outcome.CONDITION_FALSE
    assert options.scenario.parameters["NotificationEmail"]
    assert options.created()["WebhookApiAccessLogGroup"] == f"/aws/apigateway/{options.stack_name}-webhook-api"
    # Set, the subscriptions would be created: moto has no model for them.
    assert "AWS::SNS::Subscription" in options.not_supported()["NotificationEmailSubscription"]


def test_given_types_moto_cannot_create_when_rehearsed_then_they_are_reported_not_supported_with_the_reason(
    rehearsal: Rehearsal,
) -> None:
    not_supported = stack(rehearsal, DEFAULTS).not_supported()
    assert "no CloudFormation model for AWS::CloudWatch::Alarm" in not_supported["SubmitErrorsAlarm"]
    assert "no CloudFormation model for AWS::SecretsManager::Secret" in not_supported["WaveSpeedSecret"]
    assert (
        "no CloudFormation model for AWS::Lambda::EventInvokeConfig" in not_supported["SubmitFunctionEventInvokeConfig"]
    )
    # moto models RestApi, but not one defined by an OpenAPI Body (SAM's); its deployment follows.
    assert "ignores Body" in not_supported["WebhookApi"]
    deployment = next(logical_id for logical_id in not_supported if logical_id.startswith("WebhookApiDeployment"))
    assert "deploys WebhookApi" in not_supported[deployment]
    assert not set(not_supported) & set(DATA_RESOURCES + ROLES + FUNCTIONS)


def test_given_a_stack_without_a_resource_moto_can_create_when_its_results_are_read_then_the_rehearsal_fails(
    transformed: dict[str, Any],
) -> None:
    left_out = stand_ins(transformed)
    resolver = Resolver(transformed, stack_name="s", region=REGION, account_id=ACCOUNT_ID)
    listed: dict[str, str | None] = {
        logical_id: f"physical-{logical_id}" for logical_id in transformed["Resources"] if logical_id != "TaskTable"
    }
    results = resource_results(transformed, left_out, resolver, listed)
    result = StackRehearsal(DEFAULTS, "s", "CREATE_COMPLETE", None, results)
    assert [r.logical_id for r in results if r.outcome is Outcome.NOT_CREATED] == ["TaskTable"]
    assert len(result.failures) == 1
    assert "TaskTable (AWS::DynamoDB::Table) was not created" in result.failures[0]
    with pytest.raises(RehearsalFailed, match="TaskTable"):
        Rehearsal((result,)).check()


def test_given_a_queue_name_sqs_refuses_when_rehearsed_then_the_stack_create_fails_with_the_services_error(
    template: dict[str, Any],
) -> None:
    broken = copy.deepcopy(template)
    broken["Resources"]["AdmissionWakeupQueue"]["Properties"]["QueueName"] = "admission wake-ups!"
    result = rehearse(broken, stack_prefix=unique_prefix(), scenarios=[DEFAULTS])
    (failed,) = result.stacks
    assert failed.status == "CREATE_FAILED"
    assert failed.error is not None and failed.error.startswith("InvalidParameterValue: Can only include alphanumeric")
    assert failed.created() == {}
    with pytest.raises(RehearsalFailed, match="creating the stack failed"):
        result.check()


def test_given_a_schedule_expression_eventbridge_refuses_when_rehearsed_then_the_stack_create_fails(
    template: dict[str, Any],
) -> None:
    broken = copy.deepcopy(template)
    broken["Resources"]["PollerFunction"]["Properties"]["Events"]["PollTick"]["Properties"]["Schedule"] = "every minute"
    result = rehearse(broken, stack_prefix=unique_prefix(), scenarios=[DEFAULTS])
    assert len(result.failures) == 1
    assert (
        "creating the stack failed: ValidationException: Parameter ScheduleExpression is not valid"
        in (result.failures[0])
    )


def test_given_a_parameter_value_its_allowed_pattern_refuses_when_rehearsed_then_the_stack_create_fails() -> None:
    """What the user gives at deploy time is checked as CloudFormation checks it (moto does not)."""
    result = rehearse(stack_prefix=unique_prefix(), scenarios=[Scenario("email", {"NotificationEmail": "ops at home"})])
    (failed,) = result.stacks
    assert failed.status == "CREATE_FAILED"
    assert failed.error is not None
    assert failed.error.startswith("ValidationError: parameter NotificationEmail: 'ops at home' does not match")
    assert len(result.failures) == 1


def test_given_an_attribute_the_table_does_not_have_when_rehearsed_then_the_stack_create_fails(
    template: dict[str, Any],
) -> None:
    broken = copy.deepcopy(template)
    stream = broken["Resources"]["FinalizeFunction"]["Properties"]["Events"]["TaskStream"]["Properties"]
    stream["Stream"] = {"Fn::GetAtt": ["TaskTable", "StreamARN"]}  # the attribute is StreamArn
    result = rehearse(broken, stack_prefix=unique_prefix(), scenarios=[DEFAULTS])
    assert len(result.failures) == 1
    assert "does not support attribute type StreamARN in Fn::GetAtt" in result.failures[0]


def test_given_a_code_directory_that_does_not_exist_when_rehearsed_then_packaging_fails(
    template: dict[str, Any],
) -> None:
    broken = copy.deepcopy(template)
    broken["Resources"]["SubmitFunction"]["Properties"]["CodeUri"] = "functions/submitt/"
    result = rehearse(broken, stack_prefix=unique_prefix(), scenarios=[DEFAULTS])
    assert result.missing_code == ("functions/submitt",)
    assert result.failures == ["no code at functions/submitt: nothing to package (sam build would fail)"]


def test_given_the_command_when_run_then_it_prints_both_checks_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stack-prefix", unique_prefix()]) == 0
    printed = capsys.readouterr().out
    assert "CREATE_COMPLETE" in printed
    rows = [line.split() for line in printed.splitlines()]
    assert ["DispatchFunctionRole", "AWSLambdaSQSQueueExecutionRole", "sqs:DeleteMessage", "explained"] in rows
    assert printed.rstrip().endswith("Deploy rehearsal passed.")


def test_given_a_template_whose_code_is_not_beside_it_when_the_command_runs_then_it_exits_1_naming_each_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "template.yaml").write_text((ROOT / "template.yaml").read_text())
    assert main(["--template", str(tmp_path / "template.yaml"), "--stack-prefix", unique_prefix()]) == 1
    errors = capsys.readouterr().err
    assert "Deploy rehearsal FAILED" in errors
    assert "no code at functions/submit:" in errors
    assert "no code at layers/shared:" in errors


# --------------------------------------------------------------------------------------------- the wildcard check


def test_given_template_yaml_when_its_wildcards_are_checked_then_each_grant_on_star_is_explained(
    transformed: dict[str, Any],
) -> None:
    check = check_wildcards(transformed)
    assert check.failures == []
    check.check()
    granted = {(grant.role, grant.action) for grant in check.grants}
    assert ("DispatchFunctionRole", "sqs:DeleteMessage") in granted
    assert ("FinalizeFunctionRole", "dynamodb:GetRecords") in granted
    assert {(role, "xray:PutTraceSegments") for role in ROLES} <= granted
    assert {(role, "logs:CreateLogGroup") for role in ROLES} <= granted
    assert all(grant.explanation for grant in check.grants)
    # Every explanation in the Metadata is needed.
    assert check.unused_explanations == ()


def test_given_a_statement_allowing_s3_getobject_on_star_when_checked_then_it_fails_naming_role_policy_and_action(
    template: dict[str, Any],
) -> None:
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
    check = check_wildcards(transform(with_policy_statement(template, "SubmitFunction", statement), REGION))
    assert len(check.failures) == 1
    assert check.failures[0].startswith("SubmitFunctionRole: SubmitFunctionRolePolicy")
    assert ": s3:GetObject: allowed on '*' but not explained" in check.failures[0]
    with pytest.raises(RehearsalFailed, match="s3:GetObject"):
        check.check()


def test_given_the_same_grant_explained_in_the_metadata_when_checked_then_it_passes(template: dict[str, Any]) -> None:
    statement = {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["*"]}
    changed = with_explanations(with_policy_statement(template, "PollerFunction", statement), {"s3:GetObject": "why"})
    check = check_wildcards(transform(changed, REGION))
    assert check.failures == []
    assert ("PollerFunctionRole", "s3:GetObject", "why") in {(g.role, g.action, g.explanation) for g in check.grants}


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ({"Effect": "Allow", "Action": "s3:*", "Resource": "*"}, "every action (of the service)"),
        ({"Effect": "Allow", "Action": "*", "Resource": "*"}, "every action (of the service)"),
        ({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, "Allow with NotAction"),
        ({"Effect": "Allow", "Action": "s3:GetObject", "NotResource": "arn:aws:s3:::x/*"}, "Allow with NotResource"),
    ],
)
def test_given_a_grant_of_every_action_or_resource_when_checked_then_it_fails_even_with_an_explanation(
    template: dict[str, Any], statement: dict[str, Any], problem: str
) -> None:
    changed = with_explanations(
        with_policy_statement(template, "WebhookFunction", statement), {"s3:GetObject": "why", "iam:PassRole": "why"}
    )
    failures = check_wildcards(transform(changed, REGION)).failures
    assert len(failures) == 1
    assert failures[0].startswith("WebhookFunctionRole: ")
    assert problem in failures[0]


def test_given_a_statement_on_named_resources_or_a_deny_on_star_when_checked_then_nothing_is_reported(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    scoped = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::other-bucket/*"}
    deny = {"Effect": "Deny", "Action": "s3:*", "Resource": "*"}
    changed = with_policy_statement(with_policy_statement(template, "SubmitFunction", scoped), "SubmitFunction", deny)
    check = check_wildcards(transform(changed, REGION))
    assert check.failures == []
    assert len(check.grants) == len(check_wildcards(transformed).grants)


def test_given_a_managed_policy_moto_does_not_know_when_checked_then_it_fails_as_unreadable(
    transformed: dict[str, Any],
) -> None:
    changed = copy.deepcopy(transformed)
    arns = changed["Resources"]["PollerFunctionRole"]["Properties"]["ManagedPolicyArns"]
    arns.append("arn:aws:iam::123456789012:policy/our-own")
    failures = check_wildcards(changed).failures
    assert failures == ["PollerFunctionRole: cannot read the managed policy 'arn:aws:iam::123456789012:policy/our-own'"]


@pytest.mark.parametrize("key", ["*", "s3:*", "GetObject"])
def test_given_an_explanation_that_is_not_one_action_when_checked_then_it_fails(
    transformed: dict[str, Any], key: str
) -> None:
    changed = copy.deepcopy(transformed)
    changed["Metadata"][METADATA_KEY][WILDCARD_KEY][key] = "anything"
    failures = check_wildcards(changed).failures
    assert failures == [
        f"Metadata.{METADATA_KEY}.{WILDCARD_KEY}.{key}: not an action name (service:Action, never '*' or 'service:*')"
    ]
