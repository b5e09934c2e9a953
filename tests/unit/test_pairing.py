"""pairing: how inbox keys become jobs and roles, and the content-derived task id."""

from __future__ import annotations

import pytest

from avatar_pipeline.domain.models import S3Object
from avatar_pipeline.domain.pairing import InboxEntry, content_id, options_key, parse_inbox_key

# --- parse_inbox_key -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # folder style: the folder is the job, any file name
        ("inbox/alice/face.png", InboxEntry("alice", "image", "face.png", True)),
        ("inbox/alice/portrait.jpeg", InboxEntry("alice", "image", "portrait.jpeg", True)),
        ("inbox/alice/voice.mp3", InboxEntry("alice", "audio", "voice.mp3", True)),
        ("inbox/alice/take-2.m4a", InboxEntry("alice", "audio", "take-2.m4a", True)),
        ("inbox/alice/clip.aac", InboxEntry("alice", "audio", "clip.aac", True)),
        # same-stem style: the stem is the job
        ("inbox/bob.jpg", InboxEntry("bob", "image", "bob.jpg", False)),
        ("inbox/bob.wav", InboxEntry("bob", "audio", "bob.wav", False)),
        ("inbox/bob.v2.png", InboxEntry("bob.v2", "image", "bob.v2.png", False)),
    ],
)
def test_folder_and_same_stem_keys_name_the_job_and_role(key: str, expected: InboxEntry) -> None:
    # Given an uploaded key in either naming style / When it is parsed / Then job, role and style are known
    assert parse_inbox_key(key) == expected


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("inbox/alice/FACE.PNG", "image"),
        ("inbox/alice/voice.MP3", "audio"),
        ("inbox/Carol.JpG", "image"),
        ("inbox/Carol.WAV", "audio"),
    ],
)
def test_extensions_are_compared_case_insensitively(key: str, kind: str) -> None:
    entry = parse_inbox_key(key)
    assert entry is not None
    assert entry.kind == kind


def test_uppercase_extension_keeps_the_job_and_file_name_as_written() -> None:
    assert parse_inbox_key("inbox/Carol.JPG") == InboxEntry("Carol", "image", "Carol.JPG", False)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("inbox/my job/face one.png", InboxEntry("my job", "image", "face one.png", True)),
        ("inbox/my avatar.mp3", InboxEntry("my avatar", "audio", "my avatar.mp3", False)),
        ("inbox/café/voix été.mp3", InboxEntry("café", "audio", "voix été.mp3", True)),
        ("inbox/日本語.png", InboxEntry("日本語", "image", "日本語.png", False)),
    ],
)
def test_keys_with_spaces_and_non_ascii_characters(key: str, expected: InboxEntry) -> None:
    assert parse_inbox_key(key) == expected


@pytest.mark.parametrize("key", ["inbox/alice/job.json", "inbox/team/alice/job.json"])
def test_job_json_in_a_folder_is_the_jobs_options(key: str) -> None:
    entry = parse_inbox_key(key)
    assert entry is not None
    assert entry.kind == "options"
    assert entry.in_folder


def test_job_json_at_the_top_of_the_inbox_is_not_options() -> None:
    # Documented: options only exist for folder jobs (inbox/<job>/job.json). At the top level, job.json is a
    # same-stem upload of a job called "job" with an extension that is neither image nor audio.
    assert parse_inbox_key("inbox/job.json") == InboxEntry("job", "unsupported", "job.json", False)


def test_options_key_is_where_parse_finds_options() -> None:
    key = options_key("team/alice")
    assert key == "inbox/team/alice/job.json"
    entry = parse_inbox_key(key)
    assert entry is not None
    assert (entry.job, entry.kind) == ("team/alice", "options")


def test_nested_folders_make_the_whole_folder_path_the_job() -> None:
    assert parse_inbox_key("inbox/team/alice/face.png") == InboxEntry("team/alice", "image", "face.png", True)
    assert parse_inbox_key("inbox/team/alice/voice.mp3") == InboxEntry("team/alice", "audio", "voice.mp3", True)


@pytest.mark.parametrize(
    "key",
    [
        "inbox/",  # the prefix itself
        "inbox/alice/",  # a folder marker from the console's "Create folder"
        "inbox/team/alice/",
        "outputs/alice/task.mp4",  # outside the inbox
        "alice.png",
        "Inbox/alice.png",  # the prefix is case-sensitive, like S3 keys
        "other/inbox/alice.png",
        "inbox/ .png",  # a blank job name
    ],
)
def test_keys_that_are_not_uploads_are_ignored(key: str) -> None:
    assert parse_inbox_key(key) is None


@pytest.mark.parametrize(
    ("key", "job"),
    [
        ("inbox/alice/notes.txt", "alice"),
        ("inbox/alice/clip.mp4", "alice"),
        ("inbox/alice/face.gif", "alice"),
        ("inbox/notes.txt", "notes"),
        ("inbox/alice/face.png.bak", "alice"),
    ],
)
def test_unknown_extensions_are_unsupported(key: str, job: str) -> None:
    entry = parse_inbox_key(key)
    assert entry is not None
    assert (entry.job, entry.kind) == (job, "unsupported")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("inbox/alice/README", InboxEntry("alice", "unsupported", "README", True)),
        ("inbox/README", InboxEntry("README", "unsupported", "README", False)),
        # a dot file has no extension: ".png" is its name, not an extension
        ("inbox/alice/.png", InboxEntry("alice", "unsupported", ".png", True)),
        ("inbox/.png", InboxEntry(".png", "unsupported", ".png", False)),
    ],
)
def test_files_without_an_extension_are_unsupported(key: str, expected: InboxEntry) -> None:
    assert parse_inbox_key(key) == expected


# --- content_id ------------------------------------------------------------------------------------------------


def obj(key: str, etag: str) -> S3Object:
    return S3Object(bucket="media", key=key, etag=etag, size=10)


IMAGE = obj("inbox/alice/face.png", "aaa")
AUDIO = obj("inbox/alice/voice.mp3", "bbb")


def test_content_id_is_the_same_for_the_same_inputs() -> None:
    again = content_id("alice", obj("inbox/alice/face.png", "aaa"), obj("inbox/alice/voice.mp3", "bbb"))
    assert content_id("alice", IMAGE, AUDIO) == again


def test_content_id_is_a_short_hex_string() -> None:
    task_id = content_id("alice", IMAGE, AUDIO)
    assert len(task_id) == 32
    int(task_id, 16)


@pytest.mark.parametrize(
    "changed",
    [
        ("alice", obj("inbox/alice/face.png", "aaa"), obj("inbox/alice/voice.mp3", "ccc")),  # audio ETag
        ("alice", obj("inbox/alice/face.png", "zzz"), obj("inbox/alice/voice.mp3", "bbb")),  # image ETag
        ("alice", obj("inbox/alice/face2.png", "aaa"), obj("inbox/alice/voice.mp3", "bbb")),  # image key
        ("alice", obj("inbox/alice/face.png", "aaa"), obj("inbox/alice/voice.wav", "bbb")),  # audio key
        ("bob", obj("inbox/alice/face.png", "aaa"), obj("inbox/alice/voice.mp3", "bbb")),  # job
        ("alice", obj("inbox/alice/face.png", "aaa")),  # one object only
    ],
)
def test_content_id_changes_when_a_key_etag_or_job_changes(changed: tuple) -> None:
    job, *objects = changed
    assert content_id(job, *objects) != content_id("alice", IMAGE, AUDIO)


def test_content_id_ignores_etag_quotes() -> None:
    quoted = content_id("alice", obj("inbox/alice/face.png", '"aaa"'), obj("inbox/alice/voice.mp3", '"bbb"'))
    assert quoted == content_id("alice", IMAGE, AUDIO)


def test_content_id_ignores_bucket_and_size() -> None:
    # Only keys and ETags identify the bytes; the same object reported with another size is the same object.
    other = S3Object(bucket="elsewhere", key=IMAGE.key, etag=IMAGE.etag, size=999)
    assert content_id("alice", other, AUDIO) == content_id("alice", IMAGE, AUDIO)


def test_content_id_does_not_confuse_field_boundaries() -> None:
    # Separators keep "key + etag" from running together: moving characters between them changes the id.
    first = content_id("alice", obj("inbox/a", "bc"))
    second = content_id("alice", obj("inbox/ab", "c"))
    assert first != second


def test_a_differently_capitalised_job_json_is_not_taken_for_the_options() -> None:
    # It would never be read (options are read as "job.json"), so it is reported as an unsupported file instead
    entry = parse_inbox_key("inbox/alice/JOB.JSON")
    assert entry is not None and entry.kind == "unsupported"
