"""How inbox keys become jobs, and which uploads make one pair.

Two ways to name a pair (both under `inbox/`):
- folder:    inbox/<job>/<any name>.png + inbox/<job>/<any name>.mp3 (+ optional inbox/<job>/job.json)
- same stem: inbox/<job>.jpg + inbox/<job>.wav
A folder job may also hold a mask for the models that take one (inbox/<job>/<any name>.mask.png, named in job.json's
`options`): it is not one of the pair.
Extensions are compared case-insensitively; the content itself is checked later by validation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from avatar_pipeline.domain.models import MediaRole, PairSlot, S3Object

INBOX_PREFIX = "inbox/"
OPTIONS_FILE_NAME = "job.json"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
AUDIO_EXTENSIONS = frozenset({".mp3", ".wav", ".m4a", ".aac"})

EntryKind = Literal["image", "audio", "options", "mask", "unsupported"]
MASK_SUFFIXES = (".mask.png", ".mask.jpg", ".mask.jpeg")

# A task id: the first 32 hex digits of a SHA-256 (content_id).
TASK_ID_LENGTH = 32


@dataclass(frozen=True)
class InboxEntry:
    job: str
    kind: EntryKind
    file_name: str
    in_folder: bool


def _extension(file_name: str) -> str:
    stem, dot, ext = file_name.rpartition(".")
    return f".{ext.lower()}" if dot and stem else ""


def parse_inbox_key(key: str) -> InboxEntry | None:
    """The job and role of an uploaded key; None for keys that are not uploads (folder markers, other prefixes)."""
    if not key.startswith(INBOX_PREFIX) or key.endswith("/"):
        return None
    relative = key[len(INBOX_PREFIX) :]
    folder, _, file_name = relative.rpartition("/")
    extension = _extension(file_name)
    if folder:
        job, in_folder = folder, True
    else:
        job, in_folder = (file_name[: -len(extension)] if extension else file_name), False
    if not job.strip():
        return None
    kind: EntryKind
    # Exactly "job.json": it is read by that name, so a "Job.json" would be silently ignored; as an unsupported
    # file it is rejected with a notification saying so instead.
    if in_folder and file_name == OPTIONS_FILE_NAME:
        kind = "options"
    elif in_folder and file_name.lower().endswith(MASK_SUFFIXES):
        kind = "mask"
    elif extension in IMAGE_EXTENSIONS:
        kind = "image"
    elif extension in AUDIO_EXTENSIONS:
        kind = "audio"
    else:
        kind = "unsupported"
    return InboxEntry(job=job, kind=kind, file_name=file_name, in_folder=in_folder)


def options_key(job: str) -> str:
    return f"{INBOX_PREFIX}{job}/{OPTIONS_FILE_NAME}"


def is_task_id(value: str) -> bool:
    """Whether `value` has the form of a task id (see content_id), so anything else is refused before any read."""
    return len(value) == TASK_ID_LENGTH and all(char in "0123456789abcdef" for char in value)


def content_id(job: str, *objects: S3Object, occasion: str = "") -> str:
    """A task id that is the same for the same job and the same bytes (same keys and ETags), and only then.

    A repeated S3 event or a byte-identical re-upload therefore maps onto the task that already exists.
    `occasion` tells apart tasks about the same bytes that are different events (an upload that timed out twice).
    """
    digest = hashlib.sha256(job.encode() + b"\0" + occasion.encode())
    for obj in objects:
        digest.update(b"\0" + obj.key.encode() + b"\0" + obj.etag.strip('"').encode())
    return digest.hexdigest()[:TASK_ID_LENGTH]


ROLES: tuple[MediaRole, MediaRole] = ("image", "audio")


def with_upload(
    slot: PairSlot | None, job: str, role: MediaRole, upload: S3Object, now: datetime, deadline: datetime
) -> PairSlot | None:
    """The job's slot once `upload` is in it; None when the event is a repeat or older than what the slot knows.

    A later upload of a role replaces an earlier one that has not been used yet.
    """
    current = slot or PairSlot(job=job, created_at=now)
    known = [current.image, current.used_image] if role == "image" else [current.audio, current.used_audio]
    if any(upload.same_upload(other) or upload.older_than(other) for other in known):
        return None
    return current.model_copy(
        update={
            role: upload,
            "version": current.version + 1,
            "waiting_since": current.waiting_since or now,
            "next_check_at": current.next_check_at or deadline,
        }
    )


def consume(slot: PairSlot, used: list[S3Object], now: datetime, deadline: datetime) -> PairSlot | None:
    """The slot once `used` went into a task: those halves move to `used_*` (so repeats of their events are
    recognised), halves that arrived since stay and wait. None when none of `used` is in the slot any more."""
    changes: dict[str, object] = {}
    for role in ROLES:
        held = slot.image if role == "image" else slot.audio
        match = next((obj for obj in used if obj.same_upload(held)), None)
        if match is not None:
            changes |= {role: None, f"used_{role}": match}
    if not changes:
        return None
    after = slot.model_copy(update=changes)
    waiting = after.image is not None or after.audio is not None
    return after.model_copy(
        update={
            "version": slot.version + 1,
            "waiting_since": now if waiting else None,
            "next_check_at": deadline if waiting else None,
        }
    )


def remember_used(slot: PairSlot, role: MediaRole, upload: S3Object) -> PairSlot:
    """The slot with `upload` as the `role` half a task used, so a repeat of its event changes nothing."""
    return slot.model_copy(update={"used_image": upload} if role == "image" else {"used_audio": upload})


def rival(slot: PairSlot | None, role: MediaRole, upload: S3Object) -> S3Object | None:
    """An unused upload of the same role under another key: with `upload`, the job would hold two images (or two
    audio clips), and which one the user meant is not ours to guess."""
    held = (slot.image if role == "image" else slot.audio) if slot is not None else None
    return held if held is not None and held.key != upload.key else None
