"""template.yaml as `sam deploy` hands it to CloudFormation: each test guards one defect that made a deploy fail, or
deploy something other than what the template means.

The template is transformed by the SAM translator itself (avatar_local.twin.sam_transform), and the values
CloudFormation would compute are resolved with avatar_local.twin.template.Resolver, for stacks of the names and regions
people use.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from avatar_local.twin.sam_transform import transform
from avatar_local.twin.stack import api_stage_names, require_invoke_permission
from avatar_local.twin.template import Resolver, TemplateError, load_template, schedule_interval_seconds

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "avatar-pipeline"
# Stack names CloudFormation accepts (a letter, then letters, digits and hyphens) that an S3 name may not contain:
# capitals, and too long for a name made of stack name, account and region to stay within 63 characters.
LONG_STACK = "My-Avatar-Pipeline-Production-Stack-With-A-Long-Name"
STACKS_AND_REGIONS = [
    (LONG_STACK, "ap-southeast-2"),
    ("AvatarPipeline", "eu-central-1"),
    ("avatar", "us-east-1"),
    ("A" + "b" * 127, "ap-northeast-3"),  # the longest stack name CloudFormation accepts
]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE)


@pytest.fixture(scope="module")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    return transform(template, REGION)


class DeployedStack(Resolver):
    """The values CloudFormation gives one stack: a Resolver whose AWS::StackId may be given (CloudFormation ends it
    with a UUID of its own, new for every stack it creates), and whose partition may be another than aws."""

    def __init__(
        self,
        template: dict[str, Any],
        *,
        stack_id: str | None = None,
        partition: str = "aws",
        url_suffix: str = "amazonaws.com",
        **options: Any,
    ) -> None:
        options.setdefault("stack_name", STACK)
        options.setdefault("region", REGION)
        options.setdefault("account_id", ACCOUNT)
        super().__init__(template, **options)
        self._stack_id = stack_id
        self._partition = partition
        self._url_suffix = url_suffix

    @property
    def partition(self) -> str:
        return self._partition

    @property
    def url_suffix(self) -> str:
        return self._url_suffix

    def pseudo_parameter(self, name: str) -> Any:
        if name == "AWS::StackId" and self._stack_id is not None:
            return self._stack_id
        return super().pseudo_parameter(name)


def bucket_name(transformed: dict[str, Any], stack: Resolver) -> str:
    return stack.resolve_str(transformed["Resources"]["MediaBucket"]["Properties"]["BucketName"], "BucketName")


def s3_bucket_name_problems(name: str) -> list[str]:
    """What makes `name` no valid name of a general purpose S3 bucket (S3 user guide, bucket naming rules)."""
    problems = []
    if not 3 <= len(name) <= 63:
        problems.append(f"{len(name)} characters, not 3 to 63")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", name):
        problems.append("not lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit")
    if ".." in name:
        problems.append("two adjacent dots")
    try:
        ipaddress.IPv4Address(name)
        problems.append("an IP address")
    except ValueError:
        pass
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")):
        problems.append("a reserved prefix")
    if name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")):
        problems.append("a reserved suffix")
    return problems


def walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(path, value) of every scalar under node; the strings of Fn::Sub and Fn::Join included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))
    else:
        yield path, node


def statements_of(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        statement
        for policy in role["Properties"].get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allows(statements: list[dict[str, Any]], action: str, resource: str) -> bool:
    """Whether an Allow statement grants `action` on `resource` (IAM's * wildcards; actions case-insensitively)."""
    return any(
        statement["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase(action.lower(), granted.lower()) for granted in as_list(statement["Action"]))
        and any(fnmatch.fnmatchcase(resource, granted) for granted in as_list(statement["Resource"]))
        for statement in statements
    )


# ------------------------------------------------------------------------------------------ (a) the API's stages


def test_given_the_webhook_api_when_sam_transforms_it_then_it_is_deployed_to_the_v1_stage_only(
    transformed: dict[str, Any],
) -> None:
    """Given WebhookApi's stage v1 carries the throttling, the tracing setting and logging, when SAM transforms the
    template, then the API is deployed to v1 alone: no Deployment names a stage of its own (SAM's "Stage", which has
    none of v1's settings and no throttling), and the one Stage resource is v1's: untraced (a trace would record each
    callback's URL, token included) and throttled at the WebhookThrottle* parameters, which resolve to positive
    limits."""
    resources = transformed["Resources"]
    assert api_stage_names(transformed, "WebhookApi") == ["v1"]
    deployments = {name: r for name, r in resources.items() if r["Type"] == "AWS::ApiGateway::Deployment"}
    assert deployments
    assert [name for name, r in deployments.items() if "StageName" in r["Properties"]] == []
    stages = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApiGateway::Stage"]
    assert len(stages) == 1
    (stage,) = stages
    assert (stage["StageName"], stage["RestApiId"]) == ("v1", {"Ref": "WebhookApi"})
    assert stage["DeploymentId"] == {"Ref": next(iter(deployments))}
    assert stage["TracingEnabled"] is False
    deployed = DeployedStack(transformed)
    (setting,) = stage["MethodSettings"]
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    assert (setting["ThrottlingRateLimit"], setting["ThrottlingBurstLimit"]) == (
        {"Ref": "WebhookThrottleRate"},
        {"Ref": "WebhookThrottleBurst"},
    )
    rate, burst = (float(deployed.resolve_str(setting[key])) for key in ("ThrottlingRateLimit", "ThrottlingBurstLimit"))
    assert rate > 0
    assert burst > 0


def test_given_a_per_address_limit_when_deployed_then_the_firewall_guards_the_v1_stage_and_only_then(
    transformed: dict[str, Any],
) -> None:
    """Given WebhookRateLimitPerIp, when SAM has transformed the template (WebhookApi.Stage becomes the stage
    resource), then the web ACL's association names the ARN of the deployed v1 stage, and waits for it; with the
    default 0 neither the ACL nor its association is created."""
    resources = transformed["Resources"]
    (stage_id,) = [name for name, r in resources.items() if r["Type"] == "AWS::ApiGateway::Stage"]
    association = resources["WebhookFirewallAssociation"]
    assert {resources[name]["Condition"] for name in ("WebhookFirewall", "WebhookFirewallAssociation")} == {
        "HasWebhookFirewall"
    }
    assert stage_id in association["Properties"]["ResourceArn"]["Fn::Sub"]
    region = "eu-central-1"
    stack = DeployedStack(
        transformed,
        region=region,
        parameters={"WebhookRateLimitPerIp": "500"},
        resource_values={"WebhookApi": "abc123defg", stage_id: "v1"},
    )
    assert stack.condition("HasWebhookFirewall") is True
    assert stack.resolve_str(association["Properties"]["ResourceArn"]) == (
        f"arn:aws:apigateway:{region}::/restapis/abc123defg/stages/v1"
    )
    for parameters in ({}, {"WebhookRateLimitPerIp": "0"}):
        assert DeployedStack(transformed, parameters=parameters).condition("HasWebhookFirewall") is False


# ------------------------------------------------------------------------------------------ (b) a failed first deploy


def test_given_a_first_deploy_that_rolls_back_when_it_is_retried_then_the_bucket_it_created_is_gone(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    """Given a first deploy that fails and rolls back, then CloudFormation deletes the bucket it had just created
    (still empty), so the retry does not fail on it; a stack deleted or a bucket replaced later keeps it."""
    for resources in (template["Resources"], transformed["Resources"]):
        bucket = resources["MediaBucket"]
        assert bucket["DeletionPolicy"] == "RetainExceptOnCreate"
        assert bucket["UpdateReplacePolicy"] == "Retain"


# ------------------------------------------------------------------------------------------ (c) the bucket's name


@pytest.mark.parametrize(("stack_name", "region"), STACKS_AND_REGIONS)
def test_given_a_long_or_capitalised_stack_name_when_deployed_then_the_bucket_name_is_a_valid_s3_name(
    transformed: dict[str, Any], stack_name: str, region: str
) -> None:
    """Given a stack name CloudFormation accepts but S3 would not (capitals, or too long to fit 63 characters with
    the account and the region), when the stack is deployed with no MediaBucketName, then its bucket's name is a
    valid S3 bucket name: the account, avatar-media and the last group of the stack id's UUID."""
    stack = DeployedStack(transformed, stack_name=stack_name, region=region)
    stack_id = stack.resolve_str({"Ref": "AWS::StackId"})

    name = bucket_name(transformed, stack)

    assert s3_bucket_name_problems(name) == [], name
    assert name == f"{ACCOUNT}-avatar-media-{stack_id.rsplit('-', 1)[-1]}"


def test_given_two_stacks_of_one_name_when_each_is_created_then_each_bucket_name_follows_its_stack_id(
    transformed: dict[str, Any],
) -> None:
    """Given a stack created, deleted (its bucket retained) and created again under the same name, then each
    bucket's name comes from its own stack id, which CloudFormation makes new for every stack it creates: the second
    bucket is not the first one's name."""
    names = []
    for _ in range(2):
        stack_uuid = uuid.uuid4()
        stack_id = f"arn:aws:cloudformation:ap-southeast-2:{ACCOUNT}:stack/{LONG_STACK}/{stack_uuid}"
        stack = DeployedStack(transformed, stack_id=stack_id, stack_name=LONG_STACK, region="ap-southeast-2")
        names.append(bucket_name(transformed, stack))
        assert names[-1] == f"{ACCOUNT}-avatar-media-{str(stack_uuid).rsplit('-', 1)[-1]}"
    assert names[0] != names[1]


def test_given_a_media_bucket_name_when_deployed_then_the_bucket_has_exactly_that_name(
    transformed: dict[str, Any],
) -> None:
    """Given MediaBucketName "my-bucket", then the bucket is named exactly that, whatever the stack's name."""
    for stack_name, region in STACKS_AND_REGIONS:
        stack = DeployedStack(
            transformed, stack_name=stack_name, region=region, parameters={"MediaBucketName": "my-bucket"}
        )
        assert bucket_name(transformed, stack) == "my-bucket"


@pytest.mark.parametrize("parameters", [{}, {"MediaBucketName": "my-bucket"}], ids=["default name", "given name"])
def test_given_the_bucket_notifies_submit_then_submits_environment_policy_and_permission_name_that_same_bucket(
    transformed: dict[str, Any], parameters: dict[str, str]
) -> None:
    """Given SubmitFunction names the bucket by the expression the bucket's name is (a reference would be circular),
    when both are resolved for a deployed stack, then Submit's MEDIA_BUCKET, the bucket whose inbox/ its role may read
    (and list) and the bucket its invoke permission names are all the bucket's own name, and the other functions
    reference the bucket."""
    resources = transformed["Resources"]
    stack = DeployedStack(transformed, stack_name=LONG_STACK, region="ap-southeast-2", parameters=parameters)
    name = bucket_name(transformed, stack)
    stack.resource_values["MediaBucket"] = name

    submit_environment = resources["SubmitFunction"]["Properties"]["Environment"]["Variables"]
    assert stack.resolve_str(submit_environment["MEDIA_BUCKET"]) == name
    s3_grants = [
        (action, stack.resolve(statement["Resource"]))
        for statement in statements_of(resources["SubmitFunctionRole"])
        for action in as_list(statement["Action"])
        if action.startswith("s3:")
    ]
    assert s3_grants == [("s3:GetObject", f"arn:aws:s3:::{name}/inbox/*"), ("s3:ListBucket", f"arn:aws:s3:::{name}")]
    permission = resources["SubmitFunctionInboxUploadPermission"]["Properties"]
    assert stack.resolve_str(permission["SourceArn"]) == f"arn:aws:s3:::{name}"
    for function in ("DispatchFunction", "WebhookFunction", "PollerFunction", "FinalizeFunction"):
        environment = resources[function]["Properties"]["Environment"]["Variables"]
        assert environment["MEDIA_BUCKET"] == {"Ref": "MediaBucket"}, function


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("", True),  # the default: the stack names the bucket
        ("my-bucket", True),
        ("abc", True),
        ("media.example.com", True),
        ("0-avatar-media-9", True),
        ("a" * 63, True),
        ("My_Bucket", False),
        ("MyBucket", False),
        ("my_bucket", False),
        ("ab", False),
        ("a" * 64, False),
        ("-my-bucket", False),
        ("my-bucket-", False),
        ("my bucket", False),
    ],
)
def test_given_a_media_bucket_name_parameter_then_only_s3_bucket_names_are_accepted(
    template: dict[str, Any], value: str, accepted: bool
) -> None:
    """Given the MediaBucketName parameter, then its AllowedPattern lets CloudFormation refuse a name S3 would refuse
    before it creates anything, and accepts the names S3 accepts (and empty, for the stack's own name)."""
    parameter = template["Parameters"]["MediaBucketName"]
    assert parameter["Default"] == ""
    assert bool(re.fullmatch(parameter["AllowedPattern"], value)) is accepted
    stack = DeployedStack(template, parameters={"MediaBucketName": value})
    if accepted:
        assert stack.resolve({"Ref": "MediaBucketName"}) == value
    else:
        with pytest.raises(TemplateError, match="AllowedPattern"):
            stack.resolve({"Ref": "MediaBucketName"})


# ------------------------------------------------------------------------------------------ (d) other partitions


def test_given_any_partition_then_no_string_of_the_template_hard_codes_amazonaws_com_but_service_principals(
    transformed: dict[str, Any],
) -> None:
    """Given AWS's other partitions (China's URLs end in amazonaws.com.cn), when every string of the transformed
    template is read (the texts of Fn::Sub and Fn::Join included), then amazonaws.com appears only in service
    principals (a Principal's Service, a Lambda permission's Principal); and the webhook URL, resolved in aws-cn,
    ends in that partition's suffix."""
    hard_coded = []
    for path, value in walk(transformed):
        if not isinstance(value, str) or "amazonaws.com" not in value:
            continue
        service_principal = re.fullmatch(r"[a-z0-9-]+\.amazonaws\.com", value) is not None and (
            tuple(p for p in path if isinstance(p, str))[-2:] == ("Principal", "Service")
            or (
                path[0] == "Resources"
                and path[2:] == ("Properties", "Principal")
                and transformed["Resources"][path[1]]["Type"] == "AWS::Lambda::Permission"
            )
        )
        if not service_principal:
            hard_coded.append((path, value))
    assert hard_coded == []

    china = DeployedStack(
        transformed,
        region="cn-north-1",
        partition="aws-cn",
        url_suffix="amazonaws.com.cn",
        resource_values={"WebhookApi": "abc123defg"},
    )
    url = "https://abc123defg.execute-api.cn-north-1.amazonaws.com.cn/v1"
    for function in ("DispatchFunction", "PollerFunction"):
        environment = transformed["Resources"][function]["Properties"]["Environment"]["Variables"]
        assert china.resolve(environment["WEBHOOK_BASE_URL"]) == url, function
    assert china.resolve(transformed["Outputs"]["WebhookBaseUrl"]["Value"]) == url


# ------------------------------------------------------------------------------------------ (e) the shared layer


def test_given_the_shared_layer_then_it_is_built_for_arm64_and_named_after_its_stack(
    template: dict[str, Any], transformed: dict[str, Any]
) -> None:
    """Given functions that run on arm64, then `sam build` builds the layer (its compiled dependencies) for arm64
    too; and, layer names being account-wide, each stack publishes a layer named after itself, within Lambda's
    rules for layer names, rather than new versions of one layer every stack of the account shares."""
    layer = template["Resources"]["SharedLayer"]
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert template["Globals"]["Function"]["Architectures"] == ["arm64"]

    (published,) = [r for r in transformed["Resources"].values() if r["Type"] == "AWS::Lambda::LayerVersion"]
    names = {}
    for stack_name, region in STACKS_AND_REGIONS:
        stack = DeployedStack(transformed, stack_name=stack_name, region=region)
        names[stack_name] = stack.resolve_str(published["Properties"]["LayerName"], "LayerName")
    for stack_name, name in names.items():
        assert stack_name in name
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,140}", name), name
    assert len(set(names.values())) == len(names)


# ------------------------------------------------------------------------------------------ (f) the poll schedule


@pytest.mark.parametrize(
    ("expression", "accepted"),
    [
        ("rate(1 minute)", True),
        ("rate(5 minutes)", True),
        ("rate(2 hours)", True),
        ("rate(1 day)", True),
        ("cron(0/2 * * * ? *)", True),
        ("rate(1 minutes)", False),
        ("rate(5 minute)", False),
        ("rate(0 minutes)", False),
        ("rate(30 seconds)", False),
        ("rate(1 week)", False),
        ("cron(0/2 * * * ?)", False),
        ("every 5 minutes", False),
        ("", False),
    ],
)
def test_given_a_poll_schedule_then_only_eventbridge_schedule_expressions_are_accepted(
    template: dict[str, Any], expression: str, accepted: bool
) -> None:
    """Given the PollSchedule parameter, then CloudFormation refuses an expression EventBridge would refuse (which
    otherwise fails the deploy halfway, at the rule) before it creates anything; and each rate() it accepts is one
    the local stack's scheduler runs."""
    parameter = template["Parameters"]["PollSchedule"]
    pattern = parameter.get("AllowedPattern")
    assert pattern is not None, "PollSchedule has no AllowedPattern"
    assert re.fullmatch(pattern, parameter["Default"])
    assert bool(re.fullmatch(pattern, expression)) is accepted
    stack = DeployedStack(template, parameters={"PollSchedule": expression})
    if accepted:
        assert stack.resolve({"Ref": "PollSchedule"}) == expression
        if expression.startswith("rate("):
            assert schedule_interval_seconds(expression) > 0
    else:
        with pytest.raises(TemplateError, match="AllowedPattern"):
            stack.resolve({"Ref": "PollSchedule"})


# ------------------------------------------------------------------------------------------ (g) who may invoke submit


def test_given_the_inbox_notification_then_only_this_stacks_bucket_may_invoke_submit(
    transformed: dict[str, Any],
) -> None:
    """Given S3 invokes SubmitFunction for inbox/ uploads, then the one permission S3 has to invoke anything names
    the stack's own bucket (SourceArn) in the stack's account (SourceAccount): another bucket of the account may
    not invoke Submit, as SAM's S3 event (which set no SourceArn) let it; and the bucket waits for the permission."""
    resources = transformed["Resources"]
    region = "ap-southeast-2"
    stack = DeployedStack(
        transformed,
        stack_name=LONG_STACK,
        region=region,
        resource_values={"WebhookApi": "abc123defg"},
        attributes={("PollerFunctionPollTick", "Arn"): f"arn:aws:events:{region}:{ACCOUNT}:rule/{LONG_STACK}-poll"},
    )
    name = bucket_name(transformed, stack)
    # What a function's Ref and Fn::GetAtt Arn give (every function's, for every permission of the template).
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::Lambda::Function":
            function = stack.resolve_str(resource["Properties"]["FunctionName"])
            stack.resource_values[logical_id] = function
            stack.attributes[(logical_id, "Arn")] = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{function}"
    submit = stack.resource_values["SubmitFunction"]

    s3_permissions = [
        logical_id
        for logical_id, resource in resources.items()
        if resource["Type"] == "AWS::Lambda::Permission" and resource["Properties"]["Principal"] == "s3.amazonaws.com"
    ]
    assert s3_permissions == ["SubmitFunctionInboxUploadPermission"]
    permission = stack.resolve(resources["SubmitFunctionInboxUploadPermission"]["Properties"])
    assert permission == {
        "Action": "lambda:InvokeFunction",
        "FunctionName": submit,
        "Principal": "s3.amazonaws.com",
        "SourceArn": f"arn:aws:s3:::{name}",
        "SourceAccount": ACCOUNT,
    }
    require_invoke_permission(transformed, stack, "SubmitFunction", "s3.amazonaws.com", f"arn:aws:s3:::{name}")
    with pytest.raises(TemplateError, match="SubmitFunction"):
        require_invoke_permission(
            transformed, stack, "SubmitFunction", "s3.amazonaws.com", "arn:aws:s3:::another-bucket-of-the-account"
        )
    bucket = resources["MediaBucket"]
    assert "SubmitFunctionInboxUploadPermission" in as_list(bucket["DependsOn"])
    (notification,) = stack.resolve(bucket["Properties"]["NotificationConfiguration"])["LambdaConfigurations"]
    assert notification["Function"] == stack.attributes[("SubmitFunction", "Arn")]


# ------------------------------------------------------------------------------------------ (h) the poller's copies


def test_given_the_poller_discards_stalled_copies_then_its_role_may_list_and_abort_uploads_under_outputs(
    transformed: dict[str, Any],
) -> None:
    """Given the poller ends copies that stalled (discard_partial_copies lists the bucket's unfinished multipart
    uploads and aborts them), then its role, as SAM generates it, allows both: the abort under outputs/ only,
    never on a user's upload. (tests/tooling/test_local_iam.py makes the same calls with the role, enforced.)"""
    name = "123456789012-avatar-media-0123456789ab"
    stack = DeployedStack(
        transformed,
        resource_values={"MediaBucket": name},
        attributes={("MediaBucket", "Arn"): f"arn:aws:s3:::{name}"},
    )
    statements = [
        stack.resolve(statement)
        for statement in statements_of(transformed["Resources"]["PollerFunctionRole"])
        if any(str(action).startswith("s3:") for action in as_list(statement["Action"]))
    ]

    assert allows(statements, "s3:ListBucketMultipartUploads", f"arn:aws:s3:::{name}")
    assert allows(statements, "s3:AbortMultipartUpload", f"arn:aws:s3:::{name}/outputs/job/task.mp4")
    assert not allows(statements, "s3:AbortMultipartUpload", f"arn:aws:s3:::{name}/inbox/job/face.png")
    assert not allows(statements, "s3:AbortMultipartUpload", "arn:aws:s3:::another-bucket/outputs/job/task.mp4")


# ------------------------------------------------------------------------------------------ (i) what each reads


# The keys each function may get from the bucket: the inputs (submit pairs and checks them, dispatch presigns them),
# the videos (finalize presigns the download link), both for the poller (the fallback of both); the webhook nothing.
PROBE_KEYS = {"inbox/": "inbox/alice smith/face.png", "outputs/": "outputs/alice smith/task.mp4", "other": "job.json"}
READABLE_PREFIXES = {
    "SubmitFunction": {"inbox/"},
    "DispatchFunction": {"inbox/"},
    "WebhookFunction": set(),
    "PollerFunction": {"inbox/", "outputs/"},
    "FinalizeFunction": {"outputs/"},
}


@pytest.mark.parametrize("function", READABLE_PREFIXES)
def test_given_each_functions_role_then_it_may_get_objects_under_its_own_prefixes_only(
    transformed: dict[str, Any], function: str
) -> None:
    """Given each function's role as SAM generates it, resolved for a deployed stack, then s3:GetObject is allowed on
    exactly the prefixes its work reads (never the whole bucket, never another bucket); and a function that reads any
    may list the bucket, so that a missing key answers 404 rather than 403. The webhook has no S3 action at all."""
    resources = transformed["Resources"]
    prefixes = READABLE_PREFIXES[function]
    stack = DeployedStack(transformed, stack_name=LONG_STACK, region="ap-southeast-2")
    name = bucket_name(transformed, stack)
    stack.resource_values["MediaBucket"] = name
    stack.attributes[("MediaBucket", "Arn")] = f"arn:aws:s3:::{name}"
    statements = [
        stack.resolve(statement)
        for statement in statements_of(resources[f"{function}Role"])
        if any(str(action).startswith("s3:") for action in as_list(statement["Action"]))
    ]

    readable = {
        prefix for prefix, key in PROBE_KEYS.items() if allows(statements, "s3:GetObject", f"arn:aws:s3:::{name}/{key}")
    }

    assert readable == prefixes
    for key in PROBE_KEYS.values():
        assert not allows(statements, "s3:GetObject", f"arn:aws:s3:::another-bucket/{key}")
    assert allows(statements, "s3:ListBucket", f"arn:aws:s3:::{name}") is bool(prefixes)
    assert not allows(statements, "s3:ListBucket", "arn:aws:s3:::another-bucket")
    if not prefixes:
        assert statements == []
