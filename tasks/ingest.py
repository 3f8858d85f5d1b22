"""Taking archives in: validate each in a process of its own, then move and register it.

The landing folder under ``STEELSIGHT_HOME`` is the inbox: a good archive found there is
moved (renamed, never copied or changed) into the library folder, a bad one into the
quarantine folder with the reason in ``ingest_errors`` and in a ``.reason.json`` file
beside it. Recorders write under a dot-name and rename when complete; dot-names are
ignored. Archives named by path outside the landing folder are registered where they
are and never moved: one that fails validation is recorded as ``failed`` with its reason.

One archive can never stop the others or a later run:

- validation (``tasks.probe``) runs in a child process with a time and memory limit, so
  a decoder's crash or hang ends the child and the archive gets that as its reason;
- whatever goes wrong after it (a move, the import) is caught per archive and recorded;
- an archive that cannot be moved out of the landing folder (permissions) is recorded
  as ``failed`` with ``landed_signature`` and skipped by later runs until it, or the
  landing folder's permissions, change.

Nothing outside the landing folder is moved, read or hashed: a link in it is refused
and moved to quarantine as the link it is, never followed.

Data flows one way: path → ``Probed`` (validation, in the child) → move → an archives
row and its ingest_errors rows → one warehouse import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings, get_settings
from tasks.archives import (
    Probed,
    Problem,
    archive_row,
    content_hash,
    error_rows,
    origin,
    printable,
    read_manifest,
)
from tasks.labels import archive_id_for, import_label_source
from warehouse import queries
from warehouse.store import Warehouse, new_import_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ingested:
    """What happened to one archive."""

    source: str  # where it was found
    path: str  # where it is now
    archive_id: str
    kind: str
    status: str  # ok, partial, failed, quarantined, unchanged, skipped
    reason: str = ""
    n_frames: int = 0


@dataclass(frozen=True)
class Limits:
    """How long, and in how much memory, one archive's validation may run."""

    timeout_s: float
    memory_mb: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.ingest_timeout_s, settings.ingest_memory_mb)


class Unmovable(OSError):
    """The archive could not be moved out of the landing folder."""


# -- validation in a child process ---------------------------------------------------------
def probe_isolated(path: Path, limits: Limits) -> Probed:
    """``tasks.archives.probe`` in a child process: a crash, hang or blow-up there becomes
    the archive's reason instead of the end of the run."""
    command = [sys.executable, "-m", "tasks.probe", os.fsencode(path)]
    env = {**os.environ, "STEELSIGHT_PROBE_MEMORY_MB": str(limits.memory_mb)}
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=limits.timeout_s,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _unvalidated(
            path,
            "validation_timeout",
            f"validation did not end within {limits.timeout_s:g} s (ingest_timeout_s): a "
            "decoder hangs on it, or it is larger than the limit allows; raise the limit if "
            "it is sound and drop it into the landing folder again",
        )
    if done.returncode == 0:
        try:
            found = json.loads(done.stdout)
            return Probed(
                found["kind"],
                [Problem(**p) for p in found["problems"]],
                found["n_frames"],
                found["content"],
            )
        except (ValueError, KeyError, TypeError) as error:
            ended = f"validation gave no readable answer ({error})"
    elif done.returncode < 0:
        ended = f"validation crashed ({signal.Signals(-done.returncode).name})"
    else:
        ended = f"validation ended with exit code {done.returncode}"
    last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
    return _unvalidated(
        path,
        "validation_crashed",
        f"{ended}{': ' + last[0][:300] if last else ''}; a file in it breaks a decoder: "
        "check its frames, or copy it again from the recorder",
    )


def _unvalidated(path: Path, kind: str, reason: str) -> Probed:
    problem = Problem(printable(path), kind, f"{printable(path.name)}: {reason}")
    return Probed("unknown", [problem], 0, content_hash(path))


# -- registering ---------------------------------------------------------------------------
def _free_name(folder: Path, name: str) -> Path:
    name = "".join(c if c.isprintable() else "_" for c in printable(name)) or "archive"
    target, n = folder / name, 1
    while (
        target.exists()
        or target.is_symlink()
        or target.with_name(target.name + ".reason.json").exists()
    ):
        n += 1
        target = folder / f"{name}-{n}"
    return target


def _move(source: Path, folder: Path) -> Path:
    """Rename ``source`` (the entry itself, a link as a link) into ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        target = _free_name(folder, source.name)
        source.rename(target)
    except OSError as error:
        raise Unmovable(
            f"{printable(source)} cannot be moved into {folder} ({error.strerror}): steelsight "
            f"must be able to write to the landing folder and to {folder.name}/; until it or "
            "the landing folder's permissions change, the archive is skipped"
        ) from error
    return target


def landed_signature(path: Path) -> str:
    """Names, types, sizes and times of an entry of the landing folder and everything in
    it (links not followed), and the landing folder's owner and permissions."""
    parent = path.parent.stat()
    lines = [f"{parent.st_mode} {parent.st_uid} {parent.st_gid}"]
    entries = [path]
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            entries += [Path(root) / n for n in sorted(dirs) + sorted(files)]
    for entry in entries:
        st = entry.lstat()
        name = printable(entry.relative_to(path.parent))
        lines.append(f"{name} {st.st_mode} {st.st_size} {st.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def ingest_archive(
    source: Path,
    warehouse: Warehouse,
    library: Path,
    quarantine: Path,
    landed: bool,
    limits: Limits | None = None,
) -> Ingested:
    """Validate one archive and register it. ``landed``: it lies in the landing folder
    and is moved (into ``library`` when good, ``quarantine`` when not). Never raises for
    anything the archive does: the answer says what became of it and why."""
    source = absolute(source)
    try:
        stuck = queries.unmovable_record(warehouse, printable(source)) if landed else None
        if stuck and stuck["landed_signature"] == landed_signature(source):
            reason = (
                "could not be moved out of the landing folder by an earlier run and has not "
                "changed since (the reason is in ingest_errors): fix the cause, or touch it "
                "to retry"
            )
            log.warning("skipped %s: %s", printable(source), reason)
            return Ingested(
                printable(source),
                printable(source),
                stuck["archive_id"],
                stuck["kind"],
                "skipped",
                reason,
            )
        probed = probe_isolated(source, limits or Limits.from_settings(get_settings()))
        try:
            done = _take_in(source, probed, warehouse, library, quarantine, landed)
            if stuck:  # moved now: the record of the entry that stayed behind goes
                warehouse.forget(stuck["archive_id"])
            return done
        except Unmovable as error:
            problems = [*probed.fatal, Problem(printable(source), "cannot_move", str(error))]
            return _record(
                source,
                source,
                probed,
                problems,
                "failed",
                warehouse,
                landed_signature=landed_signature(source),
            )
    except Exception as error:  # the warehouse itself failed: nothing recorded, say so
        log.exception("could not ingest %s", printable(source))
        return Ingested(
            printable(source),
            printable(source),
            "",
            "unknown",
            "failed",
            f"could not be ingested and nothing was recorded: {type(error).__name__}: "
            f"{error}; it is tried again by the next run",
        )


def _take_in(
    source: Path,
    probed: Probed,
    warehouse: Warehouse,
    library: Path,
    quarantine: Path,
    landed: bool,
) -> Ingested:
    problems = list(probed.problems)
    existing = (
        queries.usable_archive_with_content(warehouse, probed.content) if not probed.fatal else None
    )
    if existing and existing["path"] == str(source):
        return Ingested(
            str(source),
            str(source),
            existing["archive_id"],
            probed.kind,
            "unchanged",
            "already ingested with the same content",
        )
    if existing:
        problems.append(
            Problem(
                str(source),
                "duplicate_content",
                f"{source.name} has the same content as archive {existing['archive_id']} "
                f"({existing['path']}), which is already ingested: nothing new to take in",
            )
        )
    if any(p.fatal for p in problems):
        return _reject(source, probed, problems, warehouse, quarantine if landed else None)
    target = _move(source, library) if landed else source
    try:
        return _register(source, target, probed, warehouse, landed)
    except Exception as error:  # after the move: the archive goes on to quarantine
        log.exception("could not register %s", target)
        problem = Problem(
            str(target),
            "ingest_error",
            f"{target.name} passed validation but could not be registered: "
            f"{type(error).__name__}: {error}; report it with this archive",
        )
        return _reject(
            target,
            probed,
            [*problems, problem],
            warehouse,
            quarantine if landed else None,
            received_from=source,
        )


def _register(
    source: Path, target: Path, probed: Probed, warehouse: Warehouse, landed: bool
) -> Ingested:
    archive_id = archive_id_for(target)
    received = {"received_from": str(source)} if landed else {}
    changed = _changed_note(warehouse, archive_id, probed.content)
    if probed.kind in ("severstal", "neu-det"):
        summary = import_label_source(
            target, warehouse, content_sha256=probed.content, extra=received
        )
        log.info("ingested %s as %s (%s, %s)", source, archive_id, probed.kind, summary.status)
        return Ingested(
            str(source),
            str(target),
            archive_id,
            probed.kind,
            summary.status,
            changed,
            summary.n_images,
        )
    warnings = probed.problems  # none fatal here
    status = "partial" if warnings else "ok"
    import_id = new_import_id()
    warehouse.import_archive(
        archive_row(
            archive_id,
            import_id,
            probed.kind,
            target,
            probed.content,
            status,
            probed.n_frames,
            0,
            len(warnings),
            **received,
            **origin(read_manifest(target)),
        ),
        {"ingest_errors": error_rows(warnings, archive_id, import_id)},
    )
    log.info(
        "ingested %s as %s: %s, %d frames, %d warnings",
        source,
        archive_id,
        probed.kind,
        probed.n_frames,
        len(warnings),
    )
    reasons = [p.reason for p in warnings] + ([changed] if changed else [])
    return Ingested(
        str(source),
        str(target),
        archive_id,
        probed.kind,
        status,
        "; ".join(reasons),
        probed.n_frames,
    )


def _changed_note(warehouse: Warehouse, archive_id: str, content: str) -> str:
    """What re-ingesting changed content withdraws: the earlier content's inspection."""
    before = queries.archive_state(warehouse, archive_id)
    if not before or before["content_sha256"] == content or before["inspected_with"] is None:
        return ""
    note = (
        f"its content changed since it was last ingested: the inspection of the earlier "
        f"content ({before['inspected_with']}) is withdrawn; run `steelsight inspect`"
    )
    log.warning("%s: %s", archive_id, note)
    return note


def _reject(
    source: Path,
    probed: Probed,
    problems: list[Problem],
    warehouse: Warehouse,
    quarantine: Path | None,
    received_from: Path | None = None,
) -> Ingested:
    """Record why an archive is not taken in; move it to quarantine when it was landed
    (first the move, then the note beside it, so a note never lies about an archive)."""
    target = source
    if quarantine is not None:
        target = _move(source, quarantine)
        fatal = [p.__dict__ for p in problems if p.fatal]
        note = target.with_name(target.name + ".reason.json")
        tmp = note.with_name(f".{note.name}.tmp")
        origin = printable(received_from or source)
        tmp.write_text(json.dumps({"source": origin, "problems": fatal}, indent=2) + "\n")
        tmp.replace(note)
    status = "quarantined" if quarantine is not None else "failed"
    received = received_from or (source if quarantine is not None else None)
    return _record(source, target, probed, problems, status, warehouse, received_from=received)


def _record(
    source: Path,
    target: Path,
    probed: Probed,
    problems: list[Problem],
    status: str,
    warehouse: Warehouse,
    received_from: Path | None = None,
    **extra,
) -> Ingested:
    archive_id, import_id = archive_id_for(Path(printable(target))), new_import_id()
    if received_from is not None:
        extra["received_from"] = printable(received_from)
    warehouse.import_archive(
        archive_row(
            archive_id,
            import_id,
            probed.kind,
            printable(target),
            probed.content,
            status,
            0,
            0,
            len(problems),
            **extra,
        ),
        {"ingest_errors": error_rows(problems, archive_id, import_id)},
    )
    reason = "; ".join(p.reason for p in problems if p.fatal)
    log.warning("%s %s: %s", status, printable(source), reason)
    return Ingested(printable(source), printable(target), archive_id, probed.kind, status, reason)


# -- what to ingest ------------------------------------------------------------------------
def absolute(path: Path | str) -> Path:
    """The path with its folders resolved but not its last part: a link stays the link."""
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / path.name


def landed_archives(landing: Path) -> list[Path]:
    """What waits in the landing folder, oldest first; dot-names are still being written.
    Entries are listed as they are: a link is not followed (ingest refuses it)."""
    if not landing.is_dir():
        return []
    entries = []
    for entry in os.scandir(landing):
        if entry.name.startswith("."):
            continue
        try:
            entries.append((entry.stat(follow_symlinks=False).st_mtime, entry.name, entry.path))
        except OSError:  # gone since it was listed
            continue
    return [absolute(path) for _, _, path in sorted(entries)]


def unregistered(library: Path, warehouse: Warehouse) -> list[Path]:
    """Library folders without an archives row: moved there by an ingest that stopped
    before its commit. They are ingested in place."""
    if not library.is_dir():
        return []
    known = queries.archive_paths(warehouse)
    return sorted(
        absolute(p)
        for p in library.iterdir()
        if not p.name.startswith(".") and str(absolute(p)) not in known
    )


def is_within(path: Path, folder: Path) -> bool:
    try:
        absolute(path).relative_to(folder.resolve())
    except ValueError:
        return False
    return True
