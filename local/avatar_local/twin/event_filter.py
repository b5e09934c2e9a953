"""Lambda event filtering (EventBridge event-pattern syntax), so the local stack drops what AWS would drop.

Lambda's event-source filters use the pattern language of EventBridge, whose engine is AWS's open-source Event
Ruler. This module implements the parts of it a stream/queue filter uses, with Event Ruler's semantics:

* A pattern is a JSON object whose structure mirrors the event. Keys are ANDed; a nested object descends into the
  event's object of that name. A key's *list* holds alternatives (ORed): literal values (strings, numbers,
  booleans, null; exact and type-aware, so "5" is not 5) and operator objects - ``prefix``, ``suffix``,
  ``equals-ignore-case``, ``wildcard``, ``anything-but`` (a value, a list, or ``{prefix|suffix|
  equals-ignore-case|wildcard: ...}``), ``numeric`` (e.g. ``[">", 0, "<=", 5]``; JSON numbers only - a
  DynamoDB ``{"N": "5"}`` is a string), ``cidr`` and ``exists``. ``"$or": [{...}, {...}]`` ORs sub-patterns.
* Arrays in the event are "crushed out": a list of values matches when any element matches, and a list of objects
  matches a nested pattern when one element matches all of it (two fields never match from different elements).
* A pattern key absent from the event does not match - except ``{"exists": false}``.
* Exists works on *leaf* nodes only ("Exists matching only works on leaf nodes. It does not work on intermediate
  nodes." - EventBridge user guide and the Event Ruler README). A key whose value is an object (or an empty list,
  or a list of objects) has no leaf value at that path, so for ``exists`` it counts as absent: ``"a": [{"exists":
  false}]`` MATCHES an event where "a" is an object, and ``"a": [{"exists": true}]`` does not. The Event Ruler
  README shows exactly this: ``{"detail": {"c-count": [{"exists": false}]}}`` "would also match" an event whose
  ``c-count`` is ``{"c1": 100}`` "because c-count is not a leaf node". That is why the template tests the absence
  of a DynamoDB attribute on its typed leaf (``"notified_at": {"S": [{"exists": false}]}``), never on the
  attribute's ``{"S": ...}`` map itself. A null value is a leaf (it exists).

Lambda applies a filter to each record as delivered (a DynamoDB stream record: ``eventName``, ``dynamodb.Keys``,
``dynamodb.NewImage`` with typed values such as ``{"S": "x"}`` / ``{"N": "5"}``); for SQS it matches ``body`` as
JSON when the body is a JSON object (see :func:`filterable_record`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = [
    "FilterPatternError",
    "check_pattern",
    "filter_records",
    "filterable_record",
    "matches",
    "matches_any",
]


class FilterPatternError(ValueError):
    """The filter pattern is not valid event-pattern syntax."""


_STRING_OPERATORS: Final = frozenset({"prefix", "suffix", "equals-ignore-case", "wildcard"})
_OPERATORS: Final = _STRING_OPERATORS | {"anything-but", "numeric", "cidr", "exists"}
_NUMERIC_OPERATORS: Final = frozenset({"=", "<", "<=", ">", ">="})


# -------------------------------------------------------------------------------------------------- public API


def matches(pattern: Mapping[str, Any], event: Any) -> bool:
    """Whether event matches the filter pattern. Raises :class:`FilterPatternError` for an invalid pattern."""
    check_pattern(pattern)
    return _match_object(pattern, event)


def matches_any(patterns: Iterable[Mapping[str, Any]], event: Any) -> bool:
    """Whether event matches at least one of the patterns (a source's filters are ORed).

    An empty list of patterns means the source has no filter: everything matches.
    """
    patterns = list(patterns)
    if not patterns:
        return True
    return any(matches(pattern, event) for pattern in patterns)


def filterable_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as Lambda's filter sees it.

    SQS: ``body`` is matched as JSON when it parses to a JSON object (else as the plain string). Kinesis: ``data``
    is base64-decoded and matched as JSON when it is a JSON object. Anything else (DynamoDB streams included) is
    matched as delivered.
    """
    view = dict(record)
    source = record.get("eventSource") or record.get("EventSource")
    if source == "aws:sqs" and isinstance(record.get("body"), str):
        view["body"] = _json_object_or(record["body"], record["body"])
    elif source == "aws:kinesis" and isinstance(record.get("kinesis"), Mapping):
        kinesis = dict(record["kinesis"])
        if isinstance(kinesis.get("data"), str):
            try:
                decoded = base64.b64decode(kinesis["data"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = None
            if decoded is not None:
                kinesis["data"] = _json_object_or(decoded, kinesis["data"])
        view["kinesis"] = kinesis
    return view


def filter_records(patterns: Sequence[Mapping[str, Any]], records: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The records (unchanged, in order) that pass the filters, as an event source mapping would deliver them."""
    return [record for record in records if matches_any(patterns, filterable_record(record))]


def _json_object_or(text: str, fallback: Any) -> Any:
    try:
        parsed = json.loads(text)
    except ValueError:
        return fallback
    return parsed if isinstance(parsed, dict) else fallback


# -------------------------------------------------------------------------------------------------- validation


def check_pattern(pattern: Any, path: str = "") -> None:
    """Raise :class:`FilterPatternError` unless pattern is a valid event pattern."""
    if not isinstance(pattern, Mapping):
        raise FilterPatternError(f"{path or 'pattern'}: expected a JSON object, got {pattern!r}")
    for key, rule in pattern.items():
        where = f"{path}.{key}" if path else str(key)
        if _is_or(key, rule):
            for alternative in rule:
                check_pattern(alternative, where)
        elif isinstance(rule, Mapping):
            check_pattern(rule, where)
        elif isinstance(rule, list):
            for item in rule:
                _check_rule(item, where)
        else:
            raise FilterPatternError(f"{where}: expected a list of values or a nested object, got {rule!r}")


def _is_or(key: str, rule: Any) -> bool:
    """Event Ruler reads "$or" as OR only for a list of at least two objects; otherwise it is a plain key."""
    return (
        key == "$or" and isinstance(rule, list) and len(rule) >= 2 and all(isinstance(item, Mapping) for item in rule)
    )


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _check_strings(value: Any, where: str, *, allow_list: bool) -> None:
    values = value if allow_list and isinstance(value, list) else [value]
    if not values or not all(isinstance(item, str) for item in values):
        raise FilterPatternError(f"{where}: expected a string{' or a list of strings' if allow_list else ''}")


def _check_rule(rule: Any, where: str) -> None:
    if _is_scalar(rule):
        return
    if not isinstance(rule, Mapping) or len(rule) != 1 or next(iter(rule)) not in _OPERATORS:
        raise FilterPatternError(f"{where}: {rule!r} is neither a value nor one of the operators {sorted(_OPERATORS)}")
    ((operator, argument),) = rule.items()
    at = f"{where}: {operator}"
    if operator == "exists":
        if not isinstance(argument, bool):
            raise FilterPatternError(f"{at} must be true or false")
    elif operator in {"prefix", "suffix"}:
        if isinstance(argument, Mapping) and set(argument) == {"equals-ignore-case"}:
            _check_strings(argument["equals-ignore-case"], at, allow_list=False)
        else:
            _check_strings(argument, at, allow_list=False)
    elif operator in {"equals-ignore-case", "wildcard", "cidr"}:
        _check_strings(argument, at, allow_list=False)
        if operator == "cidr":
            try:
                ipaddress.ip_network(argument, strict=False)
            except ValueError as error:
                raise FilterPatternError(f"{at}: {error}") from None
        if operator == "wildcard":
            _wildcard_regex(argument, at)
    elif operator == "numeric":
        _numeric_checks(argument, at)
    elif operator == "anything-but":
        if isinstance(argument, Mapping):
            if len(argument) != 1 or next(iter(argument)) not in _STRING_OPERATORS:
                raise FilterPatternError(f"{at}: nested operator must be one of {sorted(_STRING_OPERATORS)}")
            ((inner, inner_argument),) = argument.items()
            _check_strings(inner_argument, f"{at} {inner}", allow_list=True)
            if inner == "wildcard":
                for text in inner_argument if isinstance(inner_argument, list) else [inner_argument]:
                    _wildcard_regex(text, at)
        elif isinstance(argument, list):
            if not argument or not all(_is_scalar(item) for item in argument):
                raise FilterPatternError(f"{at}: expected a non-empty list of values")
        elif not _is_scalar(argument):
            raise FilterPatternError(f"{at}: expected a value, a list of values or a string operator")


def _numeric_checks(argument: Any, where: str) -> list[tuple[str, float]]:
    if not isinstance(argument, list) or len(argument) not in {2, 4}:
        raise FilterPatternError(f"{where}: expected [op, number] or [op, number, op, number]")
    checks = []
    for operator, bound in zip(argument[::2], argument[1::2], strict=True):
        if operator not in _NUMERIC_OPERATORS or not _is_number(bound):
            raise FilterPatternError(f"{where}: {operator!r} {bound!r} is not <operator> <number>")
        checks.append((operator, float(bound)))
    if len(checks) == 2 and not (checks[0][0] in {">", ">="} and checks[1][0] in {"<", "<="}):
        raise FilterPatternError(f"{where}: a range must be a lower bound (> or >=) then an upper bound (< or <=)")
    return checks


def _wildcard_regex(text: str, where: str) -> re.Pattern[str]:
    parts: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            following = text[index + 1 : index + 2]
            if following not in {"*", "\\"}:
                raise FilterPatternError(f"{where}: a backslash may only escape * or \\")
            parts.append(re.escape(following))
            index += 2
            continue
        if char == "*":
            if parts and parts[-1] == ".*":
                raise FilterPatternError(f"{where}: consecutive wildcard characters are not allowed")
            parts.append(".*")
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts), re.DOTALL)


# ---------------------------------------------------------------------------------------------------- matching


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaves(value: Any) -> list[Any]:
    """The leaf values at a path: a scalar is one leaf; arrays are crushed out; objects are not leaves."""
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, Mapping):
        return []
    return [value]


def _objects(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, list):
        return [found for item in value for found in _objects(item)]
    if isinstance(value, Mapping):
        return [value]
    return []


def _match_object(pattern: Mapping[str, Any], event: Any) -> bool:
    fields: Mapping[str, Any] = event if isinstance(event, Mapping) else {}
    for key, rule in pattern.items():
        if _is_or(key, rule):
            if not any(_match_object(alternative, event) for alternative in rule):
                return False
        elif isinstance(rule, Mapping):
            # Descend. With no object below this key (absent, a leaf, or an array without objects) nothing below
            # exists either, so only rules satisfied by absence ({"exists": false}) can match.
            objects = _objects(fields.get(key))
            if objects:
                if not any(_match_object(rule, found) for found in objects):
                    return False
            elif not _match_object(rule, {}):
                return False
        else:
            leaves = _leaves(fields[key]) if key in fields else []
            if not any(_match_rule(item, leaves) for item in rule):
                return False
    return True


def _match_rule(rule: Any, leaves: list[Any]) -> bool:
    if isinstance(rule, Mapping) and "exists" in rule:
        return bool(leaves) is rule["exists"]
    return any(_match_leaf(rule, leaf) for leaf in leaves)


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected is actual
    if _is_number(expected) or _is_number(actual):
        return _is_number(expected) and _is_number(actual) and float(expected) == float(actual)
    if expected is None or actual is None:
        return expected is None and actual is None
    return isinstance(expected, str) and isinstance(actual, str) and expected == actual


def _string_match(operator: str, argument: Any, value: Any) -> bool:
    """prefix / suffix / equals-ignore-case / wildcard against one leaf; only strings can match."""
    if not isinstance(value, str):
        return False
    if isinstance(argument, Mapping):  # {"prefix": {"equals-ignore-case": "x"}}
        expected, candidate = str(argument["equals-ignore-case"]).casefold(), value.casefold()
    else:
        expected, candidate = argument, value
    if operator == "prefix":
        return candidate.startswith(expected)
    if operator == "suffix":
        return candidate.endswith(expected)
    if operator == "equals-ignore-case":
        return candidate.casefold() == expected.casefold()
    return _wildcard_regex(expected, operator).fullmatch(candidate) is not None


def _match_leaf(rule: Any, value: Any) -> bool:
    if _is_scalar(rule):
        return _equal(rule, value)
    ((operator, argument),) = rule.items()
    if operator in _STRING_OPERATORS:
        return _string_match(operator, argument, value)
    if operator == "numeric":
        if not _is_number(value):
            return False
        number = float(value)
        return all(_compare(number, op, bound) for op, bound in _numeric_checks(argument, "numeric"))
    if operator == "cidr":
        if not isinstance(value, str):
            return False
        try:
            return ipaddress.ip_address(value) in ipaddress.ip_network(argument, strict=False)
        except ValueError:
            return False
    if operator == "anything-but":
        if isinstance(argument, Mapping):
            ((inner, inner_argument),) = argument.items()
            options = inner_argument if isinstance(inner_argument, list) else [inner_argument]
            return not any(_string_match(inner, option, value) for option in options)
        options = argument if isinstance(argument, list) else [argument]
        return not any(_equal(option, value) for option in options)
    raise FilterPatternError(f"unsupported operator {operator}")  # pragma: no cover - check_pattern rejects it


def _compare(number: float, operator: str, bound: float) -> bool:
    if operator == "=":
        return number == bound
    if operator == "<":
        return number < bound
    if operator == "<=":
        return number <= bound
    if operator == ">":
        return number > bound
    return number >= bound
