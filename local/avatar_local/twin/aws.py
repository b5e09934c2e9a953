"""Embedded AWS: moto in server mode, in this process, with template.yaml's resources created in it."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import boto3
from moto.iam.aws_managed_policies import aws_managed_policies_data
from moto.iam.models import AWSManagedPolicy, iam_backends
from moto.moto_server.threaded_moto_server import ThreadedMotoServer

from avatar_local.twin.moto_dynamodb import faithful_dynamodb_writes
from avatar_local.twin.moto_iam import enforced_iam
from avatar_local.twin.moto_s3 import faithful_s3_limits
from avatar_local.twin.template import Resolver

ACCOUNT_ID = "123456789012"
# Lambda's longest role session; each function's credentials are made once, when the local stack starts.
ROLE_SESSION_SECONDS = 43200


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def for_boto3(self) -> dict[str, str]:
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            **({"aws_session_token": self.session_token} if self.session_token else {}),
        }

    def environment(self) -> dict[str, str]:
        """As Lambda hands a function its role's credentials: in the environment."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            **({"AWS_SESSION_TOKEN": self.session_token} if self.session_token else {}),
        }


# The operator's credentials (the developer at this machine, the tests, the CLI): the account's root user, allowed
# everything. Nothing here can reach real AWS.
OPERATOR = Credentials("local", "local")
LOCAL_CREDENTIALS = OPERATOR.for_boto3()


class AwsClients(Protocol):
    """What AWS calls are made with: clients of one identity in the embedded AWS."""

    @property
    def region(self) -> str: ...

    def client(self, service: str) -> Any: ...


@dataclass(frozen=True)
class RoleSession:
    """Clients signed with a role session's credentials, e.g. what Lambda uses to read a function's event sources."""

    endpoint_url: str
    region: str
    credentials: Credentials

    def client(self, service: str) -> Any:
        return boto3.client(
            service, endpoint_url=self.endpoint_url, region_name=self.region, **self.credentials.for_boto3()
        )


def _list_moto_modules_once() -> None:
    """moto's server lists its own package directory on disk for every request it routes (to tell a service name
    from a host name); the list never changes while it runs, so it is read once."""
    from moto import backends

    if getattr(backends.list_of_moto_modules, "listed_once", False):
        return
    modules = tuple(backends.list_of_moto_modules())

    def listed() -> tuple[str, ...]:
        return modules

    listed.listed_once = True  # type: ignore[attr-defined]
    backends.list_of_moto_modules = listed  # type: ignore[assignment]


class EmbeddedAws:
    """moto in server mode. With `enforce_iam` (the default) it authorises every request as IAM would: only the
    operator's credentials are allowed everything (see avatar_local.twin.moto_iam)."""

    def __init__(self, region: str, enforce_iam: bool = True) -> None:
        self.region = region
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._patches = contextlib.ExitStack()
        self._enforce_iam = enforce_iam
        self.endpoint_url = ""

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        _list_moto_modules_once()
        self._patches.enter_context(faithful_dynamodb_writes())
        self._patches.enter_context(faithful_s3_limits())
        if self._enforce_iam:
            self._patches.enter_context(enforced_iam(OPERATOR.access_key_id))
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()
        self._patches.close()

    def __enter__(self) -> EmbeddedAws:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region, **LOCAL_CREDENTIALS)

    def assume_role(self, role_arn: str, session_name: str) -> RoleSession:
        """A session of `role_arn`, as Lambda starts one for a function's execution role."""
        answer = self.client("sts").assume_role(
            RoleArn=role_arn, RoleSessionName=session_name[:64], DurationSeconds=ROLE_SESSION_SECONDS
        )["Credentials"]
        credentials = Credentials(answer["AccessKeyId"], answer["SecretAccessKey"], answer["SessionToken"])
        return RoleSession(self.endpoint_url, self.region, credentials)


@dataclass
class CreatedResources:
    """What each logical id became in the embedded AWS: its Ref value and its attributes."""

    refs: dict[str, str] = field(default_factory=dict)
    attributes: dict[tuple[str, str], str] = field(default_factory=dict)


DATA_RESOURCE_TYPES = frozenset(
    {
        "AWS::S3::Bucket",
        "AWS::DynamoDB::Table",
        "AWS::SNS::Topic",
        "AWS::SQS::Queue",
        "AWS::SecretsManager::Secret",
        "AWS::IAM::User",
        "AWS::IAM::AccessKey",
    }
)
_TABLE_CREATE_KEYS = ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode")
# A queue's properties that change how it delivers (SQS attributes of the same names). Its RedrivePolicy is set once
# every queue exists, since it names another queue that may come later in the template.
_QUEUE_ATTRIBUTES = (
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "MaximumMessageSize",
    "ReceiveMessageWaitTimeSeconds",
    "FifoQueue",
    "ContentBasedDeduplication",
)
_LOCAL_PROPERTIES: dict[str, tuple[str, ...]] = {
    "AWS::S3::Bucket": ("BucketName",),
    "AWS::DynamoDB::Table": ("TableName", *_TABLE_CREATE_KEYS, "StreamSpecification", "TimeToLiveSpecification"),
    "AWS::SNS::Topic": ("TopicName",),
    "AWS::SQS::Queue": ("QueueName", *_QUEUE_ATTRIBUTES),
    "AWS::SecretsManager::Secret": ("Name", "SecretString", "GenerateSecretString"),
    "AWS::IAM::User": ("UserName", "Policies"),
    "AWS::IAM::AccessKey": ("UserName",),
}


def create_resources(
    aws: EmbeddedAws,
    template: Mapping[str, Any],
    resolver: Resolver,
    stack_name: str,
    secret_values: Mapping[str, str],
) -> CreatedResources:
    """Create the template's data resources (bucket, table, topic, queues, secrets, IAM users and their keys) in the
    embedded AWS, in the template's order (a resource may only refer to those before it).

    Compute (functions, API, layer) is run by the local runtime instead; the functions' roles come from the SAM
    transform (`create_roles`); logs, alarms and bucket policies have no local effect.
    A queue gets the properties that change how it delivers (visibility timeout, retention, delay, FIFO, redrive).
    """
    created = CreatedResources()
    account = ACCOUNT_ID
    redrive_policies: dict[str, Any] = {}  # queue URL -> its RedrivePolicy, unresolved
    for logical_id, resource in template["Resources"].items():
        kind = resource["Type"]
        if kind not in DATA_RESOURCE_TYPES or (
            "Condition" in resource and not resolver.condition(resource["Condition"])
        ):
            continue
        # Only what creating the resource here uses is resolved: encryption keys, policies and the like have no local
        # effect, and may name resources (a KMS key) that are not created here.
        raw = resource.get("Properties", {})
        props = resolver.resolve({key: raw[key] for key in _LOCAL_PROPERTIES[kind] if key in raw})
        if kind == "AWS::S3::Bucket":
            name = props.get("BucketName", f"{stack_name}-{logical_id}".lower())
            aws.client("s3").create_bucket(Bucket=name)
            created.refs[logical_id] = name
            created.attributes[(logical_id, "Arn")] = f"arn:aws:s3:::{name}"
        elif kind == "AWS::DynamoDB::Table":
            name = props.get("TableName", f"{stack_name}-{logical_id}")
            definition = {key: props[key] for key in _TABLE_CREATE_KEYS if key in props}
            if "StreamSpecification" in props:
                definition["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
            description = aws.client("dynamodb").create_table(TableName=name, **definition)["TableDescription"]
            if "TimeToLiveSpecification" in props:
                aws.client("dynamodb").update_time_to_live(
                    TableName=name, TimeToLiveSpecification=props["TimeToLiveSpecification"]
                )
            created.refs[logical_id] = name
            created.attributes[(logical_id, "Arn")] = description["TableArn"]
            if "LatestStreamArn" in description:
                created.attributes[(logical_id, "StreamArn")] = description["LatestStreamArn"]
        elif kind == "AWS::SNS::Topic":
            name = props.get("TopicName", f"{stack_name}-{logical_id}")
            arn = aws.client("sns").create_topic(Name=name)["TopicArn"]
            created.refs[logical_id] = arn
            created.attributes[(logical_id, "TopicName")] = name
        elif kind == "AWS::SQS::Queue":
            # CloudFormation names a FIFO queue it names itself with the .fifo suffix SQS requires.
            fifo = _queue_attribute(props.get("FifoQueue", False)) == "true"
            name = props.get("QueueName", f"{stack_name}-{logical_id}{'.fifo' if fifo else ''}")
            attributes = {key: _queue_attribute(props[key]) for key in _QUEUE_ATTRIBUTES if key in props}
            url = aws.client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            if "RedrivePolicy" in raw:
                redrive_policies[url] = raw["RedrivePolicy"]
            created.refs[logical_id] = url
            created.attributes[(logical_id, "Arn")] = f"arn:aws:sqs:{aws.region}:{account}:{name}"
            created.attributes[(logical_id, "QueueName")] = name
        elif kind == "AWS::SecretsManager::Secret":
            name = props.get("Name", f"{stack_name}-{logical_id}")
            value = secret_values.get(logical_id, props.get("SecretString") or _generated_secret(props))
            arn = aws.client("secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]
            created.refs[logical_id] = arn
        elif kind == "AWS::IAM::User":
            name = props.get("UserName", f"{stack_name}-{logical_id}"[:64])
            user = aws.client("iam").create_user(UserName=name)["User"]
            for policy in props.get("Policies", []):
                aws.client("iam").put_user_policy(
                    UserName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["PolicyDocument"])
                )
            created.refs[logical_id] = name
            created.attributes[(logical_id, "Arn")] = user["Arn"]
        elif kind == "AWS::IAM::AccessKey":
            key = aws.client("iam").create_access_key(UserName=props["UserName"])["AccessKey"]
            created.refs[logical_id] = key["AccessKeyId"]
            created.attributes[(logical_id, "SecretAccessKey")] = key["SecretAccessKey"]
        resolver.resource_values.update(created.refs)
        resolver.attributes.update(created.attributes)
    for url, policy in redrive_policies.items():
        attributes = {"RedrivePolicy": _queue_attribute(resolver.resolve(policy))}
        aws.client("sqs").set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return created


def create_roles(
    aws: EmbeddedAws, transformed: Mapping[str, Any], resolver: Resolver, stack_name: str
) -> dict[str, str]:
    """Create the IAM roles of the SAM-transformed template (each function's execution role, with the policies SAM
    generated for it) in the embedded AWS; returns each role's ARN by logical id (also given to `resolver`)."""
    iam = aws.client("iam")
    arns: dict[str, str] = {}
    for logical_id, resource in transformed["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role" or (
            "Condition" in resource and not resolver.condition(resource["Condition"])
        ):
            continue
        props = resolver.resolve(resource["Properties"])
        # CloudFormation names a role it names itself <stack>-<logical id>-<suffix>, at most 64 characters.
        name = props.get("RoleName", f"{stack_name}-{logical_id}"[:64])
        role = iam.create_role(
            RoleName=name,
            Path=props.get("Path", "/"),
            AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]),
            MaxSessionDuration=int(props.get("MaxSessionDuration", ROLE_SESSION_SECONDS)),
        )["Role"]
        for policy in props.get("Policies", []):
            # SAM's generated policies have no Version, which IAM reads as 2008-10-17 (no policy variables, none used
            # here) and moto refuses: they are given the current one.
            document = {"Version": "2012-10-17", **policy["PolicyDocument"]}
            iam.put_role_policy(RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(document))
        for policy_arn in props.get("ManagedPolicyArns", []):
            _ensure_aws_managed_policy(aws.region, policy_arn)
            iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
        arns[logical_id] = role["Arn"]
        resolver.resource_values[logical_id] = name
        resolver.attributes[(logical_id, "Arn")] = role["Arn"]
    return arns


@functools.cache
def _aws_managed_policy_documents() -> dict[str, Any]:
    return dict(json.loads(aws_managed_policies_data))


def _ensure_aws_managed_policy(region: str, policy_arn: str) -> None:
    """AWS's own managed policies exist in every account; moto loads all of them (slowly) only when asked, so the ones
    the template attaches are added from moto's copy of their documents."""
    backend = iam_backends[ACCOUNT_ID]["aws"]
    if policy_arn in backend.managed_policies or ":iam::aws:policy/" not in policy_arn:
        return
    name = policy_arn.rsplit("/", 1)[-1]
    policy = AWSManagedPolicy.from_data(name, ACCOUNT_ID, region, _aws_managed_policy_documents()[name])
    backend.managed_policies[policy.arn] = policy


def _queue_attribute(value: Any) -> str:
    """A queue property as the SQS attribute value: a string (JSON for a policy, lower case for a boolean)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value).lower() if str(value).lower() in ("true", "false") else str(value)


def subscribe_queue(aws: EmbeddedAws, topic_arn: str, queue_name: str) -> str:
    """A queue that receives every message of `topic_arn`, as a machine subscriber would."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)
    return url


def rule_queue(aws: EmbeddedAws, source: str, queue_name: str) -> str:
    """A queue that receives every event of `source` on the default bus through a rule, as an app's would."""
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = aws.client("events")
    events.put_rule(Name=queue_name, EventPattern=json.dumps({"source": [source]}))
    events.put_targets(Rule=queue_name, Targets=[{"Id": "queue", "Arn": arn}])
    return url


def _generated_secret(props: Mapping[str, Any]) -> str:
    """What CloudFormation makes of GenerateSecretString with a GenerateStringKey: the template's JSON with a random
    string (letters and digits, as ExcludePunctuation asks) of PasswordLength (default 32) under that key."""
    spec = props.get("GenerateSecretString")
    if not spec:
        return ""
    alphabet = string.ascii_letters + string.digits
    value = "".join(secrets.choice(alphabet) for _ in range(int(spec.get("PasswordLength", 32))))
    return json.dumps({**json.loads(spec["SecretStringTemplate"]), spec["GenerateStringKey"]: value})


def secret_json(values: Mapping[str, str]) -> str:
    return json.dumps(dict(values))
