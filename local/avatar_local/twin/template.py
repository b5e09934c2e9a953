"""Read the SAM template the way CloudFormation and SAM would, so the local stack runs what would be deployed.

Everything here is pure: no AWS calls, no files other than the template itself.

* :func:`load_template` decodes template.yaml with cfn-lint's decoder (short-form tags such as ``!Ref`` become
  ``{"Ref": ...}``) and returns plain ``dict``/``list``/``str`` values.
* :class:`Resolver` evaluates intrinsic functions (``Ref``, ``Fn::Sub``, ``Fn::GetAtt``, ``Fn::Join``,
  ``Fn::Select``, ``Fn::Split``, ``Fn::If`` with the template's Conditions, ...) for one imagined stack: its name,
  Region, account, parameter overrides and the physical ids / attributes of the resources the local stack created.
* :func:`functions` lists every ``AWS::Serverless::Function`` with ``Globals.Function`` merged in the way SAM
  merges them, and :class:`EventSpec` reads each function's event sources (S3, Api, Schedule, DynamoDB, SQS).
* :func:`layer_content_dirs` maps a function's ``Layers`` to the ContentUri of the template's own layers.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final

from cfnlint.decode import decode_str

from avatar_local.twin.otel_layer import is_adot_layer

__all__ = [
    "NO_VALUE",
    "PSEUDO_PARAMETERS",
    "ApiEventSource",
    "DynamoDBEventSource",
    "EventSpec",
    "FunctionSpec",
    "Resolver",
    "ScheduleEventSource",
    "SqsEventSource",
    "TemplateError",
    "function_by_id",
    "functions",
    "layer_content_dirs",
    "load_template",
    "merge_globals",
    "schedule_interval_seconds",
    "template_layers",
]

SERVERLESS_FUNCTION: Final = "AWS::Serverless::Function"
SERVERLESS_LAYER: Final = "AWS::Serverless::LayerVersion"

# Lambda's own defaults when neither the function nor Globals set them.
DEFAULT_TIMEOUT_SECONDS: Final = 3
DEFAULT_MEMORY_MB: Final = 128


class TemplateError(ValueError):
    """The template (or what the caller supplied for it) cannot be read or resolved as asked."""


class _NoValue(Enum):
    NO_VALUE = "AWS::NoValue"

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE: Final = _NoValue.NO_VALUE
"""What ``Ref: AWS::NoValue`` resolves to. Inside dicts and lists the key/item is dropped; only a value that is
itself ``AWS::NoValue`` (e.g. an ``Fn::If`` branch at the top of :meth:`Resolver.resolve`) comes back as this."""

PSEUDO_PARAMETERS: Final = frozenset(
    {
        "AWS::AccountId",
        "AWS::NotificationARNs",
        "AWS::NoValue",
        "AWS::Partition",
        "AWS::Region",
        "AWS::StackId",
        "AWS::StackName",
        "AWS::URLSuffix",
    }
)

_CONDITION_FUNCTIONS: Final = frozenset({"Fn::And", "Fn::Equals", "Fn::If", "Fn::Not", "Fn::Or"})
_SUB_VARIABLE: Final = re.compile(r"\$\{([^}]*)\}")
_NON_WORD: Final = re.compile(r"\W")


# ---------------------------------------------------------------------------------------------------------- load


def _plain(node: Any) -> Any:
    """cfn-lint's decoder returns dict/str subclasses carrying line marks; hand out plain Python values."""
    if isinstance(node, dict):
        return {str(key): _plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if isinstance(node, str):
        return str.__str__(node)  # an exact str, whatever subclass came in
    return node


def load_template(path: Path) -> dict[str, Any]:
    """Decode a CloudFormation/SAM template (YAML or JSON, short-form tags allowed) into plain Python values."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise TemplateError(f"cannot read template {path}: {error}") from error
    decoded, problems = decode_str(text)
    if problems or not isinstance(decoded, dict):
        details = "; ".join(str(problem) for problem in problems) or "not a mapping"
        raise TemplateError(f"cannot decode template {path}: {details}")
    plain: dict[str, Any] = _plain(decoded)
    return plain


# ------------------------------------------------------------------------------------------------------- helpers


def is_intrinsic(value: Any) -> bool:
    """Whether value is a one-key ``{"Ref": ...}`` / ``{"Fn::...": ...}`` intrinsic function call."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = next(iter(value))
    return key == "Ref" or (isinstance(key, str) and key.startswith("Fn::"))


def _scalar_to_str(value: Any, where: str) -> str:
    """How CloudFormation turns a scalar into the string it hands a service (e.g. an environment variable)."""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int | float):
        return str(value)
    raise TemplateError(f"{where}: expected a string, number or boolean, got {type(value).__name__}: {value!r}")


def _ref_target(value: Any, where: str) -> str:
    """The logical id in ``{"Ref": X}``."""
    if isinstance(value, dict) and set(value) == {"Ref"} and isinstance(value["Ref"], str):
        return value["Ref"]
    raise TemplateError(f"{where}: expected {{'Ref': <logical id>}}, got {value!r}")


def _get_att_parts(value: Any, where: str) -> tuple[str, str]:
    """(logical id, attribute) of ``{"Fn::GetAtt": [X, Attr]}`` or ``{"Fn::GetAtt": "X.Attr"}``."""
    if isinstance(value, dict) and set(value) == {"Fn::GetAtt"}:
        target = value["Fn::GetAtt"]
        if isinstance(target, str) and "." in target:
            logical_id, attribute = target.split(".", 1)
            return logical_id, attribute
        if isinstance(target, list) and len(target) == 2 and all(isinstance(part, str) for part in target):
            return target[0], target[1]
    raise TemplateError(f"{where}: expected {{'Fn::GetAtt': [<logical id>, <attribute>]}}, got {value!r}")


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    raise TemplateError(f"{where}: expected a boolean, got {value!r}")


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise TemplateError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise TemplateError(f"{where}: expected a literal integer, got {value!r}")


# ------------------------------------------------------------------------------------------------------ resolver


class Resolver:
    """Evaluates intrinsic functions for one imagined deployment of the template.

    ``parameters`` override the template's parameter Defaults (values are strings, as on the CLI). Parameters of
    type Number stay strings, exactly as CloudFormation passes them on (e.g. into environment variables).
    ``resource_values`` is what ``Ref`` returns per resource logical id (table name, topic ARN, API id, ...);
    ``attributes`` is what ``Fn::GetAtt`` returns per (logical id, attribute). Anything a caller did not supply
    raises :class:`TemplateError` naming it, so the local stack never runs with a half-resolved value.
    """

    def __init__(
        self,
        template: Mapping[str, Any],
        *,
        stack_name: str,
        region: str,
        account_id: str,
        parameters: Mapping[str, str] | None = None,
        resource_values: Mapping[str, str] | None = None,
        attributes: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.template = template
        self.stack_name = stack_name
        self.region = region
        self.account_id = account_id
        self.parameters: dict[str, str] = dict(parameters or {})
        self.resource_values: dict[str, str] = dict(resource_values or {})
        self.attributes: dict[tuple[str, str], str] = dict(attributes or {})
        self._declared_parameters: Mapping[str, Any] = template.get("Parameters") or {}
        self._conditions: Mapping[str, Any] = template.get("Conditions") or {}
        self._resources: Mapping[str, Any] = template.get("Resources") or {}
        self._mappings: Mapping[str, Any] = template.get("Mappings") or {}
        self._condition_cache: dict[str, bool] = {}
        self._evaluating: list[str] = []
        unknown = sorted(set(self.parameters) - set(self._declared_parameters))
        if unknown:
            raise TemplateError(f"parameter overrides for parameters the template does not declare: {unknown}")

    # -- values ------------------------------------------------------------------------------------------------

    @property
    def partition(self) -> str:
        return "aws"

    @property
    def url_suffix(self) -> str:
        return "amazonaws.com"

    def pseudo_parameter(self, name: str) -> Any:
        values: dict[str, Any] = {
            "AWS::AccountId": self.account_id,
            "AWS::NotificationARNs": [],
            "AWS::NoValue": NO_VALUE,
            "AWS::Partition": self.partition,
            "AWS::Region": self.region,
            # CloudFormation ends a stack's id with a UUID of its own; this one is the same for every run of a stack.
            "AWS::StackId": (
                f"arn:{self.partition}:cloudformation:{self.region}:{self.account_id}:stack/{self.stack_name}/"
                f"{uuid.uuid5(uuid.NAMESPACE_URL, f'{self.account_id}/{self.region}/{self.stack_name}')}"
            ),
            "AWS::StackName": self.stack_name,
            "AWS::URLSuffix": self.url_suffix,
        }
        if name not in values:
            raise TemplateError(f"unknown pseudo parameter {name}")
        return values[name]

    def parameter_value(self, name: str) -> str | list[str]:
        """The parameter's override, else its Default, as CloudFormation would pass it (List types as lists)."""
        declaration = self._declared_parameters.get(name)
        if not isinstance(declaration, dict):
            raise TemplateError(f"unknown parameter {name}")
        if name in self.parameters:
            raw: Any = self.parameters[name]
        elif "Default" in declaration:
            raw = declaration["Default"]
        else:
            raise TemplateError(f"parameter {name} has no Default and no value was supplied for it")
        kind = str(declaration.get("Type", "String"))
        if isinstance(raw, list):  # a YAML list as the Default of a list parameter
            text = ",".join(_scalar_to_str(item, f"parameter {name}") for item in raw)
        else:
            text = _scalar_to_str(raw, f"parameter {name}")
        self._check_parameter(name, declaration, kind, text)
        if kind == "CommaDelimitedList" or kind.startswith("List<"):
            return [item.strip() for item in text.split(",")] if text else []
        return text

    @staticmethod
    def _check_parameter(name: str, declaration: Mapping[str, Any], kind: str, text: str) -> None:
        allowed = declaration.get("AllowedValues")
        if isinstance(allowed, list) and text not in {_scalar_to_str(v, f"parameter {name}") for v in allowed}:
            raise TemplateError(f"parameter {name}: {text!r} is not one of the AllowedValues {allowed}")
        pattern = declaration.get("AllowedPattern")
        if isinstance(pattern, str) and kind == "String" and not re.fullmatch(pattern, text):
            raise TemplateError(f"parameter {name}: {text!r} does not match AllowedPattern {pattern!r}")
        if kind == "Number":
            try:
                number = float(text)
            except ValueError:
                raise TemplateError(f"parameter {name}: {text!r} is not a number") from None
            low, high = declaration.get("MinValue"), declaration.get("MaxValue")
            if low is not None and number < float(low):
                raise TemplateError(f"parameter {name}: {text} is below MinValue {low}")
            if high is not None and number > float(high):
                raise TemplateError(f"parameter {name}: {text} is above MaxValue {high}")

    def ref(self, name: str) -> Any:
        """What ``{"Ref": name}`` resolves to: pseudo parameter, parameter, or a supplied resource value."""
        if name in PSEUDO_PARAMETERS:
            return self.pseudo_parameter(name)
        if name in self._declared_parameters:
            return self.parameter_value(name)
        if name in self.resource_values:
            return self.resource_values[name]
        if name in self._resources:
            kind = self._resources[name].get("Type", "?") if isinstance(self._resources[name], dict) else "?"
            raise TemplateError(
                f"Ref to resource {name} ({kind}): no physical value supplied for it (pass it in resource_values)"
            )
        raise TemplateError(f"Ref to {name}: not a parameter, pseudo parameter or resource of the template")

    def get_att(self, logical_id: str, attribute: str) -> str:
        """What ``{"Fn::GetAtt": [logical_id, attribute]}`` resolves to."""
        key = (logical_id, attribute)
        if key in self.attributes:
            return self.attributes[key]
        if logical_id in self._resources:
            raise TemplateError(
                f"Fn::GetAtt {logical_id}.{attribute}: no value supplied for this attribute (pass it in attributes)"
            )
        raise TemplateError(f"Fn::GetAtt {logical_id}.{attribute}: {logical_id} is not a resource of the template")

    # -- conditions --------------------------------------------------------------------------------------------

    def condition(self, name: str) -> bool:
        """Evaluate the template Condition called name (cached; cycles are reported)."""
        if name in self._condition_cache:
            return self._condition_cache[name]
        if name not in self._conditions:
            raise TemplateError(f"unknown condition {name}")
        if name in self._evaluating:
            raise TemplateError(f"conditions refer to each other in a cycle: {[*self._evaluating, name]}")
        self._evaluating.append(name)
        try:
            value = self._condition_value(self._conditions[name], f"condition {name}")
        finally:
            self._evaluating.pop()
        self._condition_cache[name] = value
        return value

    def _condition_value(self, node: Any, where: str) -> bool:
        if isinstance(node, bool):
            return node
        if isinstance(node, dict) and set(node) == {"Condition"} and isinstance(node["Condition"], str):
            return self.condition(node["Condition"])
        if isinstance(node, dict) and len(node) == 1 and next(iter(node)) in _CONDITION_FUNCTIONS:
            value = self._resolve(node)
            if isinstance(value, bool):
                return value
        if isinstance(node, str) and node.lower() in {"true", "false"}:
            return node.lower() == "true"
        raise TemplateError(f"{where}: not a condition: {node!r}")

    # -- resolution --------------------------------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        """Resolve every intrinsic function in value, recursively.

        Keys and list items that resolve to ``AWS::NoValue`` are dropped; a value that is itself ``AWS::NoValue``
        comes back as :data:`NO_VALUE`.
        """
        return self._resolve(value)

    def resolve_str(self, value: Any, where: str = "value") -> str:
        """Resolve value and require a string (numbers and booleans are rendered as CloudFormation renders them)."""
        resolved = self._resolve(value)
        if resolved is NO_VALUE:
            raise TemplateError(f"{where}: resolved to AWS::NoValue")
        return _scalar_to_str(resolved, where)

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if is_intrinsic(value):
                ((name, argument),) = value.items()
                return self._intrinsic(name, argument)
            resolved_dict = {}
            for key, item in value.items():
                resolved = self._resolve(item)
                if resolved is not NO_VALUE:
                    resolved_dict[key] = resolved
            return resolved_dict
        if isinstance(value, list):
            return [resolved for resolved in (self._resolve(item) for item in value) if resolved is not NO_VALUE]
        return value

    def _intrinsic(self, name: str, argument: Any) -> Any:
        handlers = {
            "Ref": self._fn_ref,
            "Fn::Sub": self._fn_sub,
            "Fn::GetAtt": self._fn_get_att,
            "Fn::Join": self._fn_join,
            "Fn::Select": self._fn_select,
            "Fn::Split": self._fn_split,
            "Fn::If": self._fn_if,
            "Fn::Equals": self._fn_equals,
            "Fn::Not": self._fn_not,
            "Fn::And": self._fn_and,
            "Fn::Or": self._fn_or,
            "Fn::FindInMap": self._fn_find_in_map,
            "Fn::Base64": self._fn_base64,
        }
        handler = handlers.get(name)
        if handler is None:
            raise TemplateError(f"intrinsic function {name} is not supported by the local resolver")
        return handler(argument)

    def _fn_ref(self, argument: Any) -> Any:
        if not isinstance(argument, str):
            raise TemplateError(f"Ref: expected a logical id, got {argument!r}")
        return self.ref(argument)

    def _fn_get_att(self, argument: Any) -> str:
        if isinstance(argument, str):
            if "." not in argument:
                raise TemplateError(f"Fn::GetAtt: expected 'Resource.Attribute', got {argument!r}")
            logical_id, attribute = argument.split(".", 1)
            return self.get_att(logical_id, attribute)
        if isinstance(argument, list) and len(argument) == 2 and isinstance(argument[0], str):
            attribute = self.resolve_str(argument[1], f"Fn::GetAtt {argument[0]} attribute")
            return self.get_att(argument[0], attribute)
        raise TemplateError(f"Fn::GetAtt: expected [Resource, Attribute] or 'Resource.Attribute', got {argument!r}")

    def _fn_sub(self, argument: Any) -> str:
        variables: dict[str, Any] = {}
        if isinstance(argument, list):
            if len(argument) != 2 or not isinstance(argument[0], str) or not isinstance(argument[1], dict):
                raise TemplateError(f"Fn::Sub: expected [template string, {{variables}}], got {argument!r}")
            text = argument[0]
            variables = {key: self._resolve(value) for key, value in argument[1].items()}
        elif isinstance(argument, str):
            text = argument
        else:
            raise TemplateError(f"Fn::Sub: expected a string or [string, {{variables}}], got {argument!r}")

        def substitute(match: re.Match[str]) -> str:
            inner = match.group(1)
            if inner.startswith("!"):  # ${!Literal} is the escape for a literal ${Literal}
                return "${" + inner[1:] + "}"
            name = inner.strip()
            where = f"Fn::Sub ${{{name}}} in {text!r}"
            if name in variables:
                value = variables[name]
            elif name in PSEUDO_PARAMETERS or name in self._declared_parameters:
                value = self.ref(name)
            elif "." in name:
                logical_id, attribute = name.split(".", 1)
                value = self.get_att(logical_id, attribute)
            else:
                value = self.ref(name)
            if isinstance(value, list):
                raise TemplateError(f"{where}: resolves to a list; Fn::Sub needs a string")
            return _scalar_to_str(value, where)

        return _SUB_VARIABLE.sub(substitute, text)

    def _list_argument(self, value: Any, where: str) -> list[Any]:
        resolved = self._resolve(value)
        if not isinstance(resolved, list):
            raise TemplateError(f"{where}: expected a list, got {resolved!r}")
        return resolved

    def _fn_join(self, argument: Any) -> str:
        if not isinstance(argument, list) or len(argument) != 2:
            raise TemplateError(f"Fn::Join: expected [delimiter, [values]], got {argument!r}")
        delimiter = self.resolve_str(argument[0], "Fn::Join delimiter")
        items = self._list_argument(argument[1], "Fn::Join values")
        return delimiter.join(_scalar_to_str(item, "Fn::Join value") for item in items)

    def _fn_select(self, argument: Any) -> Any:
        if not isinstance(argument, list) or len(argument) != 2:
            raise TemplateError(f"Fn::Select: expected [index, [values]], got {argument!r}")
        index = _as_int(self._resolve(argument[0]), "Fn::Select index")
        items = self._list_argument(argument[1], "Fn::Select values")
        if not 0 <= index < len(items):
            raise TemplateError(f"Fn::Select: index {index} is out of range for {len(items)} values")
        return items[index]

    def _fn_split(self, argument: Any) -> list[str]:
        if not isinstance(argument, list) or len(argument) != 2:
            raise TemplateError(f"Fn::Split: expected [delimiter, string], got {argument!r}")
        delimiter = self.resolve_str(argument[0], "Fn::Split delimiter")
        if not delimiter:
            raise TemplateError("Fn::Split: the delimiter is empty")
        return self.resolve_str(argument[1], "Fn::Split source").split(delimiter)

    def _fn_if(self, argument: Any) -> Any:
        if not isinstance(argument, list) or len(argument) != 3 or not isinstance(argument[0], str):
            raise TemplateError(f"Fn::If: expected [condition name, value if true, value if false], got {argument!r}")
        return self._resolve(argument[1] if self.condition(argument[0]) else argument[2])

    def _fn_equals(self, argument: Any) -> bool:
        if not isinstance(argument, list) or len(argument) != 2:
            raise TemplateError(f"Fn::Equals: expected [value, value], got {argument!r}")
        left, right = (self._comparable(self._resolve(item)) for item in argument)
        return bool(left == right)

    @staticmethod
    def _comparable(value: Any) -> Any:
        """CloudFormation compares strings: 5, "5" and true/"true" are equal to each other."""
        if isinstance(value, list):
            return [Resolver._comparable(item) for item in value]
        if isinstance(value, bool | int | float | str):
            return _scalar_to_str(value, "Fn::Equals")
        return value

    def _condition_list(self, argument: Any, name: str, minimum: int, maximum: int) -> list[bool]:
        if not isinstance(argument, list) or not minimum <= len(argument) <= maximum:
            raise TemplateError(f"{name}: expected {minimum} to {maximum} conditions, got {argument!r}")
        return [self._condition_value(item, name) for item in argument]

    def _fn_not(self, argument: Any) -> bool:
        return not self._condition_list(argument, "Fn::Not", 1, 1)[0]

    def _fn_and(self, argument: Any) -> bool:
        return all(self._condition_list(argument, "Fn::And", 2, 10))

    def _fn_or(self, argument: Any) -> bool:
        return any(self._condition_list(argument, "Fn::Or", 2, 10))

    def _fn_find_in_map(self, argument: Any) -> Any:
        if not isinstance(argument, list) or len(argument) != 3:
            raise TemplateError(f"Fn::FindInMap: expected [map, top-level key, second-level key], got {argument!r}")
        map_name, top, second = (self.resolve_str(item, "Fn::FindInMap key") for item in argument)
        try:
            return self._resolve(self._mappings[map_name][top][second])
        except (KeyError, TypeError):
            raise TemplateError(f"Fn::FindInMap: no value at {map_name}/{top}/{second}") from None

    def _fn_base64(self, argument: Any) -> str:
        return base64.b64encode(self.resolve_str(argument, "Fn::Base64").encode()).decode()


# ---------------------------------------------------------------------------------------------------- functions


def merge_globals(global_value: Any, local_value: Any) -> Any:
    """Merge one Globals value with the resource's own value the way SAM does.

    Maps merge key by key (recursively; the resource's value wins on a conflict), lists concatenate with the
    globals first, and anything else - scalars, intrinsic functions, or two values of different kinds - is
    replaced by the resource's value.
    """
    if (
        isinstance(global_value, dict)
        and isinstance(local_value, dict)
        and not is_intrinsic(global_value)
        and not is_intrinsic(local_value)
    ):
        merged = copy.deepcopy(global_value)
        for key, value in local_value.items():
            merged[key] = merge_globals(global_value[key], value) if key in global_value else copy.deepcopy(value)
        return merged
    if isinstance(global_value, list) and isinstance(local_value, list):
        return copy.deepcopy(global_value) + copy.deepcopy(local_value)
    return copy.deepcopy(local_value)


@dataclass(frozen=True, slots=True)
class ApiEventSource:
    path: str  # e.g. "/webhooks/{provider}"
    method: str  # upper-cased; "ANY" matches every method
    api: str | None  # logical id of RestApiId / ApiId; None means SAM's implicit API

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters if a request (method, path) is routed to this event, else None."""
        if self.method != "ANY" and method.upper() != self.method:
            return None
        found = re.fullmatch(self._path_regex(), path)
        return dict(found.groupdict()) if found else None

    def _path_regex(self) -> str:
        parts = []
        for segment in re.split(r"(\{[^}]+\})", self.path):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1]
                greedy = name.endswith("+")
                group = _NON_WORD.sub("_", name.removesuffix("+"))
                parts.append(f"(?P<{group}>.+)" if greedy else f"(?P<{group}>[^/]+)")
            else:
                parts.append(re.escape(segment))
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class ScheduleEventSource:
    expression: str  # resolved, e.g. "rate(1 minute)"
    enabled: bool
    input: str | None  # the Input JSON string sent as the event, if the template sets one

    @property
    def interval_seconds(self) -> float:
        return schedule_interval_seconds(self.expression)


@dataclass(frozen=True, slots=True)
class DynamoDBEventSource:
    stream_source: str  # logical id of the table whose StreamArn the event reads
    starting_position: str
    batch_size: int
    maximum_retry_attempts: int | None  # None: AWS's default, retry until the record expires
    bisect_batch_on_function_error: bool
    function_response_types: list[str]
    filter_patterns: list[dict[str, Any]]
    maximum_batching_window_in_seconds: int
    enabled: bool
    on_failure_destination: Any  # raw, e.g. {"Fn::GetAtt": ["FinalizeFailureQueue", "Arn"]}, or None

    @property
    def reports_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types


@dataclass(frozen=True, slots=True)
class SqsEventSource:
    queue: str  # logical id of the queue (from Fn::GetAtt Queue.Arn)
    batch_size: int
    function_response_types: list[str]
    filter_patterns: list[dict[str, Any]]
    enabled: bool


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One entry of a function's Events: its name, Type and raw (unresolved) Properties."""

    name: str
    type: str
    properties: dict[str, Any]

    def _require(self, *types: str) -> None:
        if self.type not in types:
            raise TemplateError(f"event {self.name} is of type {self.type}, not {' or '.join(types)}")

    def _where(self, key: str) -> str:
        return f"event {self.name} ({self.type}) {key}"

    def api(self) -> ApiEventSource:
        self._require("Api", "HttpApi")
        path, method = self.properties.get("Path"), self.properties.get("Method")
        if not isinstance(path, str) or not isinstance(method, str):
            raise TemplateError(f"{self._where('Path/Method')}: both must be literal strings")
        api_key = "RestApiId" if self.type == "Api" else "ApiId"
        api_ref = self.properties.get(api_key)
        api = None if api_ref is None else _ref_target(api_ref, self._where(api_key))
        return ApiEventSource(path=path, method=method.upper(), api=api)

    def schedule(self, resolver: Resolver | None = None) -> ScheduleEventSource:
        """The schedule; a resolver is needed when the expression (or Enabled/State) uses intrinsic functions."""
        self._require("Schedule", "ScheduleV2")
        key = "Schedule" if self.type == "Schedule" else "ScheduleExpression"

        def value(name: str) -> Any:
            raw = self.properties.get(name)
            if raw is None or not isinstance(raw, dict | list):
                return raw
            if resolver is None:
                raise TemplateError(f"{self._where(name)} uses intrinsic functions; pass a Resolver to read it")
            resolved = resolver.resolve(raw)
            return None if resolved is NO_VALUE else resolved

        expression = value(key)
        if expression is None:
            raise TemplateError(f"{self._where(key)}: missing")
        enabled = True
        if (raw_enabled := value("Enabled")) is not None:
            enabled = _as_bool(raw_enabled, self._where("Enabled"))
        if (state := value("State")) is not None:
            enabled = _scalar_to_str(state, self._where("State")).upper() == "ENABLED"
        raw_input = value("Input")
        return ScheduleEventSource(
            expression=_scalar_to_str(expression, self._where(key)),
            enabled=enabled,
            input=None if raw_input is None else _scalar_to_str(raw_input, self._where("Input")),
        )

    def dynamodb(self) -> DynamoDBEventSource:
        self._require("DynamoDB")
        props = self.properties
        table, attribute = _get_att_parts(props.get("Stream"), self._where("Stream"))
        if attribute != "StreamArn":
            raise TemplateError(f"{self._where('Stream')}: expected {table}.StreamArn, got {table}.{attribute}")
        position = props.get("StartingPosition")
        if not isinstance(position, str):
            raise TemplateError(f"{self._where('StartingPosition')}: expected a literal string, got {position!r}")
        retries = props.get("MaximumRetryAttempts")
        return DynamoDBEventSource(
            stream_source=table,
            starting_position=position,
            batch_size=_as_int(props.get("BatchSize", 100), self._where("BatchSize")),
            maximum_retry_attempts=None if retries is None else _as_int(retries, self._where("MaximumRetryAttempts")),
            bisect_batch_on_function_error=_as_bool(
                props.get("BisectBatchOnFunctionError", False), self._where("BisectBatchOnFunctionError")
            ),
            function_response_types=self._string_list("FunctionResponseTypes"),
            filter_patterns=self.filter_patterns(),
            maximum_batching_window_in_seconds=_as_int(
                props.get("MaximumBatchingWindowInSeconds", 0), self._where("MaximumBatchingWindowInSeconds")
            ),
            enabled=_as_bool(props.get("Enabled", True), self._where("Enabled")),
            on_failure_destination=((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination"),
        )

    def sqs(self) -> SqsEventSource:
        self._require("SQS")
        queue, _attribute = _get_att_parts(self.properties.get("Queue"), self._where("Queue"))
        return SqsEventSource(
            queue=queue,
            batch_size=_as_int(self.properties.get("BatchSize", 10), self._where("BatchSize")),
            function_response_types=self._string_list("FunctionResponseTypes"),
            filter_patterns=self.filter_patterns(),
            enabled=_as_bool(self.properties.get("Enabled", True), self._where("Enabled")),
        )

    def filter_patterns(self) -> list[dict[str, Any]]:
        """FilterCriteria.Filters[].Pattern, each parsed from its JSON string into a dict (empty: no filtering)."""
        criteria = self.properties.get("FilterCriteria") or {}
        filters = (criteria.get("Filters") or []) if isinstance(criteria, dict) else None
        if not isinstance(filters, list):
            raise TemplateError(f"{self._where('FilterCriteria')}: expected {{'Filters': [...]}}")
        patterns = []
        for index, entry in enumerate(filters):
            raw = entry.get("Pattern") if isinstance(entry, dict) else None
            try:
                pattern = json.loads(raw) if isinstance(raw, str) else raw
            except json.JSONDecodeError as error:
                raise TemplateError(f"{self._where('FilterCriteria')}: filter {index} is not JSON: {error}") from None
            if not isinstance(pattern, dict):
                raise TemplateError(f"{self._where('FilterCriteria')}: filter {index} is not a JSON object")
            patterns.append(pattern)
        return patterns

    def _string_list(self, key: str) -> list[str]:
        value = self.properties.get(key) or []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise TemplateError(f"{self._where(key)}: expected a list of strings, got {value!r}")
        return list(value)


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """An AWS::Serverless::Function with Globals.Function merged in; values are raw (unresolved) template values."""

    logical_id: str
    code_uri: str
    handler: str
    module: str  # "submit_handler" for handler "submit_handler.lambda_handler"
    attribute: str  # "lambda_handler"
    runtime: str | None
    timeout: int
    memory_size: int
    environment: dict[str, Any]  # merged Environment.Variables, unresolved
    layers: list[Any]  # merged Layers, unresolved (globals first)
    events: list[EventSpec]
    properties: dict[str, Any] = field(repr=False)  # every merged property, unresolved
    condition: str | None = None  # the resource's Condition, if any

    def resolved_environment(self, resolver: Resolver) -> dict[str, str]:
        """The environment variables as Lambda would see them: every value a plain string; NoValue drops a key."""
        environment: dict[str, str] = {}
        for name, raw in self.environment.items():
            value = resolver.resolve(raw)
            if value is NO_VALUE:
                continue
            environment[name] = _scalar_to_str(value, f"{self.logical_id} environment variable {name}")
        return environment

    def event(self, name: str) -> EventSpec:
        for event in self.events:
            if event.name == name:
                return event
        raise TemplateError(f"{self.logical_id} has no event called {name}")

    def events_of_type(self, event_type: str) -> list[EventSpec]:
        return [event for event in self.events if event.type == event_type]


def _serverless_functions(template: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in (template.get("Resources") or {}).items():
        if isinstance(resource, dict) and resource.get("Type") == SERVERLESS_FUNCTION:
            yield logical_id, resource


def functions(template: Mapping[str, Any]) -> list[FunctionSpec]:
    """Every AWS::Serverless::Function of the template, in template order, with Globals.Function merged in."""
    global_function = ((template.get("Globals") or {}).get("Function")) or {}
    specs = []
    for logical_id, resource in _serverless_functions(template):
        props = merge_globals(global_function, resource.get("Properties") or {})
        where = f"function {logical_id}"
        code_uri, handler = props.get("CodeUri"), props.get("Handler")
        if not isinstance(code_uri, str):
            raise TemplateError(f"{where}: CodeUri must be a local path string, got {code_uri!r}")
        if not isinstance(handler, str) or "." not in handler:
            raise TemplateError(f"{where}: Handler must look like 'module.function', got {handler!r}")
        module, attribute = handler.rsplit(".", 1)
        runtime = props.get("Runtime")
        environment = props.get("Environment") or {}
        plain_environment = isinstance(environment, dict) and not is_intrinsic(environment)
        variables = (environment.get("Variables") or {}) if plain_environment else environment
        if not isinstance(variables, dict) or is_intrinsic(variables):
            raise TemplateError(f"{where}: Environment.Variables must be a mapping, got {variables!r}")
        layers = props.get("Layers") or []
        if not isinstance(layers, list):
            raise TemplateError(f"{where}: Layers must be a list, got {layers!r}")
        raw_events = props.get("Events") or {}
        if not isinstance(raw_events, dict):
            raise TemplateError(f"{where}: Events must be a mapping, got {raw_events!r}")
        events = []
        for name, event in raw_events.items():
            if not isinstance(event, dict) or not isinstance(event.get("Type"), str):
                raise TemplateError(f"{where}: event {name} has no Type")
            events.append(EventSpec(name=name, type=event["Type"], properties=event.get("Properties") or {}))
        condition = resource.get("Condition")
        specs.append(
            FunctionSpec(
                logical_id=logical_id,
                code_uri=code_uri,
                handler=handler,
                module=module.replace("/", "."),
                attribute=attribute,
                runtime=runtime if isinstance(runtime, str) else None,
                timeout=_as_int(props.get("Timeout", DEFAULT_TIMEOUT_SECONDS), f"{where} Timeout"),
                memory_size=_as_int(props.get("MemorySize", DEFAULT_MEMORY_MB), f"{where} MemorySize"),
                environment=variables,
                layers=layers,
                events=events,
                properties=props,
                condition=condition if isinstance(condition, str) else None,
            )
        )
    return specs


def function_by_id(template: Mapping[str, Any], logical_id: str) -> FunctionSpec:
    for spec in functions(template):
        if spec.logical_id == logical_id:
            return spec
    raise TemplateError(f"no {SERVERLESS_FUNCTION} called {logical_id} in the template")


def layer_content_dirs(
    template: Mapping[str, Any], function: FunctionSpec, resolver: Resolver | None = None
) -> list[str]:
    """The ContentUri of each of the function's layers, in order (globals' layers first): see `template_layers`."""
    return [content_uri for _, content_uri in template_layers(template, function, resolver)]


def template_layers(
    template: Mapping[str, Any], function: FunctionSpec, resolver: Resolver | None = None
) -> list[tuple[str, str]]:
    """(logical id, ContentUri) of each of the function's layers, in order (globals' layers first).

    Only layers defined in the template as AWS::Serverless::LayerVersion (referenced with ``!Ref``) can be run
    locally; a layer ARN or any other kind of layer raises :class:`TemplateError`, but AWS's OpenTelemetry layer, which
    the local runtime provides itself. A layer under ``Fn::If`` is the branch the stack's conditions choose
    (`resolver`); without a resolver, its branches that name one of the template's layers.
    """
    resources = template.get("Resources") or {}
    layers = []
    for layer in _chosen_layers(function.layers, resources, resolver):
        where = f"function {function.logical_id} layer {layer!r}"
        logical_id = _ref_target(layer, where)
        resource = resources.get(logical_id)
        if not isinstance(resource, dict) or resource.get("Type") != SERVERLESS_LAYER:
            raise TemplateError(f"{where}: {logical_id} is not an {SERVERLESS_LAYER} of this template")
        content_uri = (resource.get("Properties") or {}).get("ContentUri")
        if not isinstance(content_uri, str):
            raise TemplateError(f"{where}: ContentUri must be a local path string, got {content_uri!r}")
        layers.append((logical_id, content_uri))
    return layers


def _chosen_layers(layers: list[Any], resources: Mapping[str, Any], resolver: Resolver | None) -> Iterator[Any]:
    for layer in layers:
        branches = layer.get("Fn::If") if isinstance(layer, dict) and len(layer) == 1 else None
        if not (isinstance(branches, list) and len(branches) == 3 and isinstance(branches[0], str)):
            yield layer
        elif resolver is not None:
            chosen = branches[1] if resolver.condition(branches[0]) else branches[2]
            # AWS's OpenTelemetry layer is the local runtime's own (twin/otel_layer.py), not a directory.
            if chosen != {"Ref": "AWS::NoValue"} and not is_adot_layer(resolver.resolve(chosen)):
                yield chosen
        else:
            yield from (branch for branch in branches[1:] if _names_template_layer(branch, resources))


def _names_template_layer(value: Any, resources: Mapping[str, Any]) -> bool:
    target = value.get("Ref") if isinstance(value, dict) else None
    resource = resources.get(target) if isinstance(target, str) else None
    return isinstance(resource, dict) and resource.get("Type") == SERVERLESS_LAYER


# ------------------------------------------------------------------------------------------------------ schedule

_RATE: Final = re.compile(r"rate\(\s*(\d+)\s+([A-Za-z]+)\s*\)")
_RATE_UNITS: Final = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}


def schedule_interval_seconds(expression: str) -> float:
    """Seconds between runs of an EventBridge ``rate(...)`` expression, e.g. "rate(1 minute)" -> 60.0.

    As EventBridge requires: a positive whole number and a unit of minute(s), hour(s) or day(s), singular for 1
    and plural otherwise. ``cron(...)`` (and anything else) raises :class:`TemplateError`.
    """
    text = expression.strip()
    if text.startswith(("cron(", "at(")):
        raise TemplateError(f"schedule {expression!r}: only rate(...) expressions are supported locally")
    found = _RATE.fullmatch(text)
    if not found:
        raise TemplateError(f"schedule {expression!r}: expected rate(<value> <unit>)")
    value, unit = int(found.group(1)), found.group(2).lower()
    singular = unit[:-1] if unit.endswith("s") else unit
    if singular not in _RATE_UNITS:
        raise TemplateError(f"schedule {expression!r}: the unit must be minute(s), hour(s) or day(s)")
    if value <= 0:
        raise TemplateError(f"schedule {expression!r}: the value must be positive")
    if (value == 1) != (unit == singular):
        raise TemplateError(f"schedule {expression!r}: use the singular unit for 1 and the plural otherwise")
    return value * _RATE_UNITS[singular]
