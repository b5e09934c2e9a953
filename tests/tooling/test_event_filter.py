"""avatar_local.twin.event_filter: Lambda event filtering, so the local stream only invokes finalize when AWS would."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from avatar_local.twin.event_filter import (
    FilterPatternError,
    check_pattern,
    filter_records,
    filterable_record,
    matches,
    matches_any,
)
from avatar_local.twin.template import function_by_id, load_template

ROOT = Path(__file__).resolve().parents[2]

EVENT: dict[str, Any] = {
    "source": "aws.ec2",
    "detail-type": "EC2 Instance State-change Notification",
    "time": "2017-10-02T16:24:49Z",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-1", "arn:aws:ec2:us-east-1:123456789012:instance/i-2"],
    "detail": {
        "state": "running",
        "c-count": 5,
        "x-limit": 301.8,
        "flag": True,
        "nothing": None,
        "empty": "",
        "source-ip": "10.0.0.33",
        "tags": [],
        "nested": {"inner": "value"},
        "employees": [{"first": "John", "last": "Doe"}, {"first": "Anna", "last": "Smith"}],
        "matrix": [[1, 2], [3, [4]]],
    },
}

# (id, pattern, expected) against EVENT
CASES: list[tuple[str, dict[str, Any], bool]] = [
    # exact values, OR inside a list, AND across keys
    ("exact string", {"source": ["aws.ec2"]}, True),
    ("exact string mismatch", {"source": ["aws.s3"]}, False),
    ("any of the listed values", {"source": ["aws.s3", "aws.ec2"]}, True),
    ("all keys must match", {"source": ["aws.ec2"], "detail": {"state": ["stopped"]}}, False),
    ("nested object", {"detail": {"state": ["running"]}}, True),
    ("deeply nested", {"detail": {"nested": {"inner": ["value"]}}}, True),
    ("case sensitive", {"detail": {"state": ["RUNNING"]}}, False),
    ("number", {"detail": {"c-count": [5]}}, True),
    ("number equal as float", {"detail": {"c-count": [5.0]}}, True),
    ("number is not a string", {"detail": {"c-count": ["5"]}}, False),
    ("string is not a number", {"detail": {"state": [5]}}, False),
    ("boolean", {"detail": {"flag": [True]}}, True),
    ("boolean is not a number", {"detail": {"flag": [1]}}, False),
    ("boolean is not a string", {"detail": {"flag": ["true"]}}, False),
    ("null", {"detail": {"nothing": [None]}}, True),
    ("null does not match a missing key", {"detail": {"absent": [None]}}, False),
    ("null does not match an empty string", {"detail": {"empty": [None]}}, False),
    ("empty string", {"detail": {"empty": [""]}}, True),
    # absent keys
    ("absent key", {"detail": {"absent": ["x"]}}, False),
    ("absent parent", {"missing": {"child": ["x"]}}, False),
    ("an object is not a value", {"detail": {"nested": ["value"]}}, False),
    ("a value is not an object", {"source": {"inner": ["x"]}}, False),
    # arrays in the event
    ("array: any element", {"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-2"]}, True),
    ("array: no element", {"resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-3"]}, False),
    ("array of objects", {"detail": {"employees": {"first": ["Anna"]}}}, True),
    ("array of objects: same element", {"detail": {"employees": {"first": ["Anna"], "last": ["Smith"]}}}, True),
    (
        "array of objects: fields from two elements",
        {"detail": {"employees": {"first": ["Anna"], "last": ["Doe"]}}},
        False,
    ),
    ("nested arrays are crushed", {"detail": {"matrix": [4]}}, True),
    ("empty array has no value", {"detail": {"tags": ["x"]}}, False),
    # exists (leaf nodes only)
    ("exists true on a value", {"detail": {"state": [{"exists": True}]}}, True),
    ("exists true on a missing key", {"detail": {"absent": [{"exists": True}]}}, False),
    ("exists false on a missing key", {"detail": {"absent": [{"exists": False}]}}, True),
    ("exists false on a value", {"detail": {"state": [{"exists": False}]}}, False),
    ("exists true on null", {"detail": {"nothing": [{"exists": True}]}}, True),
    ("exists true on empty string", {"detail": {"empty": [{"exists": True}]}}, True),
    ("exists false under a missing parent", {"missing": {"child": [{"exists": False}]}}, True),
    ("exists true under a missing parent", {"missing": {"child": [{"exists": True}]}}, False),
    ("exists false on an object (not a leaf)", {"detail": {"nested": [{"exists": False}]}}, True),
    ("exists true on an object (not a leaf)", {"detail": {"nested": [{"exists": True}]}}, False),
    ("exists false on an empty array", {"detail": {"tags": [{"exists": False}]}}, True),
    ("exists true on an array of values", {"resources": [{"exists": True}]}, True),
    ("exists false on an object's leaf", {"detail": {"nested": {"inner": [{"exists": False}]}}}, False),
    ("exists combined with values", {"detail": {"absent": ["x", {"exists": False}]}}, True),
    # prefix / suffix / equals-ignore-case / wildcard
    ("prefix", {"time": [{"prefix": "2017-10-02"}]}, True),
    ("prefix mismatch", {"time": [{"prefix": "2018"}]}, False),
    ("prefix on a number", {"detail": {"c-count": [{"prefix": "5"}]}}, False),
    ("prefix ignoring case", {"source": [{"prefix": {"equals-ignore-case": "AWS."}}]}, True),
    ("suffix", {"detail-type": [{"suffix": "Notification"}]}, True),
    ("suffix mismatch", {"detail-type": [{"suffix": "notification"}]}, False),
    ("suffix ignoring case", {"detail-type": [{"suffix": {"equals-ignore-case": "NOTIFICATION"}}]}, True),
    ("suffix on an array", {"resources": [{"suffix": "/i-2"}]}, True),
    ("equals-ignore-case", {"source": [{"equals-ignore-case": "AWS.EC2"}]}, True),
    ("equals-ignore-case mismatch", {"source": [{"equals-ignore-case": "AWS.EC"}]}, False),
    ("wildcard", {"detail-type": [{"wildcard": "EC2*Notification"}]}, True),
    ("wildcard mismatch", {"detail-type": [{"wildcard": "EC2*Alert"}]}, False),
    ("wildcard escaped star", {"source": [{"wildcard": "aws\\*"}]}, False),
    # anything-but
    ("anything-but value", {"detail": {"state": [{"anything-but": "initializing"}]}}, True),
    ("anything-but the value itself", {"detail": {"state": [{"anything-but": "running"}]}}, False),
    ("anything-but list", {"detail": {"state": [{"anything-but": ["stopped", "running"]}]}}, False),
    ("anything-but numbers", {"detail": {"c-count": [{"anything-but": [100, 200]}]}}, True),
    ("anything-but number hit", {"detail": {"c-count": [{"anything-but": [5]}]}}, False),
    ("anything-but needs the key", {"detail": {"absent": [{"anything-but": "x"}]}}, False),
    ("anything-but prefix", {"detail": {"state": [{"anything-but": {"prefix": "init"}}]}}, True),
    ("anything-but prefix hit", {"detail": {"state": [{"anything-but": {"prefix": "run"}}]}}, False),
    ("anything-but prefix list", {"detail": {"state": [{"anything-but": {"prefix": ["x", "ru"]}}]}}, False),
    ("anything-but suffix", {"detail": {"state": [{"anything-but": {"suffix": "ing"}}]}}, False),
    ("anything-but ignore case", {"detail": {"state": [{"anything-but": {"equals-ignore-case": "RUNNING"}}]}}, False),
    ("anything-but wildcard", {"detail": {"state": [{"anything-but": {"wildcard": "st*"}}]}}, True),
    (
        "anything-but on an array: one element differs",
        {"resources": [{"anything-but": "arn:aws:ec2:us-east-1:123456789012:instance/i-1"}]},
        True,
    ),
    # numeric (JSON numbers only)
    ("numeric range", {"detail": {"c-count": [{"numeric": [">", 0, "<=", 5]}]}}, True),
    ("numeric range excludes", {"detail": {"c-count": [{"numeric": [">", 5, "<=", 10]}]}}, False),
    ("numeric equals", {"detail": {"x-limit": [{"numeric": ["=", 3.018e2]}]}}, True),
    ("numeric less than", {"detail": {"c-count": [{"numeric": ["<", 5]}]}}, False),
    ("numeric at least", {"detail": {"c-count": [{"numeric": [">=", 5]}]}}, True),
    ("numeric on a string", {"detail": {"state": [{"numeric": [">", 0]}]}}, False),
    ("numeric on a boolean", {"detail": {"flag": [{"numeric": [">", 0]}]}}, False),
    ("numeric on an array", {"detail": {"matrix": [{"numeric": [">", 3.5]}]}}, True),
    # cidr
    ("cidr", {"detail": {"source-ip": [{"cidr": "10.0.0.0/24"}]}}, True),
    ("cidr outside", {"detail": {"source-ip": [{"cidr": "10.0.1.0/24"}]}}, False),
    ("cidr on a non-address", {"detail": {"state": [{"cidr": "10.0.0.0/8"}]}}, False),
    # $or
    ("$or", {"$or": [{"source": ["aws.s3"]}, {"detail": {"state": ["running"]}}]}, True),
    ("$or none", {"$or": [{"source": ["aws.s3"]}, {"detail": {"state": ["stopped"]}}]}, False),
    ("$or nested", {"detail": {"$or": [{"c-count": [1]}, {"x-limit": [{"numeric": [">", 300]}]}]}}, True),
    ("empty pattern", {}, True),
]


@pytest.mark.parametrize(("pattern", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_matches(pattern: dict[str, Any], expected: bool) -> None:
    assert matches(pattern, EVENT) is expected


def test_matching_does_not_modify_the_event() -> None:
    event = copy.deepcopy(EVENT)
    for _name, pattern, _expected in CASES:
        matches(pattern, event)
    assert event == EVENT


@pytest.mark.parametrize(
    "pattern",
    [
        {"source": "aws.ec2"},  # values must be in a list
        {"source": [{"unknown-operator": 1}]},
        {"source": [{"prefix": "a", "suffix": "b"}]},
        {"source": [{"exists": "yes"}]},
        {"source": [{"prefix": 5}]},
        {"source": [{"numeric": [">", "5"]}]},
        {"source": [{"numeric": ["~", 5]}]},
        {"source": [{"numeric": ["<", 5, ">", 0]}]},
        {"source": [{"numeric": [">", 0, "<"]}]},
        {"source": [{"anything-but": {"numeric": [">", 0]}}]},
        {"source": [{"anything-but": []}]},
        {"source": [{"anything-but": [{"prefix": "a"}]}]},
        {"source": [{"cidr": "not-a-network"}]},
        {"source": [{"wildcard": "a**b"}]},
        {"source": [{"wildcard": "a\\b"}]},
        {"detail": {"state": [["nested list"]]}},
    ],
)
def test_invalid_patterns_are_rejected(pattern: dict[str, Any]) -> None:
    with pytest.raises(FilterPatternError):
        check_pattern(pattern)
    with pytest.raises(FilterPatternError):
        matches(pattern, EVENT)


def test_a_pattern_must_be_an_object() -> None:
    with pytest.raises(FilterPatternError):
        matches(["source"], EVENT)  # type: ignore[arg-type]


def test_matches_any_ors_the_filters_and_no_filters_pass_everything() -> None:
    assert matches_any([{"source": ["aws.s3"]}, {"source": ["aws.ec2"]}], EVENT)
    assert not matches_any([{"source": ["aws.s3"]}, {"source": ["aws.sqs"]}], EVENT)
    assert matches_any([], EVENT)


def test_or_key_that_is_not_an_or_is_a_plain_field() -> None:
    # Event Ruler reads "$or" as OR only for a list of two or more objects.
    assert matches({"$or": ["x"]}, {"$or": "x"})
    assert not matches({"$or": ["x"]}, {"other": "x"})


# ------------------------------------------------------------------------------------------------- SQS/Kinesis


def test_sqs_body_is_matched_as_json() -> None:
    record = {"eventSource": "aws:sqs", "body": json.dumps({"kind": "render", "size": 3}), "messageId": "1"}
    view = filterable_record(record)
    assert view["body"] == {"kind": "render", "size": 3}
    assert record["body"] == json.dumps({"kind": "render", "size": 3}), "the record itself is untouched"
    assert matches({"body": {"kind": ["render"], "size": [{"numeric": [">", 2]}]}}, view)
    plain = {"eventSource": "aws:sqs", "body": "just text"}
    assert matches({"body": [{"prefix": "just"}]}, filterable_record(plain))


def test_kinesis_data_is_decoded() -> None:
    data = base64.b64encode(json.dumps({"temperature": 30}).encode()).decode()
    record = {"eventSource": "aws:kinesis", "kinesis": {"data": data}}
    assert matches({"kinesis": {"data": {"temperature": [{"numeric": [">=", 30]}]}}}, filterable_record(record))
    assert filterable_record({"eventSource": "aws:kinesis", "kinesis": {"data": "%%%"}})["kinesis"]["data"] == "%%%"


def test_filter_records_keeps_order_and_records() -> None:
    records = [
        {"eventSource": "aws:sqs", "body": '{"n": 1}'},
        {"eventSource": "aws:sqs", "body": '{"n": 2}'},
        {"eventSource": "aws:sqs", "body": '{"n": 3}'},
    ]
    assert filter_records([{"body": {"n": [1, 3]}}], records) == [records[0], records[2]]
    assert filter_records([], records) == records


# ------------------------------------------------------------------------------ the template's finalize filter


@pytest.fixture(scope="module")
def finalize_patterns() -> list[dict[str, Any]]:
    spec = function_by_id(load_template(ROOT / "template.yaml"), "FinalizeFunction")
    return spec.event("TaskStream").dynamodb().filter_patterns


def stream_record(status: str, *, notified: bool = False, event_name: str = "MODIFY") -> dict[str, Any]:
    """A task-table stream record as Lambda receives it, from the sample in events/."""
    record = json.loads((ROOT / "events" / "finalize_output_ready.json").read_text())["Records"][0]
    record["eventName"] = event_name
    if event_name == "REMOVE":
        # A TTL expiry or deletion carries only the old image.
        record["dynamodb"]["OldImage"]["status"] = {"S": status}
        del record["dynamodb"]["NewImage"]
        return record
    record["dynamodb"]["NewImage"]["status"] = {"S": status}
    if notified:
        record["dynamodb"]["NewImage"]["notified_at"] = {"S": "2026-01-01T00:01:00+00:00"}
    if event_name == "INSERT":
        del record["dynamodb"]["OldImage"]
    return record


FINALIZE_CASES: list[tuple[str, dict[str, Any], bool]] = [
    ("OUTPUT_READY modify", stream_record("OUTPUT_READY"), True),
    ("OUTPUT_READY insert", stream_record("OUTPUT_READY", event_name="INSERT"), True),
    ("OUTPUT_READY even when notified", stream_record("OUTPUT_READY", notified=True), True),
    ("COMPLETED without notified_at", stream_record("COMPLETED"), True),
    ("FAILED without notified_at", stream_record("FAILED"), True),
    ("REJECTED insert without notified_at", stream_record("REJECTED", event_name="INSERT"), True),
    ("TIMED_OUT without notified_at", stream_record("TIMED_OUT"), True),
    ("COMPLETED with notified_at", stream_record("COMPLETED", notified=True), False),
    ("FAILED with notified_at", stream_record("FAILED", notified=True), False),
    ("TIMED_OUT with notified_at", stream_record("TIMED_OUT", notified=True), False),
    ("PROCESSING", stream_record("PROCESSING"), False),
    ("WAITING_FOR_PAIR", stream_record("WAITING_FOR_PAIR", event_name="INSERT"), False),
    ("SUBMITTED", stream_record("SUBMITTED"), False),
    ("FINALIZING", stream_record("FINALIZING"), False),
    ("REMOVE of a completed task", stream_record("COMPLETED", event_name="REMOVE"), False),
    ("REMOVE of an output-ready task", stream_record("OUTPUT_READY", event_name="REMOVE"), False),
]


@pytest.mark.parametrize(("record", "expected"), [c[1:] for c in FINALIZE_CASES], ids=[c[0] for c in FINALIZE_CASES])
def test_finalize_filter_against_stream_records(
    finalize_patterns: list[dict[str, Any]], record: dict[str, Any], expected: bool
) -> None:
    assert matches_any(finalize_patterns, record) is expected


def test_finalize_filter_on_the_sample_event(finalize_patterns: list[dict[str, Any]]) -> None:
    event = json.loads((ROOT / "events" / "finalize_output_ready.json").read_text())
    assert filter_records(finalize_patterns, event["Records"]) == event["Records"]


def test_absence_must_be_tested_on_the_typed_leaf() -> None:
    """exists only sees leaves: on the attribute's {"S": ...} map it would treat an announced task as unannounced,
    which is why the template tests notified_at.S."""
    on_map = {"dynamodb": {"NewImage": {"notified_at": [{"exists": False}]}}}
    on_leaf = {"dynamodb": {"NewImage": {"notified_at": {"S": [{"exists": False}]}}}}
    announced = stream_record("COMPLETED", notified=True)
    unannounced = stream_record("COMPLETED")
    assert matches(on_map, announced)  # the map is not a leaf, so it "does not exist"
    assert not matches(on_leaf, announced)
    assert matches(on_map, unannounced)
    assert matches(on_leaf, unannounced)


def test_typed_numbers_in_stream_records_are_strings() -> None:
    """DynamoDB delivers numbers as {"N": "4"}: exact string matching works, numeric matching does not."""
    record = stream_record("OUTPUT_READY")
    assert matches({"dynamodb": {"NewImage": {"version": {"N": ["4"]}}}}, record)
    assert not matches({"dynamodb": {"NewImage": {"version": {"N": [4]}}}}, record)
    assert not matches({"dynamodb": {"NewImage": {"version": {"N": [{"numeric": [">", 0]}]}}}}, record)
    assert matches({"dynamodb": {"NewImage": {"image": {"M": {"key": {"S": [{"prefix": "inbox/"}]}}}}}}, record)
