"""avatar_local.twin.template: the local stack reads functions, events and environment from template.yaml itself."""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.aws import SECRET_IDS

from avatar_local.twin.event_filter import check_pattern
from avatar_local.twin.template import (
    NO_VALUE,
    EventSpec,
    FunctionSpec,
    Resolver,
    TemplateError,
    function_by_id,
    functions,
    layer_content_dirs,
    load_template,
    merge_globals,
    schedule_interval_seconds,
)

ROOT = Path(__file__).resolve().parents[2]
STACK, REGION, ACCOUNT = "avatar-local", "us-east-1", "123456789012"
STREAM_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/tasks/stream/2026-01-01T00:00:00.000"

# --------------------------------------------------------------------------------------- a synthetic template

SYNTHETIC: dict[str, Any] = {
    "Parameters": {
        "Env": {"Type": "String", "Default": "dev", "AllowedValues": ["dev", "prod"]},
        "Size": {"Type": "Number", "Default": 5, "MinValue": 1, "MaxValue": 100},
        "Names": {"Type": "CommaDelimitedList", "Default": "a, b,c"},
        "Email": {"Type": "String", "Default": "", "AllowedPattern": r"^$|^[^@\s]+@[^@\s]+$"},
        "Required": {"Type": "String"},
    },
    "Conditions": {
        "IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]},
        "IsDev": {"Fn::Not": [{"Condition": "IsProd"}]},
        "BigProd": {"Fn::And": [{"Condition": "IsProd"}, {"Fn::Equals": [{"Ref": "Size"}, 10]}]},
        "ProdOrBig": {"Fn::Or": [{"Condition": "IsProd"}, {"Fn::Equals": ["10", {"Ref": "Size"}]}]},
        "LoopA": {"Fn::Not": [{"Condition": "LoopB"}]},
        "LoopB": {"Fn::Not": [{"Condition": "LoopA"}]},
    },
    "Mappings": {"Memory": {"dev": {"Size": 128}, "prod": {"Size": 1024}}},
    "Resources": {
        "Table": {"Type": "AWS::DynamoDB::Table"},
        "Queue": {"Type": "AWS::SQS::Queue"},
    },
}


def synthetic_resolver(**overrides: Any) -> Resolver:
    options: dict[str, Any] = {
        "stack_name": STACK,
        "region": REGION,
        "account_id": ACCOUNT,
        "parameters": {"Required": "given"},
        "resource_values": {"Table": "tasks"},
        "attributes": {
            ("Table", "Arn"): f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/tasks",
            ("Table", "StreamArn"): STREAM_ARN,
        },
    }
    options.update(overrides)
    return Resolver(SYNTHETIC, **options)


NO_VALUE_REF = {"Ref": "AWS::NoValue"}

RESOLVE_CASES: list[tuple[str, Any, Any]] = [
    ("stack name", {"Ref": "AWS::StackName"}, STACK),
    ("region", {"Ref": "AWS::Region"}, REGION),
    ("account", {"Ref": "AWS::AccountId"}, ACCOUNT),
    ("partition", {"Ref": "AWS::Partition"}, "aws"),
    ("url suffix", {"Ref": "AWS::URLSuffix"}, "amazonaws.com"),
    ("string parameter default", {"Ref": "Env"}, "dev"),
    ("number parameter stays a string", {"Ref": "Size"}, "5"),
    ("list parameter", {"Ref": "Names"}, ["a", "b", "c"]),
    ("supplied parameter", {"Ref": "Required"}, "given"),
    ("resource", {"Ref": "Table"}, "tasks"),
    ("sub string", {"Fn::Sub": "${AWS::StackName}-${Env}-${Table}-${Size}"}, f"{STACK}-dev-tasks-5"),
    ("sub attribute", {"Fn::Sub": "${Table.Arn}/index/*"}, f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/tasks/index/*"),
    ("sub escape", {"Fn::Sub": "${!Literal}-${Env}-${!AWS::Region}"}, "${Literal}-dev-${AWS::Region}"),
    ("sub without variables", {"Fn::Sub": "plain text"}, "plain text"),
    ("sub list form", {"Fn::Sub": ["${A}-${B}-${Env}", {"A": "x", "B": {"Ref": "Table"}}]}, "x-tasks-dev"),
    ("sub variable shadows parameter", {"Fn::Sub": ["${Env}", {"Env": "mine"}]}, "mine"),
    ("sub number variable", {"Fn::Sub": ["${N}s", {"N": 30}]}, "30s"),
    ("getatt list", {"Fn::GetAtt": ["Table", "StreamArn"]}, STREAM_ARN),
    ("getatt string", {"Fn::GetAtt": "Table.StreamArn"}, STREAM_ARN),
    ("getatt computed attribute", {"Fn::GetAtt": ["Table", {"Fn::Join": ["", ["Stream", "Arn"]]}]}, STREAM_ARN),
    ("join", {"Fn::Join": ["-", ["a", {"Ref": "Env"}, 3, True]]}, "a-dev-3-true"),
    ("join list parameter", {"Fn::Join": [",", {"Ref": "Names"}]}, "a,b,c"),
    ("join drops novalue", {"Fn::Join": ["/", ["a", NO_VALUE_REF, "b"]]}, "a/b"),
    ("select", {"Fn::Select": [1, ["x", "y", "z"]]}, "y"),
    ("select string index from parameter", {"Fn::Select": ["0", {"Ref": "Names"}]}, "a"),
    ("split", {"Fn::Split": ["/", "a/b/c"]}, ["a", "b", "c"]),
    (
        "select of split of getatt",
        {"Fn::Select": [3, {"Fn::Split": ["/", {"Fn::GetAtt": "Table.StreamArn"}]}]},
        "2026-01-01T00:00:00.000",
    ),
    ("if false branch", {"Fn::If": ["IsProd", "p", "d"]}, "d"),
    ("if true branch", {"Fn::If": ["IsDev", {"Fn::Sub": "${Env}!"}, "p"]}, "dev!"),
    ("equals", {"Fn::Equals": [{"Ref": "Env"}, "dev"]}, True),
    ("equals number and string", {"Fn::Equals": [{"Ref": "Size"}, 5]}, True),
    ("not", {"Fn::Not": [{"Fn::Equals": ["a", "b"]}]}, True),
    ("and", {"Fn::And": [{"Condition": "IsDev"}, {"Fn::Equals": ["a", "a"]}]}, True),
    ("or", {"Fn::Or": [{"Condition": "IsProd"}, {"Fn::Equals": ["a", "b"]}]}, False),
    ("find in map", {"Fn::FindInMap": ["Memory", {"Ref": "Env"}, "Size"]}, 128),
    ("base64", {"Fn::Base64": {"Fn::Sub": "${Env}"}}, "ZGV2"),
    ("novalue key dropped", {"A": NO_VALUE_REF, "B": 1, "C": {"Fn::If": ["IsProd", "x", NO_VALUE_REF]}}, {"B": 1}),
    ("novalue item dropped", ["a", NO_VALUE_REF, {"Fn::If": ["IsDev", NO_VALUE_REF, "b"]}, "c"], ["a", "c"]),
    ("novalue at the top", NO_VALUE_REF, NO_VALUE),
    (
        "nested structures",
        {"Outer": [{"Inner": {"Ref": "Table"}}, 7, None, False]},
        {"Outer": [{"Inner": "tasks"}, 7, None, False]},
    ),
    ("a two-key dict is not an intrinsic", {"Ref": "Env", "Other": 1}, {"Ref": "Env", "Other": 1}),
]


@pytest.mark.parametrize(("value", "expected"), [case[1:] for case in RESOLVE_CASES], ids=[c[0] for c in RESOLVE_CASES])
def test_resolver_evaluates_intrinsics(value: Any, expected: Any) -> None:
    assert synthetic_resolver().resolve(value) == expected


def test_resolver_does_not_modify_its_input() -> None:
    value = {"A": NO_VALUE_REF, "B": [{"Ref": "Table"}]}
    before = copy.deepcopy(value)
    synthetic_resolver().resolve(value)
    assert value == before


def test_parameter_overrides_replace_defaults_and_stay_strings() -> None:
    resolver = synthetic_resolver(parameters={"Required": "r", "Env": "prod", "Size": "10", "Names": "x"})
    assert resolver.resolve({"Ref": "Env"}) == "prod"
    assert resolver.resolve({"Ref": "Size"}) == "10"
    assert resolver.resolve({"Ref": "Names"}) == ["x"]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"Env": "dev", "Size": "5"}, {"IsProd": False, "IsDev": True, "BigProd": False, "ProdOrBig": False}),
        ({"Env": "prod", "Size": "5"}, {"IsProd": True, "IsDev": False, "BigProd": False, "ProdOrBig": True}),
        ({"Env": "prod", "Size": "10"}, {"IsProd": True, "IsDev": False, "BigProd": True, "ProdOrBig": True}),
        ({"Env": "dev", "Size": "10"}, {"IsProd": False, "IsDev": True, "BigProd": False, "ProdOrBig": True}),
    ],
)
def test_conditions_follow_parameters(parameters: dict[str, str], expected: dict[str, bool]) -> None:
    resolver = synthetic_resolver(parameters={"Required": "r", **parameters})
    assert {name: resolver.condition(name) for name in expected} == expected
    assert resolver.resolve({"Fn::If": ["BigProd", "big", "small"]}) == ("big" if expected["BigProd"] else "small")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"Ref": "Queue"}, "Queue"),  # a resource of the template without a supplied value
        ({"Ref": "Nope"}, "Nope"),
        ({"Fn::Sub": "${Queue}"}, "Queue"),
        ({"Fn::GetAtt": ["Queue", "Arn"]}, "Queue.Arn"),
        ({"Fn::GetAtt": "Nope.Arn"}, "Nope"),
        ({"Fn::Sub": "${Queue.QueueName}"}, "Queue.QueueName"),
        ({"Fn::Sub": "${Names}"}, "list"),
        ({"Fn::If": ["Missing", 1, 2]}, "Missing"),
        ({"Fn::If": ["LoopA", 1, 2]}, "cycle"),
        ({"Fn::Select": [5, ["a"]]}, "out of range"),
        ({"Fn::FindInMap": ["Memory", "test", "Size"]}, "Memory/test/Size"),
        ({"Fn::GetAZs": ""}, "Fn::GetAZs"),
        ({"Fn::ImportValue": "x"}, "Fn::ImportValue"),
        ({"Fn::Join": ["-", "not a list"]}, "Fn::Join"),
        ({"Fn::Sub": 5}, "Fn::Sub"),
    ],
)
def test_resolver_errors_name_what_is_missing(value: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        synthetic_resolver().resolve(value)


def test_unknown_resource_error_says_how_to_supply_it() -> None:
    with pytest.raises(TemplateError, match=r"Ref to resource Queue \(AWS::SQS::Queue\).*resource_values"):
        synthetic_resolver().resolve({"Ref": "Queue"})


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({}, "Required has no Default"),
        ({"Required": "r", "Env": "staging"}, "AllowedValues"),
        ({"Required": "r", "Size": "0"}, "MinValue"),
        ({"Required": "r", "Size": "101"}, "MaxValue"),
        ({"Required": "r", "Size": "many"}, "not a number"),
        ({"Required": "r", "Email": "not-an-email"}, "AllowedPattern"),
    ],
)
def test_parameter_values_are_checked(parameters: dict[str, str], message: str) -> None:
    resolver = synthetic_resolver(parameters=parameters)
    with pytest.raises(TemplateError, match=message):
        resolver.resolve([{"Ref": "Required"}, {"Ref": "Env"}, {"Ref": "Size"}, {"Ref": "Email"}])


def test_overrides_for_undeclared_parameters_are_rejected() -> None:
    with pytest.raises(TemplateError, match="Typo"):
        synthetic_resolver(parameters={"Required": "r", "Typo": "x"})


def test_resource_values_may_name_sam_generated_resources() -> None:
    # e.g. the implicit ServerlessRestApi or a function's generated Role: not in Resources before the transform.
    resolver = synthetic_resolver(resource_values={"ServerlessRestApi": "api123"})
    assert resolver.resolve(
        {"Fn::Sub": "https://${ServerlessRestApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"}
    ) == (f"https://api123.execute-api.{REGION}.amazonaws.com")


def test_the_stack_id_ends_with_a_uuid_of_its_own_stack() -> None:
    """Given CloudFormation ends a stack's id with a UUID (which the media bucket's default name is made from), then
    the resolver's stack id is arn:...:stack/<name>/<UUID>: the same for every run of one stack, another for a stack
    of another name, region or account."""

    def stack_id(stack_name: str = STACK, region: str = REGION, account_id: str = ACCOUNT) -> str:
        return str(
            Resolver(SYNTHETIC, stack_name=stack_name, region=region, account_id=account_id).resolve(
                {"Ref": "AWS::StackId"}
            )
        )

    prefix = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/"
    assert stack_id().startswith(prefix)
    assert str(uuid.UUID(stack_id().removeprefix(prefix))) == stack_id().removeprefix(prefix)
    assert stack_id() == stack_id()
    others = {stack_id(stack_name="other"), stack_id(region="eu-west-1"), stack_id(account_id="210987654321")}
    tails = {other.rsplit("/", 1)[-1] for other in others} | {stack_id().rsplit("/", 1)[-1]}
    assert len(tails) == 4


def test_resolve_str_renders_scalars_like_cloudformation() -> None:
    resolver = synthetic_resolver()
    assert resolver.resolve_str(True) == "true"
    assert resolver.resolve_str(30) == "30"
    with pytest.raises(TemplateError):
        resolver.resolve_str(NO_VALUE_REF)
    with pytest.raises(TemplateError):
        resolver.resolve_str({"Ref": "Names"})


# ------------------------------------------------------------------------------------------- globals merging

SAM: dict[str, Any] = {
    "Globals": {
        "Function": {
            "Runtime": "python3.13",
            "Timeout": 30,
            "MemorySize": 256,
            "Layers": [{"Ref": "Shared"}],
            "Environment": {"Variables": {"A": "global", "B": "global"}},
            "Tags": {"team": "avatar"},
        }
    },
    "Resources": {
        "Shared": {"Type": "AWS::Serverless::LayerVersion", "Properties": {"ContentUri": "layers/shared"}},
        "Extra": {"Type": "AWS::Serverless::LayerVersion", "Properties": {"ContentUri": "layers/extra"}},
        "One": {
            "Type": "AWS::Serverless::Function",
            "Properties": {
                "CodeUri": "src/one/",
                "Handler": "pkg/app.handler",
                "Timeout": 60,
                "Layers": [{"Ref": "Extra"}],
                "Environment": {"Variables": {"B": "local", "C": {"Ref": "AWS::Region"}}},
                "Tags": {"fn": "one"},
                "Events": {
                    "Queue": {
                        "Type": "SQS",
                        "Properties": {
                            "Queue": {"Fn::GetAtt": ["Jobs", "Arn"]},
                            "BatchSize": 5,
                            "FilterCriteria": {"Filters": [{"Pattern": '{"body": {"kind": ["a"]}}'}]},
                        },
                    }
                },
            },
        },
        "Two": {
            "Type": "AWS::Serverless::Function",
            "Condition": "Enabled",
            "Properties": {"CodeUri": "src/two/", "Handler": "app.main", "Runtime": "python3.12"},
        },
        "Jobs": {"Type": "AWS::SQS::Queue"},
        "Plain": {"Type": "AWS::Lambda::Function", "Properties": {"Handler": "x.y"}},
    },
}


def test_globals_merge_like_sam() -> None:
    before = copy.deepcopy(SAM)
    one, two = functions(SAM)
    assert before == SAM, "functions() must not modify the template"

    assert one.logical_id == "One"
    assert one.environment == {"A": "global", "B": "local", "C": {"Ref": "AWS::Region"}}
    assert one.timeout == 60  # the function's own value wins
    assert one.memory_size == 256  # inherited
    assert one.runtime == "python3.13"
    assert one.layers == [{"Ref": "Shared"}, {"Ref": "Extra"}]  # globals first
    assert one.properties["Tags"] == {"team": "avatar", "fn": "one"}
    assert (one.handler, one.module, one.attribute, one.code_uri) == (
        "pkg/app.handler",
        "pkg.app",
        "handler",
        "src/one/",
    )
    assert one.condition is None

    assert two.logical_id == "Two"
    assert two.environment == {"A": "global", "B": "global"}
    assert two.runtime == "python3.12"
    assert (two.timeout, two.memory_size) == (30, 256)
    assert two.layers == [{"Ref": "Shared"}]
    assert two.condition == "Enabled"
    assert two.events == []


def test_merged_functions_do_not_share_global_objects() -> None:
    one, two = functions(SAM)
    one.environment["A"] = "changed"
    assert two.environment["A"] == "global"
    assert SAM["Globals"]["Function"]["Environment"]["Variables"]["A"] == "global"


def test_functions_without_globals_get_lambda_defaults() -> None:
    template = {
        "Resources": {"F": {"Type": "AWS::Serverless::Function", "Properties": {"CodeUri": ".", "Handler": "m.f"}}}
    }
    (spec,) = functions(template)
    assert (spec.timeout, spec.memory_size, spec.runtime, spec.environment, spec.layers) == (3, 128, None, {}, [])


@pytest.mark.parametrize(
    ("global_value", "local_value", "expected"),
    [
        ("a", "b", "b"),
        (1, 2, 2),
        ({"x": 1, "y": {"p": 1, "q": 2}}, {"y": {"q": 3}, "z": 4}, {"x": 1, "y": {"p": 1, "q": 3}, "z": 4}),
        ([1, 2], [3], [1, 2, 3]),
        ({"Ref": "A"}, {"Ref": "B"}, {"Ref": "B"}),
        ({"Fn::If": ["C", {"a": 1}, {"b": 2}]}, {"c": 3}, {"c": 3}),  # an intrinsic is a primitive, not a map
        ({"a": 1}, {"Fn::If": ["C", {"a": 2}, {"a": 3}]}, {"Fn::If": ["C", {"a": 2}, {"a": 3}]}),
        ([1], {"a": 1}, {"a": 1}),  # different kinds: the resource wins
    ],
)
def test_merge_globals_rules(global_value: Any, local_value: Any, expected: Any) -> None:
    assert merge_globals(global_value, local_value) == expected


def test_layer_content_dirs_follow_refs_to_template_layers() -> None:
    one, two = functions(SAM)
    assert layer_content_dirs(SAM, one) == ["layers/shared", "layers/extra"]
    assert layer_content_dirs(SAM, two) == ["layers/shared"]


@pytest.mark.parametrize(
    "layer",
    ["arn:aws:lambda:us-east-1:123456789012:layer:external:1", {"Ref": "Jobs"}, {"Ref": "Missing"}],
)
def test_layers_that_cannot_run_locally_are_reported(layer: Any) -> None:
    spec = functions(SAM)[1]
    odd = FunctionSpec(**{**{f: getattr(spec, f) for f in spec.__dataclass_fields__}, "layers": [layer]})
    with pytest.raises(TemplateError, match="layer"):
        layer_content_dirs(SAM, odd)


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"Handler": "m.f"}, "CodeUri"),
        ({"CodeUri": {"Bucket": "b", "Key": "k"}, "Handler": "m.f"}, "CodeUri"),
        ({"CodeUri": ".", "Handler": "nodot"}, "Handler"),
        ({"CodeUri": ".", "Handler": "m.f", "Timeout": {"Ref": "T"}}, "Timeout"),
        ({"CodeUri": ".", "Handler": "m.f", "Events": {"E": {"Properties": {}}}}, "event E"),
        ({"CodeUri": ".", "Handler": "m.f", "Events": ["E"]}, "Events"),
        ({"CodeUri": ".", "Handler": "m.f", "Environment": {"Fn::If": ["C", {}, {}]}}, "Environment"),
    ],
)
def test_functions_report_unreadable_properties(properties: dict[str, Any], message: str) -> None:
    template = {"Resources": {"F": {"Type": "AWS::Serverless::Function", "Properties": properties}}}
    with pytest.raises(TemplateError, match=message):
        functions(template)


def test_sqs_event_details() -> None:
    queue = functions(SAM)[0].event("Queue").sqs()
    assert queue.queue == "Jobs"
    assert queue.batch_size == 5
    assert queue.filter_patterns == [{"body": {"kind": ["a"]}}]
    assert queue.enabled is True


def test_event_helpers_check_the_event_type() -> None:
    event = EventSpec(name="E", type="S3", properties={"Bucket": {"Ref": "B"}, "Events": "s3:ObjectCreated:*"})
    with pytest.raises(TemplateError, match="not DynamoDB"):
        event.dynamodb()
    with pytest.raises(TemplateError, match="not Schedule"):
        event.schedule()


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("{not json", "not JSON"),
        ('["a list"]', "not a JSON object"),
    ],
)
def test_bad_filter_patterns_are_reported(pattern: str, message: str) -> None:
    event = EventSpec(
        name="E",
        type="DynamoDB",
        properties={
            "Stream": {"Fn::GetAtt": ["T", "StreamArn"]},
            "StartingPosition": "LATEST",
            "FilterCriteria": {"Filters": [{"Pattern": pattern}]},
        },
    )
    with pytest.raises(TemplateError, match=message):
        event.dynamodb()


def test_dynamodb_event_defaults_and_stream_must_be_a_stream_arn() -> None:
    event = EventSpec(
        name="E", type="DynamoDB", properties={"Stream": {"Fn::GetAtt": "T.StreamArn"}, "StartingPosition": "LATEST"}
    )
    details = event.dynamodb()
    assert details.stream_source == "T"
    assert (details.batch_size, details.maximum_retry_attempts, details.bisect_batch_on_function_error) == (
        100,
        None,
        False,
    )
    assert (details.filter_patterns, details.function_response_types, details.enabled) == ([], [], True)
    wrong = EventSpec(
        name="E", type="DynamoDB", properties={"Stream": {"Fn::GetAtt": ["T", "Arn"]}, "StartingPosition": "LATEST"}
    )
    with pytest.raises(TemplateError, match="StreamArn"):
        wrong.dynamodb()


def test_schedule_v2_state_and_input() -> None:
    event = EventSpec(
        name="E",
        type="ScheduleV2",
        properties={"ScheduleExpression": "rate(2 hours)", "State": "DISABLED", "Input": '{"a": 1}'},
    )
    schedule = event.schedule()
    assert (schedule.expression, schedule.enabled, schedule.input, schedule.interval_seconds) == (
        "rate(2 hours)",
        False,
        '{"a": 1}',
        7200.0,
    )


# -------------------------------------------------------------------------------------------- rate schedules


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("rate(1 minute)", 60.0),
        ("rate(5 minutes)", 300.0),
        ("rate(1 hour)", 3600.0),
        ("rate(2 hours)", 7200.0),
        ("rate(1 day)", 86400.0),
        ("rate(3 days)", 259200.0),
        (" rate(10 minutes) ", 600.0),
    ],
)
def test_schedule_interval_seconds(expression: str, seconds: float) -> None:
    assert schedule_interval_seconds(expression) == seconds


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 12 * * ? *)",
        "at(2026-01-01T00:00:00)",
        "rate(1 minutes)",
        "rate(5 minute)",
        "rate(0 minutes)",
        "rate(30 seconds)",
        "rate(1 second)",
        "rate(1 week)",
        "rate(-1 minutes)",
        "rate(1.5 hours)",
        "every minute",
    ],
)
def test_schedule_interval_rejects_what_eventbridge_rejects_or_cron(expression: str) -> None:
    with pytest.raises(TemplateError):
        schedule_interval_seconds(expression)


# --------------------------------------------------------------------------------------- the real template.yaml


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(ROOT / "template.yaml")


@pytest.fixture(scope="module")
def specs(template: dict[str, Any]) -> dict[str, FunctionSpec]:
    return {spec.logical_id: spec for spec in functions(template)}


# The bucket's name when MediaBucketName is empty: the account, then the last group of the stack id's UUID.
STACK_ID = Resolver({}, stack_name=STACK, region=REGION, account_id=ACCOUNT).pseudo_parameter("AWS::StackId")
MEDIA_BUCKET = f"{ACCOUNT}-avatar-media-{STACK_ID.rsplit('-', 1)[-1]}"
RESOURCE_VALUES = {
    "TaskTable": "avatar-local-TaskTable",
    "IdempotencyTable": "avatar-local-IdempotencyTable",
    "NotificationTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:avatar-local-NotificationTopic",
    "WaveSpeedSecret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:avatar-local-WaveSpeedSecret-AbCdEf",
    "WaveSpeedWebhookSecret": (
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:avatar-local-WaveSpeedWebhookSecret-StUvWx"
    ),
    "CallbackKeySecret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:avatar-local-CallbackKeySecret-YzAbCd",
    "CometApiSecret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:avatar-local-CometApiSecret-GhIjKl",
    "FalSecret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:avatar-local-FalSecret-StUvWx",
    "LinkSignerSecret": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:LinkSignerSecret-MnOpQr",
    "WebhookApi": "abc123defg",
    "AdmissionWakeupQueue": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/avatar-local-AdmissionWakeupQueue",
    "MediaBucket": MEDIA_BUCKET,
    "SubmitFunction": f"{STACK}-submit",
}
ATTRIBUTES = {
    (
        "TaskTable",
        "StreamArn",
    ): f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/avatar-local-TaskTable/stream/2026-01-01T00:00:00.000",
    ("TaskTable", "Arn"): f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/avatar-local-TaskTable",
    ("IdempotencyTable", "Arn"): f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/avatar-local-IdempotencyTable",
    ("NotificationTopic", "TopicName"): "avatar-local-NotificationTopic",
    ("AsyncFailureQueue", "Arn"): f"arn:aws:sqs:{REGION}:{ACCOUNT}:avatar-local-AsyncFailureQueue",
    ("FinalizeFailureQueue", "Arn"): f"arn:aws:sqs:{REGION}:{ACCOUNT}:avatar-local-FinalizeFailureQueue",
    ("AdmissionWakeupQueue", "Arn"): f"arn:aws:sqs:{REGION}:{ACCOUNT}:avatar-local-AdmissionWakeupQueue",
    ("AdmissionWakeupQueue", "QueueName"): "avatar-local-AdmissionWakeupQueue",
    ("MediaBucket", "Arn"): f"arn:aws:s3:::{MEDIA_BUCKET}",
    ("SubmitFunction", "Arn"): f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STACK}-submit",
}


def real_resolver(template: dict[str, Any], **overrides: Any) -> Resolver:
    options: dict[str, Any] = {
        "stack_name": STACK,
        "region": REGION,
        "account_id": ACCOUNT,
        "resource_values": RESOURCE_VALUES,
        "attributes": ATTRIBUTES,
    }
    options.update(overrides)
    return Resolver(template, **options)


def test_load_template_returns_plain_python_values(template: dict[str, Any]) -> None:
    allowed = {dict, list, str, int, float, bool, type(None)}

    def walk(node: Any) -> None:
        assert type(node) in allowed, type(node)
        if isinstance(node, dict):
            for key, value in node.items():
                assert type(key) is str
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(template)
    assert template["Globals"]["Function"]["Environment"]["Variables"]["TASK_TABLE_NAME"] == {"Ref": "TaskTable"}


def test_load_template_reports_unreadable_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("Resources: [unclosed\n")
    with pytest.raises(TemplateError, match=r"broken\.yaml"):
        load_template(broken)
    with pytest.raises(TemplateError, match=r"missing\.yaml"):
        load_template(tmp_path / "missing.yaml")


def test_the_six_functions_and_their_handlers(specs: dict[str, FunctionSpec]) -> None:
    expected = {
        # No SAM event: the media bucket's notification invokes submit (test_submit_is_triggered_by_inbox_uploads).
        "SubmitFunction": ("functions/submit/", "submit_handler", [], 120, 512),
        "DispatchFunction": (
            "functions/dispatch/",
            "dispatch_handler",
            [("LineChanged", "DynamoDB"), ("Wakeup", "SQS")],
            300,
            512,
        ),
        "WebhookFunction": ("functions/webhook/", "webhook_handler", [("ProviderCallback", "Api")], 29, 512),
        "PollerFunction": ("functions/poller/", "poller_handler", [("PollTick", "Schedule")], 300, 512),
        "EventsFunction": ("functions/events/", "events_handler", [("TaskStream", "DynamoDB")], 60, 256),
        "FinalizeFunction": ("functions/finalize/", "finalize_handler", [("TaskStream", "DynamoDB")], 900, 512),
    }
    assert list(specs) == list(expected)
    for logical_id, (code_uri, module, events, timeout, memory) in expected.items():
        spec = specs[logical_id]
        assert spec.code_uri == code_uri
        assert spec.handler == f"{module}.lambda_handler"
        assert (spec.module, spec.attribute) == (module, "lambda_handler")
        assert [(event.name, event.type) for event in spec.events] == events
        assert (spec.runtime, spec.timeout, spec.memory_size) == ("python3.13", timeout, memory)
        assert (ROOT / code_uri / f"{module}.py").is_file()


def test_every_function_runs_with_the_shared_layer(template: dict[str, Any], specs: dict[str, FunctionSpec]) -> None:
    for spec in specs.values():
        assert spec.layers[-1] == {"Ref": "SharedLayer"}
        assert layer_content_dirs(template, spec) == ["layers/shared"]
    assert (ROOT / "layers/shared/avatar_pipeline").is_dir()


@pytest.mark.parametrize(
    ("layer_arn", "runs"),
    [
        ("", True),  # no OpenTelemetry: the conditional layer is dropped
        ("arn:aws:lambda:us-east-1:615299751070:layer:AWSOpenTelemetryDistroPython:29", True),  # the runtime's own
        ("arn:aws:lambda:us-east-1:123456789012:layer:SomeoneElses:3", False),
    ],
    ids=["none", "adot", "foreign"],
)
def test_the_opentelemetry_layer_is_the_local_runtimes_own_and_no_other_layer_arn_runs(
    template: dict[str, Any], specs: dict[str, FunctionSpec], layer_arn: str, runs: bool
) -> None:
    # Given the stack's OpenTelemetryLayerArn
    resolver = Resolver(
        template,
        stack_name=STACK,
        region=REGION,
        account_id=ACCOUNT,
        parameters={"OpenTelemetryLayerArn": layer_arn},
        resource_values=RESOURCE_VALUES,
    )
    for spec in specs.values():
        # When the local stack picks the function's layers by the template's conditions
        # Then AWS's OpenTelemetry layer needs no directory (the local runtime stands in for it), another ARN can't run
        if runs:
            assert layer_content_dirs(template, spec, resolver) == ["layers/shared"]
        else:
            with pytest.raises(TemplateError, match="is not an AWS::Serverless::LayerVersion of this template"):
                layer_content_dirs(template, spec, resolver)


def test_function_by_id(template: dict[str, Any]) -> None:
    assert function_by_id(template, "PollerFunction").module == "poller_handler"
    with pytest.raises(TemplateError, match="MediaBucket"):
        function_by_id(template, "MediaBucket")


def test_webhook_is_routed_from_its_api(specs: dict[str, FunctionSpec]) -> None:
    source = specs["WebhookFunction"].event("ProviderCallback").api()
    assert (source.path, source.method, source.api) == ("/webhooks/{provider}", "POST", "WebhookApi")
    assert source.match("POST", "/webhooks/wavespeed") == {"provider": "wavespeed"}
    assert source.match("post", "/webhooks/wavespeed") == {"provider": "wavespeed"}
    assert source.match("GET", "/webhooks/wavespeed") is None
    assert source.match("POST", "/webhooks/wavespeed/extra") is None
    assert source.match("POST", "/webhooks/") is None


def test_greedy_path_parameters() -> None:
    source = EventSpec(name="P", type="Api", properties={"Path": "/files/{proxy+}", "Method": "any"}).api()
    assert source.api is None
    assert source.match("DELETE", "/files/a/b.txt") == {"proxy": "a/b.txt"}


def test_poller_runs_every_minute_by_default(template: dict[str, Any], specs: dict[str, FunctionSpec]) -> None:
    event = specs["PollerFunction"].event("PollTick")
    schedule = event.schedule(real_resolver(template))
    assert (schedule.expression, schedule.enabled, schedule.input) == ("rate(1 minute)", True, None)
    assert schedule.interval_seconds == 60.0
    faster = event.schedule(real_resolver(template, parameters={"PollSchedule": "rate(5 minutes)"}))
    assert faster.interval_seconds == 300.0
    with pytest.raises(TemplateError, match="Resolver"):
        event.schedule()  # the expression is !Ref PollSchedule: it needs parameters


def test_finalize_reads_the_task_stream(specs: dict[str, FunctionSpec]) -> None:
    stream = specs["FinalizeFunction"].event("TaskStream").dynamodb()
    assert stream.stream_source == "TaskTable"
    assert stream.starting_position == "TRIM_HORIZON"
    assert stream.batch_size == 1
    assert stream.maximum_retry_attempts == 3
    assert stream.bisect_batch_on_function_error is True
    assert stream.function_response_types == ["ReportBatchItemFailures"]
    assert stream.reports_batch_item_failures
    assert stream.on_failure_destination == {"Fn::GetAtt": ["FinalizeFailureQueue", "Arn"]}
    # Each FilterCriteria.Filters[].Pattern JSON string, parsed.
    raw = specs["FinalizeFunction"].event("TaskStream").properties["FilterCriteria"]["Filters"]
    assert stream.filter_patterns == [json.loads(entry["Pattern"]) for entry in raw]
    output_ready, ended = stream.filter_patterns
    assert output_ready == {"dynamodb": {"NewImage": {"status": {"S": ["OUTPUT_READY"]}}}}
    assert set(ended) == {"dynamodb"}  # DynamoDB mappings filter on the dynamodb key only
    assert ended["dynamodb"]["NewImage"]["status"] == {"S": ["COMPLETED", "FAILED", "REJECTED", "TIMED_OUT"]}
    assert ended["dynamodb"]["NewImage"]["notified_at"] == {"S": [{"exists": False}]}
    for pattern in stream.filter_patterns:
        check_pattern(pattern)


def test_dispatch_reads_the_task_stream_filtered_and_its_wakeup_queue(specs: dict[str, FunctionSpec]) -> None:
    stream = specs["DispatchFunction"].event("LineChanged").dynamodb()
    assert stream.stream_source == "TaskTable"
    assert stream.starting_position == "TRIM_HORIZON"
    assert (stream.batch_size, stream.maximum_batching_window_in_seconds) == (100, 0)
    assert stream.maximum_retry_attempts == 5
    assert stream.bisect_batch_on_function_error is True
    assert not stream.reports_batch_item_failures
    assert stream.on_failure_destination == {"Fn::GetAtt": ["AsyncFailureQueue", "Arn"]}
    joined, left = stream.filter_patterns
    assert joined == {"dynamodb": {"NewImage": {"status": {"S": ["QUEUED"]}}}}
    holding = ["SUBMITTING", "SUBMITTED", "PROCESSING"]
    assert left == {
        "dynamodb": {
            "OldImage": {"status": {"S": holding}},
            "NewImage": {"status": {"S": [{"anything-but": holding}]}},
        }
    }
    for pattern in stream.filter_patterns:
        check_pattern(pattern)
    wakeups = specs["DispatchFunction"].event("Wakeup").sqs()
    assert (wakeups.queue, wakeups.batch_size, wakeups.filter_patterns, wakeups.enabled) == (
        "AdmissionWakeupQueue",
        10,
        [],
        True,
    )


def test_submit_environment_resolves_to_plain_strings(template: dict[str, Any], specs: dict[str, FunctionSpec]) -> None:
    """Given submit pairs, checks and queues (it calls no provider), then its environment resolves to plain strings:
    the stack's settings and no secret's id."""
    environment = specs["SubmitFunction"].resolved_environment(real_resolver(template))
    assert environment == {
        "POWERTOOLS_SERVICE_NAME": "avatar-pipeline",
        "POWERTOOLS_METRICS_NAMESPACE": "AvatarPipeline",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "TASK_TABLE_NAME": RESOURCE_VALUES["TaskTable"],
        "MEDIA_BUCKET": MEDIA_BUCKET,
        "TOPIC_ARN": RESOURCE_VALUES["NotificationTopic"],
        "DEFAULT_PROVIDER": "wavespeed",
        "DEFAULT_MODEL": "kling-v1-std",
        "ALLOWED_MODELS": "kling-v1-std kling-v1-pro kling-v2-std kling-v2-pro omnihuman-1.5 infinitetalk"
        " infinitetalk-fast wan-2.2-s2v",
        "ALLOWED_PROVIDERS": "wavespeed cometapi fal",
        "WAVESPEED_BASE_URL": "https://api.wavespeed.ai",
        "COMETAPI_BASE_URL": "https://api.cometapi.com",
        "COMETAPI_PRICE_STD_PER_5S": "0.30",
        "COMETAPI_PRICE_PRO_PER_5S": "0.60",
        "ALLOW_FAILOVER": "true",
        "SPILL_OVER_AFTER_SECONDS": "600",
        "MAX_PAIR_WAIT_SECONDS": "1800",
        "MAX_PROVIDER_QUEUE_SECONDS": "21600",
        "MAX_RENDER_SECONDS": "3600",
        "WAVESPEED_SUBMISSIONS_PER_MINUTE": "5",
        "WAVESPEED_RENDERS_AT_ONCE": "3",
        "COMETAPI_SUBMISSIONS_PER_MINUTE": "5",
        "COMETAPI_RENDERS_AT_ONCE": "3",
        "FAL_BASE_URL": "https://queue.fal.run",
        "FAL_USER_ID": "",
        "FAL_RENDERS_AT_ONCE": "2",
        "RATE_WINDOW_SECONDS": "60",
        "DAILY_SPEND_LIMIT_USD": "0",
        "MAX_COST_PER_PAIR_USD": "0",
        "POLL_AFTER_SECONDS": "120",
        "DOWNLOAD_URL_EXPIRY_SECONDS": "86400",
        "OUTPUT_PATH_TEMPLATE": "outputs/{job}/{task}.mp4",
    }
    assert all(type(name) is str and type(value) is str for name, value in environment.items())


def test_parameter_overrides_reach_the_environment(template: dict[str, Any], specs: dict[str, FunctionSpec]) -> None:
    resolver = real_resolver(
        template,
        parameters={
            "DefaultModel": "kling-v1-pro",
            "WaveSpeedBaseUrl": "http://127.0.0.1:9100",
            "PollAfterSeconds": "30",
            "WaveSpeedRendersAtOnce": "10",
            "RateWindowSeconds": "3",
            "DailySpendLimitUsd": "12.50",
            "MaxRenderSeconds": "600",
        },
    )
    environment = specs["PollerFunction"].resolved_environment(resolver)
    assert environment["DEFAULT_MODEL"] == "kling-v1-pro"
    assert environment["WAVESPEED_BASE_URL"] == "http://127.0.0.1:9100"
    assert environment["POLL_AFTER_SECONDS"] == "30"
    assert environment["WAVESPEED_RENDERS_AT_ONCE"] == "10"
    assert environment["RATE_WINDOW_SECONDS"] == "3"
    assert environment["DAILY_SPEND_LIMIT_USD"] == "12.50"
    assert environment["MAX_RENDER_SECONDS"] == "600"
    assert specs["DispatchFunction"].resolved_environment(resolver)["WAVESPEED_RENDERS_AT_ONCE"] == "10"
    with pytest.raises(TemplateError, match="PollAfterSeconds"):
        specs["PollerFunction"].resolved_environment(real_resolver(template, parameters={"PollAfterSeconds": "4"}))
    for parameter, refused in (("WaveSpeedRendersAtOnce", "0"), ("DailySpendLimitUsd", "-1")):
        with pytest.raises(TemplateError, match=parameter):
            specs["DispatchFunction"].resolved_environment(real_resolver(template, parameters={parameter: refused}))


def test_only_dispatch_and_poller_get_the_webhook_url_and_the_wakeup_queue(
    template: dict[str, Any], specs: dict[str, FunctionSpec]
) -> None:
    resolver = real_resolver(template)
    environments = {name: spec.resolved_environment(resolver) for name, spec in specs.items()}
    for name in ("SubmitFunction", "WebhookFunction", "FinalizeFunction"):
        assert "WEBHOOK_BASE_URL" not in environments[name], name
        assert "WAKEUP_QUEUE_URL" not in environments[name], name
    url = f"https://{RESOURCE_VALUES['WebhookApi']}.execute-api.{REGION}.amazonaws.com/v1"
    for name in ("DispatchFunction", "PollerFunction"):
        assert environments[name]["WEBHOOK_BASE_URL"] == url, name
        assert environments[name]["WAKEUP_QUEUE_URL"] == RESOURCE_VALUES["AdmissionWakeupQueue"], name
    # The webhook's own environment never needs the API id (that would be a circular reference in AWS).
    without_api = {k: v for k, v in RESOURCE_VALUES.items() if k != "WebhookApi"}
    assert "WEBHOOK_BASE_URL" not in specs["WebhookFunction"].resolved_environment(
        real_resolver(template, resource_values=without_api)
    )
    with pytest.raises(TemplateError, match="WebhookApi"):
        specs["DispatchFunction"].resolved_environment(real_resolver(template, resource_values=without_api))


def test_only_the_functions_that_sign_links_are_told_the_link_signers_secret(
    template: dict[str, Any], specs: dict[str, FunctionSpec]
) -> None:
    """Given links are signed by dispatch (inputs), finalize (downloads) and the poller (both, as fallback), then only
    they get the link signer's secret."""
    resolver = real_resolver(template)
    told = {name for name, spec in specs.items() if "LINK_SIGNER_SECRET_ID" in spec.resolved_environment(resolver)}
    assert told == {"DispatchFunction", "FinalizeFunction", "PollerFunction"}
    for name in told:
        assert (
            specs[name].resolved_environment(resolver)["LINK_SIGNER_SECRET_ID"] == RESOURCE_VALUES["LinkSignerSecret"]
        )


def test_each_function_is_told_the_ids_of_the_secrets_its_work_needs_only(
    template: dict[str, Any], specs: dict[str, FunctionSpec]
) -> None:
    """Given secrets are told per function (none in Globals), when each function's environment is resolved as the
    local stack resolves it, then its *_SECRET_ID variables are exactly its secrets' ARNs: the webhook gets WaveSpeed's
    webhook secret, never its API key, and submit and finalize no provider secret and no callback key."""
    resolver = real_resolver(template)
    assert set(SECRET_IDS) == set(specs)
    for name, spec in specs.items():
        told = {k: v for k, v in spec.resolved_environment(resolver).items() if k.endswith("_SECRET_ID")}
        assert told == {variable: RESOURCE_VALUES[secret] for variable, secret in SECRET_IDS[name].items()}, name
    webhook = specs["WebhookFunction"].resolved_environment(resolver)
    assert RESOURCE_VALUES["WaveSpeedSecret"] not in webhook.values()


def test_the_webhook_is_told_its_idempotency_table(template: dict[str, Any], specs: dict[str, FunctionSpec]) -> None:
    environment = specs["WebhookFunction"].resolved_environment(real_resolver(template))
    assert environment["IDEMPOTENCY_TABLE_NAME"] == RESOURCE_VALUES["IdempotencyTable"]


def test_whole_function_properties_resolve(template: dict[str, Any], specs: dict[str, FunctionSpec]) -> None:
    """Every intrinsic in the functions' properties (policies included) resolves with the stack's values."""
    log_groups = {f"{name[: -len('Function')]}LogGroup": f"/aws/lambda/{name}" for name in specs}
    others = {"SharedLayer": f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:shared:1", "MediaBucket": MEDIA_BUCKET}
    resolver = real_resolver(template, resource_values={**RESOURCE_VALUES, **log_groups, **others})
    finalize = resolver.resolve(specs["FinalizeFunction"].properties)
    assert finalize["FunctionName"] == f"{STACK}-finalize"
    stream_policy = next(p for p in finalize["Policies"] if "DynamoDBStreamReadPolicy" in p)
    assert stream_policy["DynamoDBStreamReadPolicy"]["StreamName"] == "2026-01-01T00:00:00.000"
    statements = {s["Sid"]: s for s in next(p for p in finalize["Policies"] if "Statement" in p)["Statement"]}
    assert statements["ReadOutputs"]["Resource"] == f"arn:aws:s3:::{MEDIA_BUCKET}/outputs/*"
    assert statements["WriteOutputsMultipart"]["Resource"] == f"arn:aws:s3:::{MEDIA_BUCKET}/outputs/*"
    assert finalize["Events"]["TaskStream"]["Properties"]["Stream"] == ATTRIBUTES[("TaskTable", "StreamArn")]
    dispatch = resolver.resolve(specs["DispatchFunction"].properties)
    assert dispatch["FunctionName"] == f"{STACK}-dispatch"
    assert dispatch["Events"]["LineChanged"]["Properties"]["Stream"] == ATTRIBUTES[("TaskTable", "StreamArn")]
    assert dispatch["Events"]["Wakeup"]["Properties"]["Queue"] == ATTRIBUTES[("AdmissionWakeupQueue", "Arn")]
    sqs_policies = [p for p in dispatch["Policies"] if "SQSSendMessagePolicy" in p or "SQSPollerPolicy" in p]
    assert [next(iter(p.values()))["QueueName"] for p in sqs_policies] == ["avatar-local-AdmissionWakeupQueue"] * 2
    secrets = [
        p["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]
        for p in dispatch["Policies"]
        if len(p) == 1 and "AWSSecretsManagerGetSecretValuePolicy" in p
    ]
    assert secrets == [
        RESOURCE_VALUES["WaveSpeedSecret"],
        RESOURCE_VALUES["CometApiSecret"],
        RESOURCE_VALUES["FalSecret"],
        RESOURCE_VALUES["CallbackKeySecret"],
        RESOURCE_VALUES["LinkSignerSecret"],
    ]
    webhook = resolver.resolve(specs["WebhookFunction"].properties)
    assert [
        p["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]
        for p in webhook["Policies"]
        if "AWSSecretsManagerGetSecretValuePolicy" in p
    ] == [
        RESOURCE_VALUES["WaveSpeedWebhookSecret"],
        RESOURCE_VALUES["CometApiSecret"],
        RESOURCE_VALUES["CallbackKeySecret"],
    ]
    (webhook_statements,) = [p["Statement"] for p in webhook["Policies"] if "Statement" in p]
    assert [(s["Sid"], s["Resource"]) for s in webhook_statements] == [
        ("ReadAndWriteTasks", ATTRIBUTES[("TaskTable", "Arn")]),
        ("RememberDeliveries", ATTRIBUTES[("IdempotencyTable", "Arn")]),
    ]
    submit = resolver.resolve(specs["SubmitFunction"].properties)
    # Submit names the bucket by the expression the bucket's name is: all of them resolve to the bucket's name.
    bucket = resolver.resolve(template["Resources"]["MediaBucket"]["Properties"])
    assert bucket["BucketName"] == MEDIA_BUCKET
    (notification,) = bucket["NotificationConfiguration"]["LambdaConfigurations"]
    assert notification["Function"] == ATTRIBUTES[("SubmitFunction", "Arn")]
    assert submit["Environment"]["Variables"]["MEDIA_BUCKET"] == MEDIA_BUCKET
    (submit_statements,) = [p["Statement"] for p in submit["Policies"] if "Statement" in p]
    assert {s["Sid"]: (s["Action"], s["Resource"]) for s in submit_statements} == {
        "ReadInbox": ("s3:GetObject", f"arn:aws:s3:::{MEDIA_BUCKET}/inbox/*"),
        "MissingKeysAnswerNotFound": ("s3:ListBucket", f"arn:aws:s3:::{MEDIA_BUCKET}"),
    }
    permission = resolver.resolve(template["Resources"]["SubmitFunctionInboxUploadPermission"]["Properties"])
    assert (permission["FunctionName"], permission["SourceArn"], permission["SourceAccount"]) == (
        f"{STACK}-submit",
        f"arn:aws:s3:::{MEDIA_BUCKET}",
        ACCOUNT,
    )
    assert not any("AWSSecretsManagerGetSecretValuePolicy" in p for p in submit["Policies"])
    assert (
        submit["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"]
        == ATTRIBUTES[("AsyncFailureQueue", "Arn")]
    )
    for spec in specs.values():
        resolver.resolve(spec.properties)


def test_template_conditions(template: dict[str, Any]) -> None:
    api = template["Resources"]["WebhookApi"]["Properties"]
    default = real_resolver(template)
    assert default.condition("HasNotificationEmail") is False
    assert default.condition("HasApiAccessLogging") is False
    assert "AccessLogSetting" not in default.resolve(api)  # !If [..., !Ref AWS::NoValue] drops the key
    # No web ACL unless a per-address limit is set; the stage's throttle is the parameters' defaults.
    assert default.condition("HasWebhookFirewall") is False
    assert default.resolve(api)["MethodSettings"][0]["ThrottlingRateLimit"] == "10"
    assert default.resolve(api)["MethodSettings"][0]["ThrottlingBurstLimit"] == "40"
    assert real_resolver(template, parameters={"WebhookRateLimitPerIp": "500"}).condition("HasWebhookFirewall") is True

    log_group_arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/apigateway/{STACK}-webhook-api"
    logging = real_resolver(
        template,
        parameters={"ApiAccessLogging": "true", "NotificationEmail": "ops@example.com"},
        attributes={**ATTRIBUTES, ("WebhookApiAccessLogGroup", "Arn"): log_group_arn},
    )
    assert logging.condition("HasNotificationEmail") is True
    assert logging.resolve(api)["AccessLogSetting"]["DestinationArn"] == log_group_arn
    with pytest.raises(TemplateError, match="AllowedPattern"):
        real_resolver(template, parameters={"NotificationEmail": "not an email"}).condition("HasNotificationEmail")
    with pytest.raises(TemplateError, match="AllowedValues"):
        real_resolver(template, parameters={"ApiAccessLogging": "yes"}).condition("HasApiAccessLogging")
