"""template.yaml: the wiring other code depends on, the security settings, and the sample events in events/."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from cfnlint.decode import decode_str
from support.aws import SECRET_IDS
from support.fakes import CALLBACK_KEY, callback_query

from avatar_local.twin.event_filter import check_pattern, matches_any
from avatar_local.twin.sam_transform import transform
from avatar_local.twin.template import load_template
from avatar_pipeline.adapters.safe_download import OutputUrlPolicy
from avatar_pipeline.config import Settings, default_output_hosts
from avatar_pipeline.domain.callback_tokens import CallbackTokens
from avatar_pipeline.domain.models import HOLDING_STATUSES, TaskStatus
from avatar_pipeline.providers.registry import PROVIDERS

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
# The media bucket's name as the bucket computes it: the MediaBucketName parameter, else
# <account>-avatar-media-<last group of the stack id's UUID>. SubmitFunction, which the bucket's notification names,
# uses this expression instead of a reference back to the bucket (a circular dependency).
BUCKET_NAME = {
    "Fn::If": [
        "HasMediaBucketName",
        {"Ref": "MediaBucketName"},
        {
            "Fn::Join": [
                "-",
                [
                    {"Ref": "AWS::AccountId"},
                    "avatar-media",
                    {
                        "Fn::Select": [
                            4,
                            {"Fn::Split": ["-", {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}]},
                        ]
                    },
                ],
            ]
        },
    ]
}
BUCKET_REF = {"Ref": "MediaBucket"}
WEBHOOK_BASE_URL = {"Fn::Sub": "https://${WebhookApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/v1"}

FUNCTIONS = {
    "SubmitFunction": ("functions/submit/", "submit_handler.lambda_handler"),
    "DispatchFunction": ("functions/dispatch/", "dispatch_handler.lambda_handler"),
    "WebhookFunction": ("functions/webhook/", "webhook_handler.lambda_handler"),
    "PollerFunction": ("functions/poller/", "poller_handler.lambda_handler"),
    "FinalizeFunction": ("functions/finalize/", "finalize_handler.lambda_handler"),
    "EventsFunction": ("functions/events/", "events_handler.lambda_handler"),
}


@pytest.fixture(scope="module")
def template_path() -> Path:
    return ROOT / "template.yaml"


@pytest.fixture(scope="module")
def template(template_path: Path) -> dict[str, Any]:
    # cfn-lint's decoder understands the short-form tags (!Ref, !Sub, !GetAtt, ...) and expands them.
    decoded, problems = decode_str(template_path.read_text())
    assert not problems, problems
    return decoded


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def props(resources: dict[str, Any], name: str) -> dict[str, Any]:
    return resources[name]["Properties"]


def event_of(resources: dict[str, Any], function: str, event_type: str) -> dict[str, Any]:
    events = [e for e in props(resources, function)["Events"].values() if e["Type"] == event_type]
    assert len(events) == 1, f"{function} should have exactly one {event_type} event"
    return events[0]["Properties"]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def references(node: Any, logical_id: str) -> bool:
    """Whether anything under node points at logical_id (Ref, GetAtt or a ${...} inside Sub)."""
    for item in walk(node):
        if not isinstance(item, dict):
            continue
        if item.get("Ref") == logical_id:
            return True
        get_att = item.get("Fn::GetAtt")
        if isinstance(get_att, list) and get_att and get_att[0] == logical_id:
            return True
        sub = item.get("Fn::Sub")
        text = sub[0] if isinstance(sub, list) else sub
        if isinstance(text, str) and ("${" + logical_id + "}" in text or "${" + logical_id + "." in text):
            return True
    return False


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def inline_statements(resources: dict[str, Any], function: str) -> list[dict[str, Any]]:
    """The statements of the function's inline policies (its Policies entries that are a Statement)."""
    return [statement for policy in props(resources, function)["Policies"] for statement in policy.get("Statement", [])]


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


# --------------------------------------------------------------------------------------------------- lint


def test_cfn_lint_reports_nothing() -> None:
    """Given the template, when cfn-lint runs on it with the Serverless Rules (cfn-lint-serverless) added to its own,
    then it exits 0 and prints nothing at all."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            "template.yaml",
            "-a",
            "cfn_lint_serverless.rules",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""


def test_the_serverless_rules_really_run(tmp_path: Path) -> None:
    """Given a queue without a redrive policy, when cfn-lint runs as the template test runs it, then the Serverless
    Rules report it (so a clean template.yaml means they passed, not that they were never loaded)."""
    (tmp_path / "t.yaml").write_text(
        "AWSTemplateFormatVersion: '2010-09-09'\nResources:\n  Queue:\n    Type: AWS::SQS::Queue\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            "t.yaml",
            "-a",
            "cfn_lint_serverless.rules",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "ES6000" in result.stdout, result.stdout + result.stderr


def test_template_wide_lint_exceptions_stay_few(template: dict[str, Any]) -> None:
    """Given checks ignored for the whole template also stop guarding what is added later, then only the two whose
    reasons are written beside them are, and what they would have guarded is checked here instead (log groups with
    retention for every function; an alarm on the poller not running)."""
    assert template["Metadata"]["cfn-lint"]["config"]["ignore_checks"] == ["WS1004", "ES4000"]


def test_template_is_a_sam_template(template: dict[str, Any]) -> None:
    """Given the template, then it is transformed by SAM and explains itself."""
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    assert template["Description"].strip()


# --------------------------------------------------------------------------------------------------- functions


@pytest.mark.parametrize(("function", "expected"), FUNCTIONS.items())
def test_function_code_location_and_handler(
    resources: dict[str, Any], function: str, expected: tuple[str, str]
) -> None:
    """Given each function, then its CodeUri and Handler are the ones the handler modules are written for."""
    code_uri, handler = expected
    assert resources[function]["Type"] == "AWS::Serverless::Function"
    assert props(resources, function)["CodeUri"] == code_uri
    assert props(resources, function)["Handler"] == handler


@pytest.mark.parametrize(("function", "expected"), FUNCTIONS.items())
def test_handler_module_exists_once_written(function: str, expected: tuple[str, str]) -> None:
    """Given a function's CodeUri holds Python code, then the module its Handler names is among it."""
    code_uri, handler = expected
    code_dir = ROOT / code_uri
    if not any(code_dir.glob("*.py")):
        pytest.skip(f"{code_uri} has no code yet")
    module = handler.rsplit(".", 1)[0]
    assert (code_dir / f"{module}.py").is_file()


def test_opentelemetry_is_only_there_when_its_layer_is_given(template: dict[str, Any]) -> None:
    """Given OpenTelemetryLayerArn, then every function gets the ADOT layer after the shared one, its wrapper, httpx
    traced (the provider calls) and the Application Signals policy; left empty, none of it (Lambda's traces only)."""
    glob = template["Globals"]["Function"]
    on_if = {"Ref": "AWS::NoValue"}
    # (first: a later layer's files win, and the shared layer's are the ones the pipeline is tested with)
    assert glob["Layers"] == [
        {"Fn::If": ["HasOpenTelemetry", {"Ref": "OpenTelemetryLayerArn"}, on_if]},
        {"Ref": "SharedLayer"},
    ]
    env = glob["Environment"]["Variables"]
    assert env["AWS_LAMBDA_EXEC_WRAPPER"] == {"Fn::If": ["HasOpenTelemetry", "/opt/otel-instrument", on_if]}
    condition, joined, otherwise = env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"]["Fn::If"]
    separator, disabled = joined["Fn::Join"]
    # bare commas: the layer's wrapper script tests the variable unquoted, so a space would break its test
    assert (condition, separator, otherwise) == ("HasOpenTelemetry", ",", on_if)
    assert all(name and not any(c.isspace() for c in name) for name in disabled)
    assert "httpx" not in disabled and "botocore" not in disabled
    assert {"urllib3", "logging", "requests", "threading"} <= set(disabled)
    assert template["Conditions"]["HasOpenTelemetry"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "OpenTelemetryLayerArn"}, ""]}]
    }
    assert template["Parameters"]["OpenTelemetryLayerArn"]["Default"] == ""
    for function in FUNCTIONS:
        policies = template["Resources"][function]["Properties"]["Policies"]
        conditional = [p for p in policies if isinstance(p, dict) and "Fn::If" in p]
        assert len(conditional) == 1, function
        condition, policy, otherwise = conditional[0]["Fn::If"]
        assert condition == "HasOpenTelemetry" and otherwise == on_if
        assert policy["Fn::Sub"].endswith(":iam::aws:policy/CloudWatchLambdaApplicationSignalsExecutionRolePolicy")


def test_handler_modules_have_unique_names() -> None:
    """Given all handlers share one import path in tests, then no two handler modules share a name."""
    modules = [handler.rsplit(".", 1)[0] for _, handler in FUNCTIONS.values()]
    assert len(set(modules)) == len(modules)


def test_globals_runtime_tracing_layer_and_environment(template: dict[str, Any]) -> None:
    """Given the Globals, then every function runs on arm64 Python 3.13 with tracing, the layer and the settings."""
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] == "python3.13"
    assert glob["Architectures"] == ["arm64"]
    assert glob["Tracing"] == "Active"
    assert glob["Layers"][-1] == {"Ref": "SharedLayer"}
    env = glob["Environment"]["Variables"]
    assert env["TASK_TABLE_NAME"] == {"Ref": "TaskTable"}
    # Each function is told the bucket itself: submit by the computed name (the bucket's notification names submit,
    # so a reference back would be circular), every other function by a reference to the bucket.
    assert "MEDIA_BUCKET" not in env
    # (The events function touches no object: it is told no bucket.)
    for function in set(FUNCTIONS) - {"EventsFunction"}:
        expected = BUCKET_NAME if function == "SubmitFunction" else BUCKET_REF
        assert template["Resources"][function]["Properties"]["Environment"]["Variables"]["MEDIA_BUCKET"] == expected
    assert env["TOPIC_ARN"] == {"Ref": "NotificationTopic"}
    # No secret is named to every function: each is told the ones its work needs (test_each_function_is_told_...).
    assert not [name for name in env if name.endswith("_SECRET_ID")]
    assert "WEBHOOK_BASE_URL" not in env, "the webhook function must not get it (circular dependency)"
    for name, parameter in {
        "DEFAULT_PROVIDER": "DefaultProvider",
        "DEFAULT_MODEL": "DefaultModel",
        "ALLOWED_MODELS": "AllowedModels",
        "ALLOWED_PROVIDERS": "AllowedProviders",
        "WAVESPEED_BASE_URL": "WaveSpeedBaseUrl",
        "MAX_PAIR_WAIT_SECONDS": "MaxPairWaitSeconds",
        "MAX_PROVIDER_QUEUE_SECONDS": "MaxProviderQueueSeconds",
        "MAX_RENDER_SECONDS": "MaxRenderSeconds",
        "WAVESPEED_SUBMISSIONS_PER_MINUTE": "WaveSpeedSubmissionsPerMinute",
        "WAVESPEED_RENDERS_AT_ONCE": "WaveSpeedRendersAtOnce",
        "COMETAPI_SUBMISSIONS_PER_MINUTE": "CometApiSubmissionsPerMinute",
        "COMETAPI_RENDERS_AT_ONCE": "CometApiRendersAtOnce",
        "RATE_WINDOW_SECONDS": "RateWindowSeconds",
        "DAILY_SPEND_LIMIT_USD": "DailySpendLimitUsd",
        "MAX_COST_PER_PAIR_USD": "MaxCostPerPairUsd",
        "POLL_AFTER_SECONDS": "PollAfterSeconds",
        "DOWNLOAD_URL_EXPIRY_SECONDS": "DownloadUrlExpirySeconds",
    }.items():
        assert env[name] == {"Ref": parameter}, name
    # The one clock for a whole task is gone: each stage has its own.
    assert "MAX_TASK_AGE_SECONDS" not in env
    # Only the functions that schedule the dispatcher's wake-ups are told where.
    assert "WAKEUP_QUEUE_URL" not in env


# The stage clocks, the quotas and the spend limit: each parameter's default is the setting's own default, and its
# lower bound is what the setting accepts.
# Parameter → (None for the pipeline's own settings, else the provider whose settings hold it; the field).
QUOTA_AND_CLOCK_PARAMETERS: dict[str, tuple[str | None, str]] = {
    "MaxProviderQueueSeconds": (None, "max_provider_queue_seconds"),
    "MaxRenderSeconds": (None, "max_render_seconds"),
    "WaveSpeedSubmissionsPerMinute": ("wavespeed", "submissions_per_minute"),
    "WaveSpeedRendersAtOnce": ("wavespeed", "renders_at_once"),
    "CometApiSubmissionsPerMinute": ("cometapi", "submissions_per_minute"),
    "CometApiRendersAtOnce": ("cometapi", "renders_at_once"),
    "RateWindowSeconds": (None, "rate_window_seconds"),
    "DailySpendLimitUsd": (None, "daily_spend_limit_usd"),
}


def settings_with(name: str, value: str) -> Settings:
    """The settings a function gets with this one variable set (and the stack's required ones)."""
    required = {"TASK_TABLE_NAME": "t", "MEDIA_BUCKET": "b", "TOPIC_ARN": "arn:t"}
    return Settings.from_env({**required, name: value})


@pytest.mark.parametrize("parameter", QUOTA_AND_CLOCK_PARAMETERS)
def test_quota_and_clock_parameters_default_to_the_settings_defaults(template: dict[str, Any], parameter: str) -> None:
    provider, setting = QUOTA_AND_CLOCK_PARAMETERS[parameter]
    declared = template["Parameters"][parameter]
    model = Settings if provider is None else PROVIDERS[provider].settings
    field = model.model_fields[setting]
    assert declared["Description"].strip()
    assert field.alias is not None
    settings = settings_with(field.alias, str(declared["Default"]))
    assert getattr(settings if provider is None else settings.provider(provider), setting) == field.default
    if "MinValue" in declared:
        settings_with(field.alias, str(declared["MinValue"]))  # the lowest value the stack takes is valid


def test_the_task_age_limit_is_gone_and_every_parameter_is_in_one_console_group(template: dict[str, Any]) -> None:
    """Given MaxTaskAgeSeconds was replaced by a clock per stage, then it is no parameter any more; and each
    parameter appears in exactly one group of the console's parameter form (the new ones included)."""
    assert "MaxTaskAgeSeconds" not in template["Parameters"]
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"])
    timing = next(group for group in groups if group["Label"]["default"] == "Timing")["Parameters"]
    assert {"MaxProviderQueueSeconds", "MaxRenderSeconds"} <= set(timing)


def test_daily_spend_limit_takes_a_plain_amount_and_zero_means_none(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["DailySpendLimitUsd"]
    assert parameter["Default"] == "0"
    for accepted in ("0", "25", "12.50"):
        assert re.fullmatch(parameter["AllowedPattern"], accepted), accepted
        settings_with("DAILY_SPEND_LIMIT_USD", accepted)
    for refused in ("", "-1", "1e3", "$5", "12."):
        assert not re.fullmatch(parameter["AllowedPattern"], refused), refused


def test_only_finalize_gets_the_allowed_output_hosts_whose_default_is_the_provider_cdns(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    """Given only finalize downloads what providers point at, then it alone gets ALLOWED_OUTPUT_HOSTS, from the
    AllowedOutputHosts parameter, whose default is the settings' default and accepts the local stack's origins."""
    assert props(resources, "FinalizeFunction")["Environment"]["Variables"]["ALLOWED_OUTPUT_HOSTS"] == {
        "Ref": "AllowedOutputHosts"
    }
    assert "ALLOWED_OUTPUT_HOSTS" not in template["Globals"]["Function"]["Environment"]["Variables"]
    for function in set(FUNCTIONS) - {"FinalizeFunction"}:
        assert "ALLOWED_OUTPUT_HOSTS" not in props(resources, function).get("Environment", {}).get("Variables", {})
    parameter = template["Parameters"]["AllowedOutputHosts"]
    assert tuple(parameter["Default"].split(",")) == default_output_hosts()
    OutputUrlPolicy.parse(parameter["Default"].split(","))  # every default entry is well-formed
    for accepted in (parameter["Default"], "http://127.0.0.1:8123,http://127.0.0.1:8124", "*.a.test, b.test"):
        assert re.fullmatch(parameter["AllowedPattern"], accepted), accepted
    for refused in ("", "*.a.test,", "https://a.test/path?x=1"):
        assert not re.fullmatch(parameter["AllowedPattern"], refused), refused


def test_submit_listens_to_every_object_created_under_inbox(resources: dict[str, Any]) -> None:
    """Given multipart uploads arrive as CompleteMultipartUpload, then the media bucket notifies Submit of all
    ObjectCreated events (not Put only), filtered to the inbox/ prefix; S3 may invoke Submit for this bucket only,
    and the permission exists before the notification is set (S3 checks it then)."""
    bucket = resources["MediaBucket"]
    assert bucket["Properties"]["NotificationConfiguration"] == {
        "LambdaConfigurations": [
            {
                "Event": "s3:ObjectCreated:*",
                "Function": {"Fn::GetAtt": ["SubmitFunction", "Arn"]},
                "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": "inbox/"}]}},
            }
        ]
    }
    depends_on = bucket["DependsOn"] if isinstance(bucket["DependsOn"], list) else [bucket["DependsOn"]]
    assert "SubmitFunctionInboxUploadPermission" in depends_on
    permission = resources["SubmitFunctionInboxUploadPermission"]
    assert permission["Type"] == "AWS::Lambda::Permission"
    assert props(resources, "SubmitFunctionInboxUploadPermission") == {
        "Action": "lambda:InvokeFunction",
        "FunctionName": {"Ref": "SubmitFunction"},
        "Principal": "s3.amazonaws.com",
        "SourceArn": {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}", {"Bucket": BUCKET_NAME}]},
        "SourceAccount": {"Ref": "AWS::AccountId"},
    }
    # No SAM S3 event besides: its permission would let any bucket of the account invoke Submit.
    assert not [e for e in props(resources, "SubmitFunction").get("Events", {}).values() if e["Type"] == "S3"]


def test_async_functions_send_failures_to_the_failure_queue(resources: dict[str, Any]) -> None:
    """Given Submit and Poller are invoked asynchronously, then failed invocations land in AsyncFailureQueue,
    Submit retrying twice and the poller not at all (its next tick is the retry)."""
    for function, retries in (("SubmitFunction", 2), ("PollerFunction", 0)):
        config = props(resources, function)["EventInvokeConfig"]
        assert config["MaximumRetryAttempts"] == retries
        assert config["DestinationConfig"]["OnFailure"] == {
            "Type": "SQS",
            "Destination": {"Fn::GetAtt": ["AsyncFailureQueue", "Arn"]},
        }


def test_webhook_route(resources: dict[str, Any]) -> None:
    """Given providers call back per provider name, then the webhook is POST /webhooks/{provider} on WebhookApi."""
    event = event_of(resources, "WebhookFunction", "Api")
    assert event["RestApiId"] == {"Ref": "WebhookApi"}
    assert event["Path"] == "/webhooks/{provider}"
    assert event["Method"].upper() == "POST"
    assert props(resources, "WebhookApi")["StageName"] == "v1"


def test_webhook_stage_is_untraced_and_throttled_by_its_parameters(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    """Given a callback's URL carries its task's token, then the stage does not trace (a stage trace records the full
    URL; the webhook function's own active tracing starts each trace instead), and every route is throttled at the
    WebhookThrottleRate / WebhookThrottleBurst parameters, whose defaults stay far below what a flood of forged
    callbacks would need to cost much, yet above a batch of real ones."""
    api = props(resources, "WebhookApi")
    assert api["TracingEnabled"] is False
    assert props(resources, "WebhookFunction").get("Tracing", template["Globals"]["Function"]["Tracing"]) == "Active"
    assert api["MethodSettings"] == [
        {
            "ResourcePath": "/*",
            "HttpMethod": "*",
            "MetricsEnabled": True,
            "ThrottlingRateLimit": {"Ref": "WebhookThrottleRate"},
            "ThrottlingBurstLimit": {"Ref": "WebhookThrottleBurst"},
        }
    ]
    rate, burst = template["Parameters"]["WebhookThrottleRate"], template["Parameters"]["WebhookThrottleBurst"]
    assert (rate["Type"], burst["Type"]) == ("Number", "Number")
    assert 1 <= rate["Default"] <= 50
    assert rate["Default"] <= burst["Default"] <= 200
    # A zero limit would answer every callback 429.
    assert rate["MinValue"] >= 1
    assert burst["MinValue"] >= 1


def test_the_webhook_firewall_exists_only_with_a_per_address_limit(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    """Given WebhookRateLimitPerIp (0, the default: no firewall), then the WAF web ACL and its association exist only
    under HasWebhookFirewall; the ACL lets everything through but blocks a source address over the limit in 5
    minutes, keeps no sampled requests (they would hold callback URLs, tokens included), and is associated with the
    WebhookApi's own stage."""
    parameter = template["Parameters"]["WebhookRateLimitPerIp"]
    assert (parameter["Type"], parameter["Default"]) == ("String", "0")
    # AWS WAF refuses a limit under 10: the parameter refuses it before anything is deployed.
    pattern = re.compile(parameter["AllowedPattern"])
    assert [value for value in ("0", "10", "500", "2000000000") if not pattern.fullmatch(value)] == []
    assert [value for value in ("1", "9", "00", "010", "0.0", "-5", "") if pattern.fullmatch(value)] == []
    assert template["Conditions"]["HasWebhookFirewall"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "WebhookRateLimitPerIp"}, "0"]}]
    }
    firewall_resources = {
        name: resource["Type"] for name, resource in resources.items() if resource["Type"].startswith("AWS::WAFv2::")
    }
    assert firewall_resources == {
        "WebhookFirewall": "AWS::WAFv2::WebACL",
        "WebhookFirewallAssociation": "AWS::WAFv2::WebACLAssociation",
    }
    for name in firewall_resources:
        assert resources[name]["Condition"] == "HasWebhookFirewall", name
    # Nothing outside the condition refers to them (it would not deploy without the firewall).
    for name, resource in resources.items():
        if name not in firewall_resources:
            assert not references(resource, "WebhookFirewall"), name

    acl = props(resources, "WebhookFirewall")
    assert acl["Scope"] == "REGIONAL"
    assert acl["DefaultAction"] == {"Allow": {}}
    (rule,) = acl["Rules"]
    assert rule["Action"] == {"Block": {}}
    assert rule["Statement"] == {
        "RateBasedStatement": {
            "AggregateKeyType": "IP",
            "EvaluationWindowSec": 300,
            "Limit": {"Ref": "WebhookRateLimitPerIp"},
        }
    }
    for visibility in (acl["VisibilityConfig"], rule["VisibilityConfig"]):
        assert visibility["SampledRequestsEnabled"] is False
        assert visibility["CloudWatchMetricsEnabled"] is True

    association = props(resources, "WebhookFirewallAssociation")
    assert association["WebACLArn"] == {"Fn::GetAtt": ["WebhookFirewall", "Arn"]}
    assert association["ResourceArn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}::/restapis/${WebhookApi}/stages/${WebhookApi.Stage}"
    }


def test_api_function_does_not_reference_its_own_api(resources: dict[str, Any]) -> None:
    """Given the API's integration references the function, then the function referencing the API back would be
    a circular dependency (cfn-lint cannot see it before the SAM transform): only the functions that submit to a
    provider (the dispatcher, and the poller that dispatches too) get the URL; submit only queues."""
    webhook = {k: v for k, v in props(resources, "WebhookFunction").items() if k != "Events"}
    assert not references(webhook, "WebhookApi")
    for name in ("DispatchFunction", "PollerFunction"):
        assert props(resources, name)["Environment"]["Variables"]["WEBHOOK_BASE_URL"] == WEBHOOK_BASE_URL
    for name in set(FUNCTIONS) - {"DispatchFunction", "PollerFunction"}:
        assert "WEBHOOK_BASE_URL" not in props(resources, name).get("Environment", {}).get("Variables", {}), name


def test_poller_runs_on_the_schedule_parameter(resources: dict[str, Any]) -> None:
    """Given the poller is the webhook's fallback, then it runs on the PollSchedule expression."""
    event = event_of(resources, "PollerFunction", "Schedule")
    assert event["Schedule"] == {"Ref": "PollSchedule"}


def test_finalize_reads_the_task_stream_with_partial_failures(resources: dict[str, Any]) -> None:
    """Given finalize is driven by the task table's stream, then it reports per-record failures, bisects bad
    batches, and hands records it gave up on to FinalizeFailureQueue."""
    function = props(resources, "FinalizeFunction")
    assert function["Timeout"] == 900
    event = event_of(resources, "FinalizeFunction", "DynamoDB")
    assert event["Stream"] == {"Fn::GetAtt": ["TaskTable", "StreamArn"]}
    assert event["StartingPosition"] == "TRIM_HORIZON"
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["BisectBatchOnFunctionError"] is True
    assert event["MaximumRetryAttempts"] == 3
    assert event["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["FinalizeFailureQueue", "Arn"]}
    patterns = [json.loads(f["Pattern"]) for f in event["FilterCriteria"]["Filters"]]
    assert any("OUTPUT_READY" in json.dumps(p) for p in patterns)


# ------------------------------------------------------------------------ the stream filter, evaluated


def _leaf_matches(rule: Any, present: bool, value: Any) -> bool:
    # Event filtering matches leaf nodes only: a map (like {"S": "..."}) is never a leaf.
    is_leaf = present and not isinstance(value, dict | list)
    if isinstance(rule, dict) and "exists" in rule:
        return is_leaf is rule["exists"]
    return is_leaf and value == rule


def pattern_matches(pattern: dict[str, Any], event: Any) -> bool:
    """The subset of Lambda event-filter semantics the template uses: exact strings and exists on leaves."""
    for key, rule in pattern.items():
        present = isinstance(event, dict) and key in event
        value = event[key] if present else None
        if isinstance(rule, dict):
            if not pattern_matches(rule, value if isinstance(value, dict) else {}):
                return False
        elif not any(_leaf_matches(r, present, value) for r in rule):
            return False
    return True


@pytest.fixture(scope="module")
def finalize_patterns(resources: dict[str, Any]) -> list[dict[str, Any]]:
    event = event_of(resources, "FinalizeFunction", "DynamoDB")
    return [json.loads(f["Pattern"]) for f in event["FilterCriteria"]["Filters"]]


def stream_record(status: str, *, notified: bool = False, event_name: str = "MODIFY") -> dict[str, Any]:
    record = load_event("finalize_output_ready.json")["Records"][0]
    record["eventName"] = event_name
    record["dynamodb"]["NewImage"]["status"] = {"S": status}
    if notified:
        record["dynamodb"]["NewImage"]["notified_at"] = {"S": "2026-01-01T00:01:00+00:00"}
    if event_name == "REMOVE":
        del record["dynamodb"]["NewImage"]
    return record


def test_filter_passes_output_ready_and_unannounced_endings(finalize_patterns: list[dict[str, Any]]) -> None:
    """Given stream records, then finalize receives OUTPUT_READY and ended tasks not yet announced."""
    assert any(pattern_matches(p, load_event("finalize_output_ready.json")["Records"][0]) for p in finalize_patterns)
    for status in ("OUTPUT_READY", "COMPLETED", "FAILED", "REJECTED", "TIMED_OUT"):
        assert any(pattern_matches(p, stream_record(status)) for p in finalize_patterns), status
    assert any(pattern_matches(p, stream_record("REJECTED", event_name="INSERT")) for p in finalize_patterns)


def test_filter_drops_announced_in_flight_and_removed_tasks(finalize_patterns: list[dict[str, Any]]) -> None:
    """Given stream records of announced, still-running or expired tasks, then finalize is not invoked for them."""
    for status in ("COMPLETED", "FAILED", "REJECTED", "TIMED_OUT"):
        assert not any(pattern_matches(p, stream_record(status, notified=True)) for p in finalize_patterns), status
    for status in ("WAITING_FOR_PAIR", "SUBMITTING", "SUBMITTED", "PROCESSING", "FINALIZING"):
        assert not any(pattern_matches(p, stream_record(status)) for p in finalize_patterns), status
    assert not any(pattern_matches(p, stream_record("COMPLETED", event_name="REMOVE")) for p in finalize_patterns)


def test_exists_false_must_name_the_typed_leaf() -> None:
    """Given exists only applies to leaf nodes, when absence is tested on the attribute's map itself, then it
    would match an announced task too - which is why the template tests notified_at.S instead."""
    naive = {"dynamodb": {"NewImage": {"notified_at": [{"exists": False}]}}}
    typed = {"dynamodb": {"NewImage": {"notified_at": {"S": [{"exists": False}]}}}}
    announced = stream_record("COMPLETED", notified=True)
    assert pattern_matches(naive, announced)
    assert not pattern_matches(typed, announced)


# ------------------------------------------------------------------------------------------- the dispatcher


def test_dispatch_reads_the_task_stream_and_its_wakeup_queue(resources: dict[str, Any]) -> None:
    """Given the dispatcher moves the lines whenever the table says a task joined one or left its provider, and when
    a wake-up it scheduled comes due, then it reads the task stream from its start, in batches, bisecting and giving
    up on a failing batch into AsyncFailureQueue after a few tries, and the wake-up queue."""
    function = props(resources, "DispatchFunction")
    assert function["Timeout"] == 300
    stream = event_of(resources, "DispatchFunction", "DynamoDB")
    assert stream["Stream"] == {"Fn::GetAtt": ["TaskTable", "StreamArn"]}
    assert stream["StartingPosition"] == "TRIM_HORIZON"
    assert stream["BatchSize"] == 100
    assert stream["BisectBatchOnFunctionError"] is True
    assert stream["MaximumRetryAttempts"] == 5
    assert stream["DestinationConfig"]["OnFailure"] == {
        "Type": "SQS",
        "Destination": {"Fn::GetAtt": ["AsyncFailureQueue", "Arn"]},
    }
    wakeups = event_of(resources, "DispatchFunction", "SQS")
    assert wakeups["Queue"] == {"Fn::GetAtt": ["AdmissionWakeupQueue", "Arn"]}
    assert wakeups["BatchSize"] == 10
    variables = function["Environment"]["Variables"]
    assert variables["WAKEUP_QUEUE_URL"] == {"Ref": "AdmissionWakeupQueue"}
    # The poller moves the lines too (the dispatcher's safety net), so it may schedule wake-ups as well.
    assert props(resources, "PollerFunction")["Environment"]["Variables"]["WAKEUP_QUEUE_URL"] == {
        "Ref": "AdmissionWakeupQueue"
    }
    for name in set(FUNCTIONS) - {"DispatchFunction", "PollerFunction"}:
        assert "WAKEUP_QUEUE_URL" not in props(resources, name).get("Environment", {}).get("Variables", {}), name


def test_wakeup_queue_is_encrypted_short_lived_and_outlasts_an_invocation(resources: dict[str, Any]) -> None:
    """Given a wake-up is of no use once stale (the poller moves every line each minute), then its queue keeps
    messages an hour, encrypted; and its visibility timeout is at least the dispatcher's timeout (Lambda refuses an
    SQS trigger otherwise, and a wake-up must not be handed out twice while one invocation still works on it)."""
    queue = props(resources, "AdmissionWakeupQueue")
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["MessageRetentionPeriod"] == 3600
    assert queue["VisibilityTimeout"] >= props(resources, "DispatchFunction")["Timeout"]
    assert "RedrivePolicy" not in queue


@pytest.fixture(scope="module")
def dispatch_patterns(resources: dict[str, Any]) -> list[dict[str, Any]]:
    event = event_of(resources, "DispatchFunction", "DynamoDB")
    patterns = [json.loads(f["Pattern"]) for f in event["FilterCriteria"]["Filters"]]
    for pattern in patterns:
        check_pattern(pattern)  # valid event-pattern syntax, as Lambda would accept it
    return patterns


def task_change(
    old: str | None,
    new: str | None,
    *,
    old_provider: str = "wavespeed",
    new_provider: str = "wavespeed",
    pk: str = "TASK#0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e01",
) -> dict[str, Any]:
    """A stream record (from the finalize sample, so of the shape Lambda delivers) of a task going from `old` to
    `new` (None: no such image, as for an INSERT or a REMOVE)."""
    record = load_event("finalize_output_ready.json")["Records"][0]
    record["eventName"] = "INSERT" if old is None else "REMOVE" if new is None else "MODIFY"
    stream = record["dynamodb"]
    stream["Keys"] = {"pk": {"S": pk}}
    for which, status, provider in (("OldImage", old, old_provider), ("NewImage", new, new_provider)):
        if status is None:
            stream.pop(which, None)
            continue
        stream[which]["pk"] = {"S": pk}
        stream[which]["status"] = {"S": status}
        stream[which]["provider"] = {"S": provider}
    return record


def dispatcher_acts_on(record: dict[str, Any]) -> bool:
    """Whether the dispatch handler does anything with this record (a slot to release or a line to move)."""
    from dispatch_handler import _stream_changes

    released, lines = _stream_changes({"Records": [record]})
    return bool(released or lines)


S = TaskStatus
# (old status, new status): a task joins a line, or leaves its provider (its render slot is free).
DISPATCHED_CHANGES = [
    (None, S.QUEUED),  # a pair cut and checked
    (S.WAITING_FOR_PAIR, S.QUEUED),
    (S.SUBMITTING, S.QUEUED),  # the provider turned it away: back in line
    (S.QUEUED, S.QUEUED),  # still in line, with a new reason
    *((holding, ended) for holding in HOLDING_STATUSES for ended in (S.OUTPUT_READY, S.FAILED, S.TIMED_OUT)),
]
# Changes that neither add to a line nor free a slot.
IGNORED_CHANGES = [
    (S.QUEUED, S.SUBMITTING),  # the dispatcher's own admission
    (S.QUEUED, S.FAILED),  # a task that never held a slot
    (S.SUBMITTING, S.SUBMITTING),  # a lease or note written while it is sent
    (S.SUBMITTING, S.SUBMITTED),
    (S.SUBMITTING, S.PROCESSING),
    (S.SUBMITTED, S.PROCESSING),
    (S.PROCESSING, S.PROCESSING),
    (S.OUTPUT_READY, S.FINALIZING),
    (S.FINALIZING, S.COMPLETED),
    (S.COMPLETED, S.COMPLETED),  # announced
    (S.TIMED_OUT, S.TIMED_OUT),  # watched for a late video
    (S.TIMED_OUT, S.OUTPUT_READY),  # the late video: its slot was freed when it timed out
    (None, S.WAITING_FOR_PAIR),
    (None, S.REJECTED),
    (None, S.TIMED_OUT),
    (S.COMPLETED, None),  # expired
    (S.FAILED, None),
]


@pytest.mark.parametrize(("old", "new"), DISPATCHED_CHANGES, ids=str)
def test_dispatch_filter_passes_tasks_joining_a_line_or_leaving_their_provider(
    dispatch_patterns: list[dict[str, Any]], old: TaskStatus | None, new: TaskStatus
) -> None:
    """Given the template's filter, evaluated as Lambda does (the local stack's event filter), then the dispatcher
    is invoked for each such change, and acts on it."""
    record = task_change(old, new)
    assert matches_any(dispatch_patterns, record)
    assert dispatcher_acts_on(record)


@pytest.mark.parametrize(("old", "new"), IGNORED_CHANGES, ids=str)
def test_dispatch_filter_drops_changes_that_move_no_line(
    dispatch_patterns: list[dict[str, Any]], old: TaskStatus | None, new: TaskStatus | None
) -> None:
    """Given most writes to the table (the dispatcher's own among them) neither add to a line nor free a slot, then
    Lambda does not invoke the dispatcher for them, and the handler would do nothing with them anyway."""
    record = task_change(old, new)
    assert not matches_any(dispatch_patterns, record)
    assert not dispatcher_acts_on(record)


def test_dispatch_filter_follows_a_failover_into_the_other_providers_line(
    dispatch_patterns: list[dict[str, Any]],
) -> None:
    """Given a task WaveSpeed turned away moves to CometAPI's line, then one record both frees WaveSpeed's slot and
    moves CometAPI's line."""
    from dispatch_handler import _stream_changes

    record = task_change(S.SUBMITTING, S.QUEUED, new_provider="cometapi")
    assert matches_any(dispatch_patterns, record)
    assert _stream_changes({"Records": [record]}) == (
        {"wavespeed": {"0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e01"}},
        {"cometapi": {"0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e01"}},
    )


def test_dispatch_filter_drops_quota_spend_and_pairing_records(dispatch_patterns: list[dict[str, Any]]) -> None:
    """Given the quota, spend and pairing records share the table (and the stream), then none of them invokes the
    dispatcher: they carry no task status."""
    quota = task_change(None, S.QUEUED, pk="QUOTA#wavespeed")
    quota["dynamodb"]["NewImage"] = {
        "pk": {"S": "QUOTA#wavespeed"},
        "kind": {"S": "quota"},
        "provider": {"S": "wavespeed"},
        "version": {"N": "3"},
        "holders": {"M": {}},
    }
    spend = task_change(None, S.QUEUED, pk="SPEND#2026-01-01")
    spend["dynamodb"]["NewImage"] = {"pk": {"S": "SPEND#2026-01-01"}, "spent_usd": {"N": "0.25"}}
    slot = task_change(None, S.QUEUED, pk="JOB#alice")
    slot["dynamodb"]["NewImage"] = {"pk": {"S": "JOB#alice"}, "job": {"S": "alice"}, "version": {"N": "1"}}
    for record in (quota, spend, slot):
        assert not matches_any(dispatch_patterns, record), record["dynamodb"]["Keys"]


# --------------------------------------------------------------------------------------------------- data


def test_submit_names_the_bucket_by_the_buckets_own_expression_and_the_others_reference_it(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    """Given the bucket's notification names SubmitFunction, then Submit's environment, its S3 statements and its
    invoke permission use the very expression the bucket's name is (never the bucket resource, a circular
    dependency); the other functions' S3 statements reference the bucket's ARN, so their grants follow it."""
    assert props(resources, "MediaBucket")["BucketName"] == BUCKET_NAME
    assert not references(template["Globals"], "MediaBucket")
    submit = props(resources, "SubmitFunction")
    assert not references(submit, "MediaBucket")
    assert not references(props(resources, "SubmitFunctionInboxUploadPermission"), "MediaBucket")
    assert submit["Environment"]["Variables"]["MEDIA_BUCKET"] == BUCKET_NAME
    s3_resources = {
        function: [
            resource
            for statement in inline_statements(resources, function)
            if any(action.startswith("s3:") for action in as_list(statement["Action"]))
            for resource in as_list(statement["Resource"])
        ]
        for function in FUNCTIONS
    }
    assert s3_resources["SubmitFunction"]
    for resource in s3_resources.pop("SubmitFunction"):
        text, variables = resource["Fn::Sub"]
        assert variables == {"Bucket": BUCKET_NAME}
        assert text.partition("/")[0] == "arn:${AWS::Partition}:s3:::${Bucket}", text
    assert {function for function, items in s3_resources.items() if items} == {
        "DispatchFunction",
        "PollerFunction",
        "FinalizeFunction",
    }
    for function, items in s3_resources.items():
        for resource in items:
            assert resource == {"Fn::GetAtt": ["MediaBucket", "Arn"]} or resource["Fn::Sub"].startswith(
                "${MediaBucket.Arn}/"
            ), (function, resource)


def resource_dependencies(resource: dict[str, Any], logical_ids: set[str]) -> set[str]:
    """The resources `resource` depends on, as CloudFormation orders them: Ref, Fn::GetAtt, ${...} in Fn::Sub
    (whose own variables excepted), and DependsOn."""
    found: set[str] = set()
    depends_on = resource.get("DependsOn", [])
    found.update([depends_on] if isinstance(depends_on, str) else depends_on)
    for item in walk({k: v for k, v in resource.items() if k != "DependsOn"}):
        if not isinstance(item, dict) or len(item) != 1:
            continue
        if isinstance(item.get("Ref"), str):
            found.add(item["Ref"])
        get_att = item.get("Fn::GetAtt")
        if isinstance(get_att, list) and get_att:
            found.add(get_att[0])
        elif isinstance(get_att, str):
            found.add(get_att.split(".", 1)[0])
        sub = item.get("Fn::Sub")
        text, variables = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
        if isinstance(text, str):
            for name in re.findall(r"\$\{([^!}][^}]*)\}", text):
                if name not in variables:
                    found.add(name.split(".", 1)[0])
    return found & logical_ids


def test_the_transformed_template_has_no_circular_dependency(template_path: Path) -> None:
    """Given the bucket's notification names SubmitFunction (and the bucket waits for Submit's invoke permission),
    when SAM has transformed the template, then no resource depends on itself through others: CloudFormation
    refuses a circular dependency before it creates anything. Submit and its role never wait for the bucket."""
    transformed = transform(load_template(template_path), "us-east-1")["Resources"]
    graph = {name: resource_dependencies(resource, set(transformed)) for name, resource in transformed.items()}

    def closure(start: str) -> set[str]:
        seen: set[str] = set()
        pending = list(graph[start])
        while pending:
            name = pending.pop()
            if name not in seen:
                seen.add(name)
                pending.extend(graph[name])
        return seen

    assert {"SubmitFunction", "SubmitFunctionInboxUploadPermission"} <= closure("MediaBucket")
    for name in ("SubmitFunction", "SubmitFunctionRole", "SubmitFunctionInboxUploadPermission"):
        assert "MediaBucket" not in closure(name), name
    assert [name for name in graph if name in closure(name)] == []


def test_bucket_is_private_encrypted_and_tidied(resources: dict[str, Any]) -> None:
    """Given the media bucket, then it blocks all public access, encrypts at rest, disables ACLs, expires the
    inbox and aborts forgotten multipart uploads."""
    bucket = props(resources, "MediaBucket")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] == "AES256"
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    rules = bucket["LifecycleConfiguration"]["Rules"]
    inbox = [r for r in rules if r.get("Prefix") == "inbox/"]
    assert inbox
    assert inbox[0]["ExpirationInDays"] == {"Ref": "InboxRetentionDays"}
    assert any(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 1 for r in rules)


def test_bucket_outlives_the_stack(resources: dict[str, Any]) -> None:
    """Given users' uploads and videos, then deleting or replacing the stack never deletes the bucket; only a first
    deploy that rolls back (the bucket still empty) deletes it, so the retry does not meet it."""
    bucket = resources["MediaBucket"]
    assert (bucket["DeletionPolicy"], bucket["UpdateReplacePolicy"]) == ("RetainExceptOnCreate", "Retain")


def test_bucket_policy_denies_plain_http(resources: dict[str, Any]) -> None:
    """Given the bucket policy, then every S3 action without TLS is denied."""
    policy = props(resources, "MediaBucketPolicy")
    assert policy["Bucket"] == {"Ref": "MediaBucket"}
    statements = policy["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Action"] == "s3:*" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in statements
    )


def test_task_table_recoverable_expiring_streamed_and_indexed(resources: dict[str, Any]) -> None:
    """Given the task table, then it has PITR, SSE, a TTL, a full-image stream, the sparse in-flight index, the
    by-job index and the sparse, keys-only queue index."""
    table = props(resources, "TaskTable")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    in_flight = indexes["in-flight"]
    assert in_flight["KeySchema"] == [
        {"AttributeName": "in_flight", "KeyType": "HASH"},
        {"AttributeName": "next_check_at", "KeyType": "RANGE"},
    ]
    assert (types["in_flight"], types["next_check_at"]) == ("S", "N")
    assert in_flight["Projection"] == {"ProjectionType": "ALL"}
    # Sparse: in_flight is no table key, so items without it are simply absent from the index.
    assert "in_flight" not in {k["AttributeName"] for k in table["KeySchema"]}
    by_job = indexes["by-job"]
    assert by_job["KeySchema"] == [
        {"AttributeName": "job", "KeyType": "HASH"},
        {"AttributeName": "created_at", "KeyType": "RANGE"},
    ]
    assert (types["job"], types["created_at"]) == ("S", "S")
    # Each provider's line: sparse (only QUEUED tasks carry queued_for), in order of place, and keys only - the
    # dispatcher reads a few ids from its head and counts its length without reading whole tasks.
    queue = indexes["queue"]
    assert queue["KeySchema"] == [
        {"AttributeName": "queued_for", "KeyType": "HASH"},
        {"AttributeName": "queue_place", "KeyType": "RANGE"},
    ]
    assert (types["queued_for"], types["queue_place"]) == ("S", "S")
    assert queue["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    assert "queued_for" not in {k["AttributeName"] for k in table["KeySchema"]}


def test_idempotency_table_is_what_powertools_writes_expiring_and_encrypted(resources: dict[str, Any]) -> None:
    """Given Powertools Idempotency remembers webhook deliveries in IdempotencyTable, then the table is keyed and
    expires on the attributes its DynamoDB persistence layer writes, bills per request and is encrypted."""
    table = props(resources, "IdempotencyTable")
    layer = DynamoDBPersistenceLayer(table_name="any")  # the defaults the wiring uses
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": layer.key_attr, "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": layer.key_attr, "AttributeType": "S"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": layer.expiry_attr, "Enabled": True}
    assert table["SSESpecification"]["SSEEnabled"] is True


def test_only_the_webhook_reaches_the_idempotency_table(template: dict[str, Any], resources: dict[str, Any]) -> None:
    """Given only the webhook deduplicates deliveries, then it alone gets the table's name and may read and write its
    items: the four item actions Powertools Idempotency makes, on the table itself."""
    webhook = props(resources, "WebhookFunction")
    assert webhook["Environment"]["Variables"]["IDEMPOTENCY_TABLE_NAME"] == {"Ref": "IdempotencyTable"}
    assert {
        "Sid": "RememberDeliveries",
        "Effect": "Allow",
        "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"],
        "Resource": {"Fn::GetAtt": ["IdempotencyTable", "Arn"]},
    } in inline_statements(resources, "WebhookFunction")
    assert not references(template["Globals"], "IdempotencyTable")
    for function in FUNCTIONS.keys() - {"WebhookFunction"}:
        assert not references(props(resources, function), "IdempotencyTable"), function


# --------------------------------------------------------------------------------------------------- security


def test_no_parameter_carries_a_secret(template: dict[str, Any]) -> None:
    """Given secrets live in Secrets Manager, then no template parameter is named like a secret or key."""
    for name in template["Parameters"]:
        assert "secret" not in name.lower(), name
        assert "key" not in name.lower(), name


def test_provider_secrets_are_empty_placeholders_wavespeeds_key_apart_from_its_webhook_secret(
    resources: dict[str, Any],
) -> None:
    """Given the operator sets the real values after deploying, then the template only ships empty fields; and
    WaveSpeed's API key (which spends money) and its webhook secret (which the internet-facing webhook needs) are
    two secrets, so a function can be let read one without the other."""
    expected = {
        "WaveSpeedSecret": {"api_key": "", "webhook_secret": ""},  # webhook_secret unused, see the next test
        "WaveSpeedWebhookSecret": {"webhook_secret": ""},
        "CometApiSecret": {"api_key": ""},
    }
    for name, fields in expected.items():
        secret = props(resources, name)
        assert resources[name]["Type"] == "AWS::SecretsManager::Secret", name
        assert json.loads(secret["SecretString"]) == fields, name
        assert "GenerateSecretString" not in secret, name
        assert "after deploying" in secret["Description"], name
    assert "put-secret-value" in props(resources, "WaveSpeedSecret")["Description"]


# What the first release shipped, byte for byte: CloudFormation writes a changed SecretString over the value the
# operator put, so an update that changed a placeholder would blank a live API key.
SHIPPED_PLACEHOLDERS = {
    "WaveSpeedSecret": (
        '{"api_key": "", "webhook_secret": ""}',
        'WaveSpeedAI credentials as JSON {"api_key": ..., "webhook_secret": ...}. Created with empty placeholders; set'
        " the real values after deploying with aws secretsmanager put-secret-value.",
    ),
    "CometApiSecret": (
        '{"api_key": ""}',
        'CometAPI credentials as JSON {"api_key": ...}. Created with an empty placeholder; set the real value after'
        " deploying with aws secretsmanager put-secret-value.",
    ),
}


@pytest.mark.parametrize("name", sorted(SHIPPED_PLACEHOLDERS))
def test_a_provider_secret_deployed_before_is_never_rewritten_by_an_update(
    resources: dict[str, Any], name: str
) -> None:
    secret = props(resources, name)
    assert (secret["SecretString"], secret["Description"]) == SHIPPED_PLACEHOLDERS[name]


def test_the_callback_key_is_generated_by_the_stack(resources: dict[str, Any]) -> None:
    """Given callback tokens are HMACs under CallbackKeySecret's "key", then CloudFormation generates that key (no
    value ships in the template): long, and of letters and digits only, since a comma or a space would split it into
    several keys (the rotation format)."""
    secret = props(resources, "CallbackKeySecret")
    assert resources["CallbackKeySecret"]["Type"] == "AWS::SecretsManager::Secret"
    assert "SecretString" not in secret
    generate = secret["GenerateSecretString"]
    assert generate["GenerateStringKey"] == "key"
    assert json.loads(generate["SecretStringTemplate"]) == {}
    assert generate["PasswordLength"] >= 32
    assert generate["ExcludePunctuation"] is True
    assert generate.get("IncludeSpace", False) is False
    assert "key" in secret["Description"]


def test_policies_are_scoped_no_wildcard_actions_on_wildcard_resources(resources: dict[str, Any]) -> None:
    """Given least privilege, then no inline statement allows a '*' action or any action on a '*' resource."""
    for function in FUNCTIONS:
        for policy in props(resources, function)["Policies"]:
            for statement in policy.get("Statement", []):
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert all(a != "*" and not a.endswith(":*") for a in actions), (function, statement)
                assert statement["Resource"] != "*", (function, statement)


def policy_templates(resources: dict[str, Any], function: str) -> list[tuple[str, Any]]:
    """(SAM policy template, its parameters) of each of the function's policies, but the ADOT layer's managed policy
    (test_opentelemetry_is_only_there_when_its_layer_is_given)."""
    policies = [policy for policy in props(resources, function)["Policies"] if "Fn::If" not in policy]
    return [(name, value) for policy in policies for name, value in policy.items()]


def readable_secrets(resources: dict[str, Any], function: str) -> list[str]:
    """The secrets the function's AWSSecretsManagerGetSecretValuePolicy entries name, in order."""
    return [
        value["SecretArn"]["Ref"]
        for name, value in policy_templates(resources, function)
        if name == "AWSSecretsManagerGetSecretValuePolicy"
    ]


def test_the_secret_table_covers_every_function_and_every_secret(resources: dict[str, Any]) -> None:
    """Given the two tests below go through SECRET_IDS, then it names every function and every secret of the
    template, and each variable it lists is one the settings read."""
    assert set(SECRET_IDS) == set(FUNCTIONS)
    secrets = {name for name, r in resources.items() if r["Type"] == "AWS::SecretsManager::Secret"}
    assert {secret for told in SECRET_IDS.values() for secret in told.values()} == secrets
    models = [Settings, *(spec.settings for spec in PROVIDERS.values())]
    aliases = {field.alias for model in models for field in model.model_fields.values()}
    assert {variable for told in SECRET_IDS.values() for variable in told} <= aliases


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_is_told_exactly_the_secrets_its_work_needs(
    template: dict[str, Any], resources: dict[str, Any], function: str
) -> None:
    """Given each function, then the *_SECRET_ID variables it gets (Globals and its own) are exactly those of
    SECRET_IDS, each naming its secret."""
    variables = {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **props(resources, function).get("Environment", {}).get("Variables", {}),
    }
    told = {name: value for name, value in variables.items() if name.endswith("_SECRET_ID")}
    assert told == {name: {"Ref": secret} for name, secret in SECRET_IDS[function].items()}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_may_read_exactly_the_secrets_it_is_told(resources: dict[str, Any], function: str) -> None:
    """Given each function, then its AWSSecretsManagerGetSecretValuePolicy entries name exactly the secrets it is
    told (once each), and no inline statement grants a Secrets Manager action besides."""
    readable = readable_secrets(resources, function)
    assert sorted(readable) == sorted(set(SECRET_IDS[function].values()))
    for statement in inline_statements(resources, function):
        assert not any(action.startswith("secretsmanager:") for action in as_list(statement["Action"])), statement


def test_the_internet_facing_webhook_never_holds_wavespeeds_api_key(resources: dict[str, Any]) -> None:
    """Given the webhook answers anyone on the internet, then it can read WaveSpeed's webhook secret (to check
    signatures) but not WaveSpeed's API key, which spends money: it is neither told nor allowed that secret; and only
    the webhook reads the webhook secret."""
    webhook = props(resources, "WebhookFunction")
    assert not references(webhook, "WaveSpeedSecret")
    assert "WAVESPEED_SECRET_ID" not in webhook["Environment"]["Variables"]
    assert "WaveSpeedSecret" not in readable_secrets(resources, "WebhookFunction")
    assert "WaveSpeedWebhookSecret" in readable_secrets(resources, "WebhookFunction")
    for function in FUNCTIONS.keys() - {"WebhookFunction"}:
        assert not references(props(resources, function), "WaveSpeedWebhookSecret"), function


def test_the_webhook_may_only_get_and_put_tasks_and_remember_deliveries(resources: dict[str, Any]) -> None:
    """Given the webhook reads a callback's task and writes it back (a versioned put), then GetItem and PutItem on the
    task table itself is all it may do there (no Query, Scan, DeleteItem, UpdateItem or batch writes, no index), and
    the idempotency table's item actions are its only others: no SAM DynamoDB policy template grants more."""
    assert {name for name, _ in policy_templates(resources, "WebhookFunction")} == {
        "Statement",
        "AWSSecretsManagerGetSecretValuePolicy",
    }
    statements = {
        statement["Sid"]: (statement["Effect"], sorted(as_list(statement["Action"])), statement["Resource"])
        for statement in inline_statements(resources, "WebhookFunction")
    }
    assert statements == {
        "ReadAndWriteTasks": (
            "Allow",
            ["dynamodb:GetItem", "dynamodb:PutItem"],
            {"Fn::GetAtt": ["TaskTable", "Arn"]},
        ),
        "RememberDeliveries": (
            "Allow",
            ["dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
            {"Fn::GetAtt": ["IdempotencyTable", "Arn"]},
        ),
    }


def test_no_function_may_read_the_whole_bucket_and_the_webhook_none_of_it(resources: dict[str, Any]) -> None:
    """Given each function reads only the prefixes its work needs (test_template_deploy resolves which), then none
    uses a SAM S3 policy template (S3ReadPolicy grants every key of the bucket), no s3:GetObject is granted on the
    bucket's every key, and the webhook, which never touches the bucket, has no S3 action at all."""
    for function in FUNCTIONS:
        assert not [name for name, _ in policy_templates(resources, function) if name.startswith("S3")], function
        for statement in inline_statements(resources, function):
            if "s3:GetObject" not in as_list(statement["Action"]):
                continue
            for resource in as_list(statement["Resource"]):
                sub = resource["Fn::Sub"]
                text = sub[0] if isinstance(sub, list) else sub
                assert not text.endswith(("}/*", "}*")), (function, text)
    for statement in inline_statements(resources, "WebhookFunction"):
        assert not any(action.startswith("s3:") for action in as_list(statement["Action"])), statement


def test_dispatch_may_read_provider_keys_the_inputs_the_stream_and_its_wakeup_queue(resources: dict[str, Any]) -> None:
    """Given the dispatcher submits to the providers, then it may read both providers' API keys and the callback key
    (to put each task's token into its callback URL) and the inputs under inbox/ (to presign them), read and write the
    task table, read its stream, receive its wake-ups and schedule new ones."""
    granted = policy_templates(resources, "DispatchFunction")
    for secret in ("WaveSpeedSecret", "CometApiSecret", "CallbackKeySecret"):
        assert ("AWSSecretsManagerGetSecretValuePolicy", {"SecretArn": {"Ref": secret}}) in granted
    assert ("DynamoDBCrudPolicy", {"TableName": {"Ref": "TaskTable"}}) in granted
    assert (
        "DynamoDBStreamReadPolicy",
        {
            "TableName": {"Ref": "TaskTable"},
            "StreamName": {"Fn::Select": [3, {"Fn::Split": ["/", {"Fn::GetAtt": ["TaskTable", "StreamArn"]}]}]},
        },
    ) in granted
    wakeup_queue = {"QueueName": {"Fn::GetAtt": ["AdmissionWakeupQueue", "QueueName"]}}
    assert ("SQSSendMessagePolicy", wakeup_queue) in granted
    assert ("SQSPollerPolicy", wakeup_queue) in granted
    assert {
        "Sid": "ReadInbox",
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "Resource": {"Fn::Sub": "${MediaBucket.Arn}/inbox/*"},
    } in inline_statements(resources, "DispatchFunction")
    assert not references(props(resources, "DispatchFunction"), "IdempotencyTable")


def test_submit_only_queues_so_it_reads_no_secret_only_the_inbox(resources: dict[str, Any]) -> None:
    """Given submit no longer calls a provider (it pairs, checks and queues), then it may read no secret (no provider
    key, no callback key), is not told the webhook URL and schedules no wake-ups: reading inbox/ (and learning that a
    key is missing) and the task table is all."""
    submit = props(resources, "SubmitFunction")
    assert sorted(name for name, _ in policy_templates(resources, "SubmitFunction")) == [
        "DynamoDBCrudPolicy",
        "Statement",
    ]
    assert {statement["Sid"]: statement["Action"] for statement in inline_statements(resources, "SubmitFunction")} == {
        "ReadInbox": "s3:GetObject",
        "MissingKeysAnswerNotFound": "s3:ListBucket",
    }
    for secret in (name for name, r in resources.items() if r["Type"] == "AWS::SecretsManager::Secret"):
        assert not references(submit, secret), secret
    assert not references(submit, "AdmissionWakeupQueue")
    assert "Environment" not in submit or "WEBHOOK_BASE_URL" not in submit["Environment"]["Variables"]


def test_the_poller_may_read_secrets_and_schedule_wakeups_as_the_dispatchers_fallback(
    resources: dict[str, Any],
) -> None:
    granted = policy_templates(resources, "PollerFunction")
    for secret in ("WaveSpeedSecret", "CometApiSecret", "CallbackKeySecret"):
        assert ("AWSSecretsManagerGetSecretValuePolicy", {"SecretArn": {"Ref": secret}}) in granted
    assert ("SQSSendMessagePolicy", {"QueueName": {"Fn::GetAtt": ["AdmissionWakeupQueue", "QueueName"]}}) in granted
    # Only the dispatcher receives the wake-ups.
    assert not any(name == "SQSPollerPolicy" for name, _ in granted)


def test_no_function_may_delete_objects(resources: dict[str, Any]) -> None:
    """Given user uploads are only ever removed by the lifecycle rule, then no function is allowed to delete an
    object, and the SAM policy templates used for the bucket are read-only ones."""
    for function in FUNCTIONS:
        for policy in props(resources, function)["Policies"]:
            assert not {"S3CrudPolicy", "S3FullAccessPolicy", "S3WritePolicy"} & set(policy), (function, policy)
            for statement in policy.get("Statement", []):
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                assert not any(a.startswith("s3:Delete") for a in actions), (function, statement)


def test_finalize_may_find_and_abort_unfinished_copies_of_outputs_only(resources: dict[str, Any]) -> None:
    statements = {
        statement["Sid"]: statement
        for policy in props(resources, "FinalizeFunction")["Policies"]
        for statement in policy.get("Statement", [])
    }
    assert statements["ListUnfinishedCopies"]["Action"] == "s3:ListBucketMultipartUploads"
    assert statements["ListUnfinishedCopies"]["Resource"] == {"Fn::GetAtt": ["MediaBucket", "Arn"]}
    assert "s3:AbortMultipartUpload" in statements["WriteOutputsMultipart"]["Action"]
    assert statements["WriteOutputsMultipart"]["Resource"] == {"Fn::Sub": "${MediaBucket.Arn}/outputs/*"}


def test_queues_and_topic_are_encrypted(resources: dict[str, Any]) -> None:
    """Given failure queues and the topic carry task details, then they are encrypted at rest."""
    for queue in ("AsyncFailureQueue", "FinalizeFailureQueue"):
        assert props(resources, queue)["SqsManagedSseEnabled"] is True
        assert props(resources, queue)["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert props(resources, "NotificationTopic")["KmsMasterKeyId"] == "alias/aws/sns"
    assert resources["NotificationEmailSubscription"]["Condition"] == "HasNotificationEmail"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_logs_json_to_its_own_retained_group(resources: dict[str, Any], function: str) -> None:
    """Given each function, then it logs JSON into a log group the stack owns, with a retention period."""
    logging_config = props(resources, function)["LoggingConfig"]
    assert logging_config["LogFormat"] == "JSON"
    group = logging_config["LogGroup"]["Ref"]
    assert resources[group]["Type"] == "AWS::Logs::LogGroup"
    assert props(resources, group)["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_outputs(template: dict[str, Any]) -> None:
    """Given an operator after deploying, then the outputs name everything they need to use the pipeline."""
    outputs = template["Outputs"]
    assert outputs["MediaBucketName"]["Value"] == BUCKET_REF
    assert outputs["InboxPrefix"]["Value"] == "inbox/"
    assert (
        outputs["WebhookBaseUrl"]["Value"]
        == template["Resources"]["DispatchFunction"]["Properties"]["Environment"]["Variables"]["WEBHOOK_BASE_URL"]
    )
    for name in ("TaskTableName", "NotificationTopicArn", "AsyncFailureQueueUrl", "FinalizeFailureQueueUrl"):
        assert name in outputs


# --------------------------------------------------------------------------------------------------- monitoring

ALARM = "AWS::CloudWatch::Alarm"
QUEUES = ("AsyncFailureQueue", "FinalizeFailureQueue")
TASK_METRICS = ("TaskCompleted", "TaskFailed", "TaskRejected", "TaskTimedOut")


def alarms(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r["Properties"] for name, r in resources.items() if r["Type"] == ALARM}


def alarms_on(resources: dict[str, Any], namespace: str, metric: str, dimension: str, value: Any) -> list[dict]:
    return [
        a
        for a in alarms(resources).values()
        if a["Namespace"] == namespace
        and a["MetricName"] == metric
        and a["Dimensions"] == [{"Name": dimension, "Value": value}]
    ]


def emf_setting(template: dict[str, Any], name: str) -> str:
    """POWERTOOLS_SERVICE_NAME or POWERTOOLS_METRICS_NAMESPACE: what Powertools names custom metrics with."""
    value = template["Globals"]["Function"]["Environment"]["Variables"][name]
    assert isinstance(value, str), f"{name} must be a literal for alarms and the dashboard to name it"
    return value


def function_timeout(template: dict[str, Any], resources: dict[str, Any], function: str) -> int:
    return int(props(resources, function).get("Timeout", template["Globals"]["Function"]["Timeout"]))


def test_functions_table_lists_every_function(resources: dict[str, Any]) -> None:
    """Given the monitoring checks below go through FUNCTIONS, then it names every function of the template."""
    assert {n for n, r in resources.items() if r["Type"] == "AWS::Serverless::Function"} == set(FUNCTIONS)


def test_every_alarm_notifies_the_alarm_topic_on_alarm_and_on_recovery(resources: dict[str, Any]) -> None:
    """Given an operator subscribed to AlarmTopic, then every alarm tells them when it fires and when it clears."""
    assert len(alarms(resources)) >= 3 * len(FUNCTIONS) + len(QUEUES) + 3
    for name, alarm in alarms(resources).items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["OKActions"] == [{"Ref": "AlarmTopic"}], name
        assert alarm["AlarmDescription"].strip(), name
        assert "First check" in alarm["AlarmDescription"], name


def test_alarm_names_match_the_key_policy_that_lets_cloudwatch_publish(resources: dict[str, Any]) -> None:
    """Given CloudWatch may use the alarm topic's key only for alarms named <stack>-..., then every alarm is."""
    statements = props(resources, "AlarmTopicKey")["KeyPolicy"]["Statement"]
    (grant,) = [s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    source_arn = grant["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Sub"]
    assert source_arn.endswith(":alarm:${AWS::StackName}-*")
    names = [alarm["AlarmName"]["Fn::Sub"] for alarm in alarms(resources).values()]
    assert all(name.startswith("${AWS::StackName}-") for name in names)
    assert len(set(names)) == len(names)


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(resources: dict[str, Any]) -> None:
    """Given CloudWatch cannot publish to a topic under the AWS managed key (its policy cannot grant CloudWatch),
    then AlarmTopic has a rotated key of its own that lets CloudWatch encrypt, and only the alarm email (if any)
    subscribes to it by default."""
    assert props(resources, "AlarmTopic")["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}
    key = props(resources, "AlarmTopicKey")
    assert key["EnableKeyRotation"] is True
    (grant,) = [s for s in key["KeyPolicy"]["Statement"] if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert grant["Effect"] == "Allow"
    assert sorted(grant["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert grant["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"] == {
        "TopicArn": {"Ref": "AlarmTopic"},
        "Protocol": "email",
        "Endpoint": {"Ref": "AlarmEmail"},
    }


def test_alarm_email_parameter_is_optional(template: dict[str, Any]) -> None:
    """Given AlarmEmail, then empty (the default) means no subscription and anything else must be an address."""
    parameter = template["Parameters"]["AlarmEmail"]
    assert parameter["Default"] == ""
    for accepted in ("", "ops@example.com"):
        assert re.fullmatch(parameter["AllowedPattern"], accepted), accepted
    for refused in ("ops", "ops@", "two words@example.com"):
        assert not re.fullmatch(parameter["AllowedPattern"], refused), refused
    assert template["Conditions"]["HasAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_each_function_alarms_on_errors_near_timeouts_and_throttles(
    template: dict[str, Any], resources: dict[str, Any], function: str
) -> None:
    """Given each function, then an alarm fires on any error in 5 minutes, on any invocation that ran for 90% of the
    function's timeout (Lambda has no timeout metric; a timed-out invocation's Duration is its whole timeout), and on
    any throttle."""
    name = {"Ref": function}
    (errors,) = alarms_on(resources, "AWS/Lambda", "Errors", "FunctionName", name)
    assert (errors["Statistic"], errors["Period"], errors["EvaluationPeriods"]) == ("Sum", 300, 1)
    assert (errors["ComparisonOperator"], errors["Threshold"]) == ("GreaterThanThreshold", 0)
    assert errors["TreatMissingData"] == "notBreaching"

    (duration,) = alarms_on(resources, "AWS/Lambda", "Duration", "FunctionName", name)
    assert (duration["Statistic"], duration["Period"], duration["EvaluationPeriods"]) == ("Maximum", 300, 1)
    assert duration["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert duration["Threshold"] == function_timeout(template, resources, function) * 1000 * 9 // 10

    (throttles,) = alarms_on(resources, "AWS/Lambda", "Throttles", "FunctionName", name)
    assert (throttles["Statistic"], throttles["ComparisonOperator"], throttles["Threshold"]) == (
        "Sum",
        "GreaterThanThreshold",
        0,
    )


@pytest.mark.parametrize("queue", QUEUES)
def test_each_failure_queue_alarms_as_soon_as_a_message_waits(resources: dict[str, Any], queue: str) -> None:
    """Given a message in a failure queue is a failure nobody has looked at yet, then one visible message alarms."""
    (depth,) = alarms_on(
        resources, "AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", {"Fn::GetAtt": [queue, "QueueName"]}
    )
    assert (depth["Statistic"], depth["ComparisonOperator"], depth["Threshold"]) == (
        "Maximum",
        "GreaterThanThreshold",
        0,
    )
    assert depth["TreatMissingData"] == "notBreaching"


def test_every_queue_of_the_template_is_a_watched_failure_queue_or_the_wakeup_queue(resources: dict[str, Any]) -> None:
    """Given a message waiting in a failure queue is trouble, then each has its depth alarm (above); the one other
    queue carries the dispatcher's wake-ups, which are consumed at once and watched through the dispatcher's own
    errors alarm."""
    queues = {n for n, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    assert queues == {*QUEUES, "AdmissionWakeupQueue"}
    (consumer,) = [
        function
        for function in FUNCTIONS
        for event in props(resources, function).get("Events", {}).values()
        if event["Type"] == "SQS"
    ]
    assert consumer == "DispatchFunction"


def emitted_dimensions(capsys: pytest.CaptureFixture[str], emit: Any) -> dict[str, dict[str, str]]:
    """The dimensions (name -> value) of each metric Powertools writes when emit() runs."""
    capsys.readouterr()
    emit()
    found: dict[str, dict[str, str]] = {}
    for line in capsys.readouterr().out.splitlines():
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            (dimension_names,) = directive["Dimensions"]
            for metric in directive["Metrics"]:
                found[metric["Name"]] = {d: document[d] for d in dimension_names}
                found[metric["Name"]]["@namespace"] = directive["Namespace"]
    return found


@pytest.fixture
def powertools_env(template: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The Lambda environment's Powertools settings, as the functions get them from Globals."""
    namespace = emf_setting(template, "POWERTOOLS_METRICS_NAMESPACE")
    service = emf_setting(template, "POWERTOOLS_SERVICE_NAME")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", namespace)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", service)
    return namespace, service


def test_custom_metric_alarms_name_the_metrics_as_powertools_emits_them(
    resources: dict[str, Any], powertools_env: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Given a custom-metric alarm only sees data points with exactly its namespace, name and dimensions, when
    Powertools emits these metrics with the functions' settings, then each alarm names exactly what is emitted."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    namespace, service = powertools_env
    expected = {
        # metric: (statistic, period, evaluation periods, datapoints to alarm, comparison, threshold)
        "OldestDueSeconds": ("Maximum", 300, 3, 3, "GreaterThanThreshold", 900),
        "WebhookAuthFailure": ("Sum", 300, 1, None, "GreaterThanOrEqualToThreshold", 5),
        "TaskFailed": ("Sum", 900, 1, None, "GreaterThanOrEqualToThreshold", 3),
        "AdmissionBlockedBySpendLimit": ("Sum", 300, 1, None, "GreaterThanThreshold", 0),
    }
    units = {"OldestDueSeconds": MetricUnit.Seconds}

    def emit() -> None:
        for metric in expected:
            with single_metric(name=metric, unit=units.get(metric, MetricUnit.Count), value=1):
                pass

    emitted = emitted_dimensions(capsys, emit)
    for metric, (statistic, period, evaluations, datapoints, comparison, threshold) in expected.items():
        assert emitted[metric] == {"@namespace": namespace, "service": service}
        (alarm,) = alarms_on(resources, namespace, metric, "service", service)
        assert "Unit" not in alarm, "a Unit other than the emitted one would leave the alarm without data"
        assert (alarm["Statistic"], alarm["Period"], alarm["EvaluationPeriods"]) == (statistic, period, evaluations)
        assert alarm.get("DatapointsToAlarm") == datapoints
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (comparison, threshold)
        # No data means nothing happened (or nothing is due), never trouble.
        assert alarm["TreatMissingData"] == "notBreaching"


def test_the_spend_limit_alarm_watches_what_the_usage_meter_emits(
    resources: dict[str, Any], powertools_env: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Given the dispatcher reports a line held by the spend limit through the usage meter, then the meter emits the
    metric with the service alone (what SpendLimitReachedAlarm watches), besides a copy by provider."""
    from avatar_pipeline.adapters.metrics import EmfUsageMeter

    namespace, service = powertools_env
    capsys.readouterr()
    EmfUsageMeter().record_spend_limit_reached("wavespeed")
    dimensions = []
    for line in capsys.readouterr().out.splitlines():
        document = json.loads(line)
        for directive in document["_aws"]["CloudWatchMetrics"]:
            if [m["Name"] for m in directive["Metrics"]] == ["AdmissionBlockedBySpendLimit"]:
                dimensions.append(
                    {d: document[d] for d in directive["Dimensions"][0]} | {"@ns": directive["Namespace"]}
                )
    assert {"service": service, "@ns": namespace} in dimensions
    assert {"service": service, "provider": "wavespeed", "@ns": namespace} in dimensions
    (alarm,) = alarms_on(resources, namespace, "AdmissionBlockedBySpendLimit", "service", service)
    assert alarm["AlarmName"] == {"Fn::Sub": "${AWS::StackName}-spend-limit-reached"}


def test_a_poller_that_stops_running_alarms(resources: dict[str, Any]) -> None:
    """Given the stuck-tasks alarm's metric comes from the poller, then the poller's silence alarms by itself:
    fewer than one invocation in two 15-minute periods, missing data counting as breaching."""
    (alarm,) = alarms_on(resources, "AWS/Lambda", "Invocations", "FunctionName", {"Ref": "PollerFunction"})
    assert (alarm["Statistic"], alarm["Period"], alarm["EvaluationPeriods"]) == ("Sum", 900, 2)
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("LessThanThreshold", 1)
    assert alarm["TreatMissingData"] == "breaching"


PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")


def dashboard_body(template: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The dashboard's body as JSON, each ${...} of its !Sub replaced by a marker '<name>'; and the names used."""
    text = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert isinstance(text, str), "one string, no variable map"
    names = set(PLACEHOLDER.findall(text))
    return json.loads(PLACEHOLDER.sub(lambda m: f"<{m.group(1)}>", text)), names


def metric_rows(body: dict[str, Any]) -> list[tuple[dict[str, Any], str, str, dict[str, str]]]:
    """(widget properties, namespace, metric, dimensions) of every metric line of every metric widget."""
    rows = []
    for widget in body["widgets"]:
        if widget["type"] != "metric":
            continue
        for row in widget["properties"]["metrics"]:
            fields = [item for item in row if not isinstance(item, dict)]
            assert "." not in fields, "write every metric line out in full"
            namespace, metric, *pairs = fields
            assert len(pairs) % 2 == 0, row
            rows.append((widget["properties"], namespace, metric, dict(zip(pairs[::2], pairs[1::2], strict=True))))
    return rows


def test_dashboard_body_is_json_whose_placeholders_all_resolve(template: dict[str, Any]) -> None:
    """Given the body is a !Sub of JSON, when its placeholders are substituted, then it parses, and each placeholder
    is a pseudo parameter or a resource of the template (with an attribute that resource has)."""
    body, names = dashboard_body(template)
    assert body["widgets"]
    attributes = {"Arn", "QueueName"}
    for name in names:
        logical_id, _, attribute = name.partition(".")
        if logical_id.startswith("AWS::"):
            assert logical_id in {"AWS::Region", "AWS::StackName"}, name
            continue
        assert logical_id in template["Resources"], name
        assert not attribute or attribute in attributes, name
    for widget in body["widgets"]:
        assert {"type", "x", "y", "width", "height", "properties"} <= set(widget), widget
        assert widget["x"] + widget["width"] <= 24


def test_dashboard_shows_every_function_and_queue(template: dict[str, Any], resources: dict[str, Any]) -> None:
    """Given the dashboard, then invocations, errors and duration are drawn for each function (and only functions
    of the template), and the depth of both failure queues (and only those)."""
    body, _ = dashboard_body(template)
    rows = metric_rows(body)
    for metric in ("Invocations", "Errors", "Duration", "Throttles"):
        drawn = {dims["FunctionName"] for _, ns, m, dims in rows if (ns, m) == ("AWS/Lambda", metric)}
        assert drawn == {f"<{function}>" for function in FUNCTIONS}, metric
    for _, namespace, _, dims in rows:
        if namespace == "AWS/Lambda":
            assert resources[dims["FunctionName"].strip("<>")]["Type"] == "AWS::Serverless::Function"
        if namespace == "AWS/SQS":
            assert set(dims) == {"QueueName"}
    queues = {
        dims["QueueName"] for _, ns, m, dims in rows if (ns, m) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    }
    assert queues == {f"<{queue}.QueueName>" for queue in QUEUES}
    assert {ns for _, ns, _, _ in rows} == {
        "AWS/Lambda",
        "AWS/SQS",
        emf_setting(template, "POWERTOOLS_METRICS_NAMESPACE"),
    }


def test_dashboard_custom_metrics_carry_the_dimensions_the_code_emits(
    template: dict[str, Any], powertools_env: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Given a graph line only finds data points with exactly its dimensions, then the task metrics and the others
    carry service alone, the provider metrics service and provider; Submissions and EstimatedCostUsd are checked
    against what the usage meter really emits."""
    from avatar_pipeline.adapters.metrics import EmfUsageMeter

    namespace, service = powertools_env
    body, _ = dashboard_body(template)
    custom = [(p, m, dims) for p, ns, m, dims in metric_rows(body) if ns == namespace]
    drawn = {m for _, m, _ in custom}
    assert drawn == {
        *TASK_METRICS,
        "EndToEndSeconds",
        "ProviderSeconds",
        "EstimatedCostUsd",
        "Submissions",
        "WebhookAuthFailure",
        "OldestDueSeconds",
    }
    by_provider = {"ProviderSeconds", "EstimatedCostUsd", "Submissions"}
    providers = set(template["Parameters"]["DefaultProvider"]["AllowedValues"])
    for _, metric, dims in custom:
        assert dims["service"] == service, metric
        assert set(dims) == ({"service", "provider"} if metric in by_provider else {"service"}), metric
    for metric in by_provider:
        assert {dims["provider"] for _, m, dims in custom if m == metric} == providers, metric

    emitted = emitted_dimensions(capsys, lambda: EmfUsageMeter().record_submission("wavespeed", "0.25"))
    for metric in ("Submissions", "EstimatedCostUsd"):
        assert emitted[metric] == {"@namespace": namespace, "service": service, "provider": "wavespeed"}

    percentiles = set()
    for widget in body["widgets"]:
        if widget["type"] != "metric":
            continue
        for row in widget["properties"]["metrics"]:
            options = row[-1] if isinstance(row[-1], dict) else {}
            if row[0] == namespace and row[1] == "EndToEndSeconds":
                percentiles.add(options.get("stat", widget["properties"]["stat"]))
    assert percentiles == {"p50", "p90"}


def test_dashboard_alarm_widget_shows_every_alarm(template: dict[str, Any], resources: dict[str, Any]) -> None:
    body, _ = dashboard_body(template)
    (widget,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert sorted(widget["properties"]["alarms"]) == sorted(f"<{name}.Arn>" for name in alarms(resources))


def test_monitoring_outputs(template: dict[str, Any]) -> None:
    """Given an operator after deploying, then the outputs name the alarm topic and the dashboard (with its URL)."""
    outputs = template["Outputs"]
    assert outputs["AlarmTopicArn"]["Value"] == {"Ref": "AlarmTopic"}
    assert outputs["DashboardName"]["Value"] == {"Ref": "Dashboard"}
    url = outputs["DashboardUrl"]["Value"]["Fn::Sub"]
    assert url.startswith("https://${AWS::Region}.console.aws.amazon.com/cloudwatch/")
    assert url.endswith("#dashboards:name=${Dashboard}")


def test_every_log_group_keeps_logs_for_log_retention_days(template: dict[str, Any], resources: dict[str, Any]) -> None:
    """Given log groups are created by the stack, then each has the LogRetentionDays retention: the functions' own
    (checked per function above) and the API's access log group, which is the one the stage writes to."""
    groups = {n: r for n, r in resources.items() if r["Type"] == "AWS::Logs::LogGroup"}
    assert {props(resources, f)["LoggingConfig"]["LogGroup"]["Ref"] for f in FUNCTIONS} < set(groups)
    for name, group in groups.items():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}, name
    access = props(resources, "WebhookApi")["AccessLogSetting"]["Fn::If"]
    assert access[0] == resources["WebhookApiAccessLogGroup"]["Condition"] == "HasApiAccessLogging"
    assert access[1]["DestinationArn"] == {"Fn::GetAtt": ["WebhookApiAccessLogGroup", "Arn"]}
    assert template["Parameters"]["LogRetentionDays"]["Default"] == 30


# --------------------------------------------------------------------------------------------------- events


@pytest.mark.parametrize("path", sorted(EVENTS.glob("*.json")), ids=lambda p: p.name)
def test_every_sample_event_is_json(path: Path) -> None:
    """Given a sample event for `sam local invoke -e`, then it parses as a JSON object."""
    assert isinstance(json.loads(path.read_text()), dict)


def test_sample_events_present() -> None:
    """Given the handlers' tests load them, then all five sample events exist."""
    names = {p.name for p in EVENTS.glob("*.json")}
    assert {
        "s3_put_image.json",
        "s3_put_audio.json",
        "webhook_wavespeed_completed.json",
        "schedule.json",
        "finalize_output_ready.json",
    } <= names


def test_s3_events_carry_url_encoded_inbox_keys() -> None:
    """Given S3 URL-encodes keys (+ for space), then the samples do too, and the audio arrives as multipart."""
    image = load_event("s3_put_image.json")["Records"][0]
    audio = load_event("s3_put_audio.json")["Records"][0]
    assert image["s3"]["object"]["key"] == "inbox/alice+smith/Face+Photo.PNG"
    assert image["eventName"] == "ObjectCreated:Put"
    assert audio["s3"]["object"]["key"] == "inbox/alice+smith/voice.mp3"
    assert audio["eventName"] == "ObjectCreated:CompleteMultipartUpload"
    assert audio["s3"]["object"]["eTag"].endswith("-2")


def test_webhook_event_signature_verifies_and_its_url_carries_the_tasks_callback_token() -> None:
    """Given the WaveSpeed scheme (HMAC-SHA256 over id.timestamp.body, key = secret without whsec_ as ASCII
    bytes, lowercase hex, header v3,<hex>), when the sample is verified with the test secret, then it matches; and
    its query carries the task id and the callback token derived for that task with the tests' callback key."""
    event = load_event("webhook_wavespeed_completed.json")
    headers = event["headers"]
    whsec = "whsec_test_events_secret"
    key = whsec[len("whsec_") :].encode("ascii")
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{event['body']}".encode()
    expected = hmac.new(key, signed, hashlib.sha256).hexdigest()
    version, signature = headers["webhook-signature"].split(",", 1)
    assert version == "v3"
    assert hmac.compare_digest(signature, expected)
    # A different secret or a changed body must not verify.
    assert not hmac.compare_digest(signature, hmac.new(b"other", signed, hashlib.sha256).hexdigest())
    tampered = signed.replace(b'"completed"', b'"failed"')
    assert tampered != signed
    assert not hmac.compare_digest(signature, hmac.new(key, tampered, hashlib.sha256).hexdigest())
    assert event["isBase64Encoded"] is False
    assert event["pathParameters"] == {"provider": "wavespeed"}
    task_id = "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e01"
    assert event["queryStringParameters"] == callback_query("wavespeed", task_id)
    assert event["multiValueQueryStringParameters"] == {
        name: [value] for name, value in callback_query("wavespeed", task_id).items()
    }
    # The token is the task's, for this provider only: another task's or another provider's is not it.
    tokens = CallbackTokens(lambda: [CALLBACK_KEY])
    assert tokens.accepts("wavespeed", task_id, event["queryStringParameters"]["token"])
    assert not tokens.accepts("cometapi", task_id, event["queryStringParameters"]["token"])
    assert not tokens.accepts("wavespeed", "0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e02", event["queryStringParameters"]["token"])
    assert event["requestContext"]["stage"] == "v1"
    prediction = json.loads(event["body"])
    assert prediction["status"] == "completed"
    assert event["body"] == json.dumps(prediction, separators=(",", ":"))


def test_finalize_event_is_an_output_ready_transition() -> None:
    """Given the finalize sample, then it is a MODIFY from PROCESSING (v3) to OUTPUT_READY (v4) with both images."""
    record = load_event("finalize_output_ready.json")["Records"][0]
    assert record["eventName"] == "MODIFY"
    assert record["eventSource"] == "aws:dynamodb"
    stream = record["dynamodb"]
    assert stream["Keys"] == {"pk": {"S": "TASK#0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e01"}}
    assert stream["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert (stream["OldImage"]["status"], stream["OldImage"]["version"]) == ({"S": "PROCESSING"}, {"N": "3"})
    assert (stream["NewImage"]["status"], stream["NewImage"]["version"]) == ({"S": "OUTPUT_READY"}, {"N": "4"})
    assert stream["NewImage"]["job"] == {"S": "alice smith"}
