"""Deploy rehearsal: template.yaml as `sam deploy` hands it to CloudFormation, created as a stack in moto.

Two checks, run by ``python -m avatar_local.deploy_checks.rehearsal`` (``make rehearse``), which exits 1 when either
fails:

* :func:`rehearse` transforms template.yaml with the SAM translator (:mod:`avatar_local.twin.sam_transform`, the library
  `sam deploy` uses), uploads each function's and layer's directory as a zip where the transform says the code is
  (``s3://local-artifacts/<dir>``), and creates the transformed template as a stack in moto's CloudFormation, once
  per :class:`Scenario` (the parameters as a user would give them). It fails when the stack is not created
  (CloudFormation's answer is an error, or the stack ends in any status but CREATE_COMPLETE), or when a resource moto
  can create is missing from the stack.
* :func:`check_wildcards` reads every IAM role of the transformed template (inline policies, and the AWS managed
  policies it attaches, from moto's copy of their documents) and fails on any action allowed on Resource ``"*"`` that
  template.yaml's ``Metadata.AvatarPipeline.WildcardResourceActions`` does not explain, and on ``Action: "*"`` or
  ``"<service>:*"`` on ``"*"`` whatever the Metadata says.

What moto 5.2.5's CloudFormation cannot create is reported as *not supported*, with the reason, and left out of the
stack: it has no model for some types (alarms, secrets, subscriptions, API stages, ...) and it would skip them, and
it cannot create a few resources of types it models the way this template defines them (see :func:`_moto_gap`).
Every reference to a resource left out gets a stand-in ARN, so the resources that use it are still created: moto
answers a ``Fn::GetAtt`` of a resource it skipped with a template error, where CloudFormation would create both.

moto keeps its state for the whole process: each rehearsal's stacks are named after ``stack_prefix``, which must be
new to the process (CloudFormation refuses a second stack of a name; names the template derives from the stack's,
functions' and log groups', must be new too).
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import logging
import re
import sys
import time
import traceback
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final

import moto
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from moto.cloudformation.parsing import get_model_map
from moto.iam.aws_managed_policies import aws_managed_policies_data
from samtranslator.model.exceptions import InvalidDocumentException

from avatar_local.twin.aws import EmbeddedAws
from avatar_local.twin.sam_transform import ARTIFACT_BUCKET, transform
from avatar_local.twin.template import Resolver, TemplateError, load_template

__all__ = [
    "SCENARIOS",
    "Outcome",
    "Rehearsal",
    "RehearsalFailed",
    "ResourceResult",
    "Scenario",
    "StackRehearsal",
    "WildcardCheck",
    "WildcardGrant",
    "check_wildcards",
    "format_rehearsal",
    "format_wildcards",
    "main",
    "rehearse",
    "resource_results",
    "stand_ins",
]

ROOT: Final = Path(__file__).resolve().parents[3]
TEMPLATE: Final = ROOT / "template.yaml"
REGION: Final = "us-east-1"
ACCOUNT_ID: Final = "123456789012"  # moto's account
MOTO_VERSION: Final = moto.__version__
# Where template.yaml explains each action a role may be allowed on Resource "*".
METADATA_KEY: Final = "AvatarPipeline"
WILDCARD_KEY: Final = "WildcardResourceActions"
# CloudFormation takes a TemplateBody of at most this many bytes; `sam deploy` uploads a longer template to S3 and
# passes its URL, and so does the rehearsal.
TEMPLATE_BODY_LIMIT: Final = 51_200
STACK_TIMEOUT_SECONDS: Final = 60.0
_SKIPPED_DIRS: Final = frozenset({"__pycache__", "node_modules", ".pytest_cache", ".mypy_cache"})
_SUB_VARIABLE: Final = re.compile(r"\$\{([^!}][^}]*)\}")
_ACTION_KEY: Final = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9*]+$")


class RehearsalFailed(Exception):
    """The rehearsal or the wildcard check found problems (one per line of the message)."""

    def __init__(self, failures: Sequence[str]) -> None:
        super().__init__("\n".join(failures))
        self.failures = tuple(failures)


# ------------------------------------------------------------------------------------------------------- rehearsal


@dataclass(frozen=True)
class Scenario:
    """One deployment of the template: the stack name's suffix, and the parameters the user gives (the rest keep
    their Default)."""

    name: str
    parameters: Mapping[str, str] = field(default_factory=dict)  # "{stack}" in a value: the stack's name

    def values(self, stack_name: str) -> dict[str, str]:
        return {key: value.replace("{stack}", stack_name) for key, value in self.parameters.items()}

    def describe(self, stack_name: str) -> str:
        given = ", ".join(f"{key}={value}" for key, value in self.values(stack_name).items())
        return given or "every parameter at its Default"


SCENARIOS: Final = (
    # What `sam deploy --guided` gives when every prompt is answered with its default.
    Scenario("defaults"),
    # Every optional parameter set, so each conditional resource (and each value a condition picks) is created.
    Scenario(
        "options",
        {
            "NotificationEmail": "ops@example.com",
            "AlarmEmail": "ops@example.com",
            "ApiAccessLogging": "true",
            "MediaBucketName": "{stack}-media",  # bucket names are global, and so is moto's state in this process
        },
    ),
)


class Outcome(Enum):
    CREATED = "created"
    NOT_SUPPORTED = "not supported"
    CONDITION_FALSE = "condition false"
    NOT_CREATED = "NOT CREATED"


@dataclass(frozen=True)
class ResourceResult:
    logical_id: str
    type: str
    outcome: Outcome
    detail: str  # the physical id when created, else why not


@dataclass(frozen=True)
class StackRehearsal:
    scenario: Scenario
    stack_name: str
    status: str
    error: str | None  # CloudFormation's (moto's) answer when creating the stack failed
    resources: tuple[ResourceResult, ...]

    @property
    def failures(self) -> list[str]:
        where = f"stack {self.stack_name} ({self.scenario.describe(self.stack_name)})"
        if self.error is not None:
            return [f"{where}: creating the stack failed: {self.error}"]
        failures = []
        if self.status != "CREATE_COMPLETE":
            failures.append(f"{where}: ended in {self.status}, not CREATE_COMPLETE")
        failures += [
            f"{where}: {result.logical_id} ({result.type}) was not created: {result.detail}"
            for result in self.resources
            if result.outcome is Outcome.NOT_CREATED
        ]
        return failures

    def created(self) -> dict[str, str]:
        """Physical id by logical id of each resource moto created."""
        return {r.logical_id: r.detail for r in self.resources if r.outcome is Outcome.CREATED}

    def not_supported(self) -> dict[str, str]:
        """Why not, by logical id, of each resource moto cannot create."""
        return {r.logical_id: r.detail for r in self.resources if r.outcome is Outcome.NOT_SUPPORTED}


@dataclass(frozen=True)
class Rehearsal:
    stacks: tuple[StackRehearsal, ...]
    missing_code: tuple[str, ...] = ()  # CodeUri / ContentUri paths with nothing there (sam build would fail)
    notes: tuple[str, ...] = ()

    @property
    def failures(self) -> list[str]:
        missing = [f"no code at {path}: nothing to package (sam build would fail)" for path in self.missing_code]
        return [*missing, *(failure for stack in self.stacks for failure in stack.failures)]

    def check(self) -> None:
        if self.failures:
            raise RehearsalFailed(self.failures)


def rehearse(
    template: Mapping[str, Any] | None = None,
    *,
    stack_prefix: str = "avatar-pipeline",
    scenarios: Sequence[Scenario] = SCENARIOS,
    region: str = REGION,
    root: Path = ROOT,
) -> Rehearsal:
    """Create `template` (decoded template.yaml; by default the repository's) once per scenario, as the stack
    ``<stack_prefix>-<scenario>``, in an embedded moto; `root` is where its CodeUri / ContentUri directories are."""
    transformed = transform(template if template is not None else load_template(root / "template.yaml"), region)
    left_out = stand_ins(transformed)
    body = json.dumps(_with_stand_ins(transformed, left_out, region))
    notes = [
        "each Ref / Fn::GetAtt / ${...} of a resource moto does not support is given a stand-in ARN "
        f"(arn:aws:<service>:{region}:{ACCOUNT_ID}:rehearsal-stand-in/<logical id>), so what uses it is still created"
    ]
    if len(body.encode()) > TEMPLATE_BODY_LIMIT:
        notes.append(
            f"the transformed template is {len(body.encode()):,} bytes, over CloudFormation's {TEMPLATE_BODY_LIMIT:,} "
            "for a TemplateBody: it is passed by S3 URL, as sam deploy does"
        )
    aws = EmbeddedAws(region)
    aws.start()
    try:
        missing = _upload_artifacts(aws, transformed, root)
        stacks = tuple(
            _create_stack(aws, transformed, left_out, body, scenario, f"{stack_prefix}-{scenario.name}")
            for scenario in scenarios
        )
    finally:
        aws.stop()
    return Rehearsal(stacks, tuple(missing), tuple(notes))


def stand_ins(transformed: Mapping[str, Any]) -> dict[str, str]:
    """Each resource moto's CloudFormation cannot create, by logical id, with the reason."""
    resources: Mapping[str, Any] = transformed["Resources"]
    models = get_model_map()
    left_out: dict[str, str] = {}
    for logical_id, resource in resources.items():
        kind = resource["Type"]
        if kind not in models and not kind.startswith("Custom::"):
            left_out[logical_id] = (
                f"moto {MOTO_VERSION} has no CloudFormation model for {kind} "
                f"(it skips it, logging 'No Moto CloudFormation support for {kind}')"
            )
    # A gap may follow from another (a deployment of an API moto cannot create): until nothing changes.
    changed = True
    while changed:
        changed = False
        for logical_id, resource in resources.items():
            if logical_id not in left_out and (reason := _moto_gap(resource, left_out)) is not None:
                left_out[logical_id] = reason
                changed = True
    return left_out


def _moto_gap(resource: Mapping[str, Any], left_out: Mapping[str, str]) -> str | None:
    """Why moto cannot create `resource`, of a type it has a model for, as the template defines it (None: it can).

    Each case was found by creating template.yaml's stack in moto 5.2.5 (see moto/apigateway/models.py).
    """
    kind = resource["Type"]
    properties: Mapping[str, Any] = resource.get("Properties", {})
    if kind == "AWS::ApiGateway::RestApi" and "Body" in properties:
        return (
            f"moto {MOTO_VERSION}'s RestApi model requires Name (CloudFormation takes it from the OpenAPI Body's "
            "title) and ignores Body, the OpenAPI definition SAM writes the API's routes in: the API would have no "
            "methods"
        )
    if kind == "AWS::ApiGateway::Deployment":
        apis = sorted(_references(properties.get("RestApiId")) & set(left_out))
        if apis:
            return (
                f"deploys {apis[0]}, which moto cannot create as defined; moto refuses to deploy an API with no methods"
            )
    return None


def resource_results(
    transformed: Mapping[str, Any],
    left_out: Mapping[str, str],
    resolver: Resolver,
    created: Mapping[str, str | None] | None,
) -> tuple[ResourceResult, ...]:
    """What became of each resource of `transformed`. `created`: physical id (or None) by logical id of what the
    stack lists (describe_stack_resources), or None when creating the stack failed."""
    results = []
    for logical_id, resource in transformed["Resources"].items():
        kind = resource["Type"]
        condition = resource.get("Condition")
        if condition is not None and not resolver.condition(condition):
            outcome, detail = Outcome.CONDITION_FALSE, f"{condition} is false"
        elif logical_id in left_out:
            outcome, detail = Outcome.NOT_SUPPORTED, left_out[logical_id]
        elif created is None:
            outcome, detail = Outcome.NOT_CREATED, "creating the stack failed"
        elif logical_id in created:
            outcome, detail = Outcome.CREATED, created[logical_id] or "(moto gives it no physical id)"
        else:
            outcome, detail = Outcome.NOT_CREATED, f"moto models {kind}, but the stack has no such resource"
        results.append(ResourceResult(logical_id, kind, outcome, detail))
    return tuple(results)


def _create_stack(
    aws: EmbeddedAws,
    transformed: Mapping[str, Any],
    left_out: Mapping[str, str],
    body: str,
    scenario: Scenario,
    stack_name: str,
) -> StackRehearsal:
    parameters = scenario.values(stack_name)
    try:
        resolver = Resolver(
            transformed, stack_name=stack_name, region=aws.region, account_id=ACCOUNT_ID, parameters=parameters
        )
        for name in parameters:
            resolver.parameter_value(name)  # AllowedValues, AllowedPattern, MinValue, ...
    except TemplateError as error:
        # CloudFormation refuses such a value before it creates anything; moto does not check.
        return StackRehearsal(scenario, stack_name, "CREATE_FAILED", f"ValidationError: {error}", ())
    cloudformation = aws.client("cloudformation")
    template = {"TemplateBody": body}
    if len(body.encode()) > TEMPLATE_BODY_LIMIT:
        key = f"templates/{stack_name}.json"
        aws.client("s3").put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=body.encode())
        template = {"TemplateURL": f"https://s3.{aws.region}.amazonaws.com/{ARTIFACT_BUCKET}/{key}"}
    server_errors = _ServerErrors()
    logging.getLogger("werkzeug").addHandler(server_errors)
    try:
        cloudformation.create_stack(
            StackName=stack_name,
            Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
            Capabilities=["CAPABILITY_IAM"],  # as `make deploy` gives it
            **template,
        )
        status = _wait_for_stack(cloudformation, stack_name)
        described = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    except (BotoCoreError, ClientError, ResponseParserError) as error:
        # moto leaves a stack it failed to create in CREATE_IN_PROGRESS; CloudFormation would roll it back.
        error_text = _error_text(error, server_errors.messages)
        results = resource_results(transformed, left_out, resolver, None)
        return StackRehearsal(scenario, stack_name, "CREATE_FAILED", error_text, results)
    finally:
        logging.getLogger("werkzeug").removeHandler(server_errors)
    # moto lists a resource whose Condition is false as an entry without ids.
    created = {
        item["LogicalResourceId"]: item.get("PhysicalResourceId") for item in described if "LogicalResourceId" in item
    }
    return StackRehearsal(
        scenario, stack_name, status, None, resource_results(transformed, left_out, resolver, created)
    )


def _wait_for_stack(cloudformation: Any, stack_name: str) -> str:
    """The stack's status once it is no longer in progress (moto's stacks are, as soon as create_stack answers)."""
    deadline = time.monotonic() + STACK_TIMEOUT_SECONDS
    while True:
        status: str = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]["StackStatus"]
        if not status.endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


class _ServerErrors(logging.Handler):
    """The exceptions moto's server answered with an internal error (500) while the handler is attached."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exception = record.exc_info[1]
            self.messages.append(traceback.format_exception_only(type(exception), exception)[-1].strip())


def _error_text(error: Exception, server_errors: Sequence[str]) -> str:
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        return f"{details.get('Code', '?')}: {details.get('Message', '')}"
    text = str(error)
    # moto answers some errors of the services it calls in JSON, which the CloudFormation client cannot parse.
    kind, message = re.search(r'"__type": "([^"]*)"', text), re.search(r'"message": "([^"]*)"', text)
    if kind and message:
        return f"{kind.group(1)}: {message.group(1)}"
    if server_errors:
        return f"moto failed with an internal error: {server_errors[-1]}"
    return text


# -- the template moto is given -----------------------------------------------------------------------------------


def _with_stand_ins(transformed: Mapping[str, Any], left_out: Mapping[str, str], region: str) -> dict[str, Any]:
    """`transformed` without the resources in `left_out`, every reference to one of them a stand-in ARN."""

    def stand_in(logical_id: str, attribute: str | None = None) -> str:
        kind = transformed["Resources"][logical_id]["Type"]
        service = kind.split("::")[1].lower() if kind.count("::") == 2 else "cloudformation"
        suffix = f"/{attribute}" if attribute else ""
        return f"arn:aws:{service}:{region}:{ACCOUNT_ID}:rehearsal-stand-in/{logical_id}{suffix}"

    def replace(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"Ref"} and node["Ref"] in left_out:
                return stand_in(node["Ref"])
            if set(node) == {"Fn::GetAtt"}:
                target = node["Fn::GetAtt"]
                logical_id, attribute = target.split(".", 1) if isinstance(target, str) else target
                if logical_id in left_out:
                    return stand_in(logical_id, attribute)
            if set(node) == {"Fn::Sub"}:
                argument = node["Fn::Sub"]
                text, variables = (argument[0], argument[1]) if isinstance(argument, list) else (argument, None)

                def substitute(match: re.Match[str]) -> str:
                    name = match.group(1)
                    logical_id, _, attribute = name.partition(".")
                    if (variables and name in variables) or logical_id not in left_out:
                        return match.group(0)
                    return stand_in(logical_id, attribute or None)

                text = _SUB_VARIABLE.sub(substitute, text)
                return {"Fn::Sub": [text, replace(variables)] if variables is not None else text}
            if "DependsOn" in node and isinstance(node.get("Type"), str):
                depends = node["DependsOn"]
                remaining = [d for d in ([depends] if isinstance(depends, str) else depends) if d not in left_out]
                node = {key: value for key, value in node.items() if key != "DependsOn"}
                if remaining:
                    node["DependsOn"] = remaining
            return {key: replace(value) for key, value in node.items()}
        if isinstance(node, list):
            return [replace(item) for item in node]
        return node

    given = dict(transformed)
    given["Resources"] = {
        logical_id: replace(resource)
        for logical_id, resource in transformed["Resources"].items()
        if logical_id not in left_out
    }
    if "Outputs" in transformed:
        given["Outputs"] = replace(transformed["Outputs"])
    return given


def _references(node: Any) -> set[str]:
    """The logical ids `node` names in Ref, Fn::GetAtt and Fn::Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value.split(".", 1)[0] if isinstance(value, str) else value[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {match.group(1).split(".", 1)[0] for match in _SUB_VARIABLE.finditer(text)}
                if isinstance(value, list):
                    found |= _references(value[1])
            else:
                found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def _upload_artifacts(aws: EmbeddedAws, transformed: Mapping[str, Any], root: Path) -> list[str]:
    """Zip each code directory the transformed template names (s3://local-artifacts/<dir>) into the artifact bucket,
    as `sam package` would. Returns the paths with nothing there."""
    s3 = aws.client("s3")
    try:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    except ClientError as error:  # an earlier rehearsal of this process made it
        if error.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    missing = []
    for key in sorted(_artifact_keys(transformed)):
        source = root / key
        if source.is_dir():
            s3.put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=_zip_directory(source))
        elif source.is_file():
            s3.put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=source.read_bytes())
        else:
            missing.append(key)
    return missing


def _artifact_keys(transformed: Mapping[str, Any]) -> set[str]:
    keys = set()
    for resource in transformed["Resources"].values():
        properties = resource.get("Properties", {})
        for name in ("Code", "Content"):
            location = properties.get(name)
            if isinstance(location, dict) and location.get("S3Bucket") == ARTIFACT_BUCKET:
                keys.add(str(location["S3Key"]))
    return keys


def _zip_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not _SKIPPED_DIRS & set(path.relative_to(directory).parts):
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------------- wildcard check


@dataclass(frozen=True)
class WildcardGrant:
    """One action a role is allowed on Resource "*" (or an Allow too broad to list by action)."""

    role: str
    policy: str  # the inline policy's name, or the managed policy's ARN
    action: str
    explanation: str | None
    problem: str | None  # None: explained in the template's Metadata

    def describe(self) -> str:
        return f"{self.role}: {self.policy}: {self.action}: {self.problem or self.explanation}"


@dataclass(frozen=True)
class WildcardCheck:
    grants: tuple[WildcardGrant, ...]
    problems: tuple[str, ...]  # what could not be checked (an unknown managed policy, a malformed explanation)
    unused_explanations: tuple[str, ...]  # explained in Metadata, granted by no role

    @property
    def failures(self) -> list[str]:
        return [*self.problems, *(grant.describe() for grant in self.grants if grant.problem)]

    def check(self) -> None:
        if self.failures:
            raise RehearsalFailed(self.failures)


def check_wildcards(transformed: Mapping[str, Any]) -> WildcardCheck:
    """Every action the roles of `transformed` (a SAM-transformed template) are allowed on Resource "*", each with
    its explanation from ``Metadata.AvatarPipeline.WildcardResourceActions``, or the problem."""
    explanations, problems = _explanations(transformed)
    grants: list[WildcardGrant] = []
    used: set[str] = set()
    for role, policy, document in _role_policies(transformed, problems):
        for statement in _flatten(document.get("Statement", [])):
            if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
                continue
            for grant in _statement_grants(role, policy, statement, explanations):
                grants.append(grant)
                key = _explaining_key(grant.action, explanations) if grant.problem is None else None
                if key is not None:
                    used.add(key)
    unused = tuple(sorted(set(explanations) - used))
    return WildcardCheck(tuple(grants), tuple(problems), unused)


def _explanations(transformed: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    where = f"Metadata.{METADATA_KEY}.{WILDCARD_KEY}"
    section = (transformed.get("Metadata") or {}).get(METADATA_KEY, {}).get(WILDCARD_KEY, {})
    if not isinstance(section, dict):
        return {}, [f"{where}: must map each action to why it may be allowed on Resource '*'"]
    explanations: dict[str, str] = {}
    problems = []
    for action, reason in section.items():
        if not isinstance(reason, str) or not reason.strip():
            problems.append(f"{where}.{action}: no explanation given")
        elif not _ACTION_KEY.match(action) or action.split(":", 1)[1].strip("*") == "":
            problems.append(f"{where}.{action}: not an action name (service:Action, never '*' or 'service:*')")
        else:
            explanations[action] = " ".join(reason.split())
    return explanations, problems


def _role_policies(transformed: Mapping[str, Any], problems: list[str]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """(role, policy name or ARN, policy document) of every policy of every role, inline, managed or attached."""
    resources: Mapping[str, Any] = transformed["Resources"]
    managed = _aws_managed_policies()
    for logical_id, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in _flatten(properties.get("Policies", [])):
                if isinstance(policy, dict) and isinstance(policy.get("PolicyDocument"), dict):
                    yield logical_id, str(policy.get("PolicyName", "?")), policy["PolicyDocument"]
                else:
                    problems.append(f"{logical_id}: cannot read the inline policy {policy!r}")
            for arn in _flatten(properties.get("ManagedPolicyArns", [])):
                found = _managed_policy(arn, resources, managed)
                if found is None:
                    problems.append(f"{logical_id}: cannot read the managed policy {arn!r}")
                else:
                    yield logical_id, found[0], found[1]
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            # A policy of the template attached to roles by their Roles property.
            roles = sorted(_references(properties.get("Roles", []))) or [logical_id]
            for role in roles:
                yield role, str(properties.get("PolicyName", logical_id)), properties.get("PolicyDocument", {})


def _managed_policy(
    arn: Any, resources: Mapping[str, Any], managed: Mapping[str, Any]
) -> tuple[str, Mapping[str, Any]] | None:
    if isinstance(arn, dict) and set(arn) == {"Ref"} and arn["Ref"] in resources:
        policy = resources[arn["Ref"]]
        if policy["Type"] == "AWS::IAM::ManagedPolicy":
            return str(arn["Ref"]), policy.get("Properties", {}).get("PolicyDocument", {})
        return None
    if isinstance(arn, dict) and set(arn) == {"Fn::Sub"} and isinstance(arn["Fn::Sub"], str):
        arn = arn["Fn::Sub"].replace("${AWS::Partition}", "aws")
    if not isinstance(arn, str):
        return None
    match = re.fullmatch(r"arn:aws[a-z-]*:iam::aws:policy(/(?:.*/)?)([^/]+)", arn)
    data = managed.get(match.group(2)) if match else None
    if match is None or data is None or data.get("Path", "/") != match.group(1):
        return None
    return arn, data["Document"]


def _aws_managed_policies() -> dict[str, Any]:
    """AWS's managed policies by name, from moto's copy (no network)."""
    return dict(json.loads(aws_managed_policies_data))


def _statement_grants(
    role: str, policy: str, statement: Mapping[str, Any], explanations: Mapping[str, str]
) -> Iterator[WildcardGrant]:
    if "NotResource" in statement:
        yield WildcardGrant(
            role,
            policy,
            str(statement.get("Action", statement.get("NotAction"))),
            None,
            ("Allow with NotResource: every resource but the ones named"),
        )
        return
    resources = list(_flatten(statement.get("Resource", [])))
    if "*" not in resources:
        return
    if "NotAction" in statement:
        yield WildcardGrant(
            role,
            policy,
            f"NotAction {statement['NotAction']}",
            None,
            ("Allow with NotAction on '*': every other action of every service"),
        )
        return
    for action in _flatten(statement.get("Action", [])):
        if not isinstance(action, str):
            continue
        if action == "*" or action.endswith(":*"):
            yield WildcardGrant(role, policy, action, None, "every action (of the service) on '*' is never accepted")
            continue
        key = _explaining_key(action, explanations)
        if key is None:
            problem = f"allowed on '*' but not explained in Metadata.{METADATA_KEY}.{WILDCARD_KEY}"
            yield WildcardGrant(role, policy, action, None, problem)
        else:
            yield WildcardGrant(role, policy, action, explanations[key], None)


def _explaining_key(action: str, explanations: Mapping[str, str]) -> str | None:
    """The Metadata key that explains `action` (action names are case-insensitive; a key may hold '*' patterns)."""
    for key in explanations:
        if fnmatch.fnmatchcase(action.lower(), key.lower()):
            return key
    return None


def _flatten(node: Any) -> Iterator[Any]:
    """The values `node` may deploy as: each item of a list, both values of an Fn::If (either may be deployed), none
    for Ref AWS::NoValue; anything else as it is."""
    if isinstance(node, list):
        for item in node:
            yield from _flatten(item)
    elif isinstance(node, dict) and set(node) == {"Fn::If"} and isinstance(node["Fn::If"], list):
        for branch in node["Fn::If"][1:]:
            yield from _flatten(branch)
    elif node != {"Ref": "AWS::NoValue"}:
        yield node


# ----------------------------------------------------------------------------------------------------------- report


def format_rehearsal(rehearsal: Rehearsal) -> str:
    lines: list[str] = [f"note: {note}" for note in rehearsal.notes]
    lines += [f"FAIL: no code at {path}" for path in rehearsal.missing_code]
    for stack in rehearsal.stacks:
        lines.append(f"\nStack {stack.stack_name} ({stack.scenario.describe(stack.stack_name)}): {stack.status}")
        if stack.error:
            lines.append(f"  FAIL: creating the stack failed: {stack.error}")
        width_id = max((len(r.logical_id) for r in stack.resources), default=10)
        width_type = max((len(r.type) for r in stack.resources), default=10)
        reasons: dict[str, int] = {}
        for result in stack.resources:
            detail = result.detail
            if result.outcome is Outcome.NOT_SUPPORTED:
                detail = f"[{reasons.setdefault(result.detail, len(reasons) + 1)}]"
            lines.append(
                f"  {result.logical_id:<{width_id}}  {result.type:<{width_type}}  {result.outcome.value:<15}  {detail}"
            )
        lines += [f"  [{number}] {reason}" for reason, number in reasons.items()]
        counts = {outcome: sum(r.outcome is outcome for r in stack.resources) for outcome in Outcome}
        lines.append("  " + ", ".join(f"{count} {outcome.value}" for outcome, count in counts.items()))
    return "\n".join(lines)


def format_wildcards(check: WildcardCheck) -> str:
    lines = ["IAM actions allowed on Resource '*' (role, policy, action):"]
    width_role = max((len(g.role) for g in check.grants), default=4)
    width_policy = max((len(_short(g.policy)) for g in check.grants), default=6)
    width_action = max((len(g.action) for g in check.grants), default=6)
    for grant in check.grants:
        verdict = "explained" if grant.problem is None else f"FAIL: {grant.problem}"
        policy = _short(grant.policy)
        lines.append(
            f"  {grant.role:<{width_role}}  {policy:<{width_policy}}  {grant.action:<{width_action}}  {verdict}"
        )
    lines += [f"  FAIL: {problem}" for problem in check.problems]
    explained = {grant.action: grant.explanation for grant in check.grants if grant.explanation is not None}
    if explained:
        lines.append(f"Why (template.yaml Metadata.{METADATA_KEY}.{WILDCARD_KEY}):")
        lines += [f"  {action}: {why}" for action, why in explained.items()]
    lines += [f"  note: explained, but no role is allowed it on '*': {action}" for action in check.unused_explanations]
    return "\n".join(lines)


def _short(policy: str) -> str:
    """A managed policy's name rather than its whole ARN."""
    return policy.rsplit("/", 1)[-1] if policy.startswith("arn:") else policy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rehearse `sam deploy` of template.yaml in moto; check IAM wildcards.")
    parser.add_argument("--template", type=Path, default=TEMPLATE)
    parser.add_argument("--stack-prefix", default="avatar-pipeline")
    args = parser.parse_args(argv)
    # The SAM translator warns about what concerns its own service (metrics it does not publish here, feature toggles
    # it has no configuration for); what is wrong with the template, it raises.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    try:
        template = load_template(args.template)
        transformed = transform(template, REGION)
        rehearsal = rehearse(template, stack_prefix=args.stack_prefix, root=args.template.resolve().parent)
    except (TemplateError, InvalidDocumentException) as error:  # the template cannot be read, or SAM refuses it
        print(f"Deploy rehearsal FAILED: {error}", file=sys.stderr)
        return 1
    print(format_rehearsal(rehearsal))
    wildcards = check_wildcards(transformed)
    print("\n" + format_wildcards(wildcards))
    failures = [*rehearsal.failures, *wildcards.failures]
    if failures:
        print(f"\nDeploy rehearsal FAILED ({len(failures)}):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    print("\nDeploy rehearsal passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
