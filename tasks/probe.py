"""Validate one archive in a process of its own and print what was found as JSON.

    python -m tasks.probe ARCHIVE

Ingest runs this per archive (``tasks.ingest.probe_isolated``) so that a decoder's
native crash, a hang or a memory blow-up caused by one archive ends this process, not
the run: the parent gives the archive its reason and goes on with the next one. The
address space is limited to ``STEELSIGHT_PROBE_MEMORY_MB`` (set by the parent).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import asdict
from pathlib import Path


def limit_memory(megabytes: int) -> None:
    if megabytes > 0:
        limit = megabytes << 20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main() -> None:
    memory_mb = int(os.environ.get("STEELSIGHT_PROBE_MEMORY_MB", "0"))
    limit_memory(memory_mb)
    from tasks.archives import Probed, Problem, content_hash, printable, probe

    path = Path(sys.argv[1])
    try:
        found = probe(path)
    except Exception as error:  # a fault the archive exposed: say what, keep the hash
        reason = f"validating it failed: {type(error).__name__}: {error}"
        kind = "validation_error"
        if isinstance(error, MemoryError):
            kind = "validation_memory"
            reason = (
                f"validating it needed more than {memory_mb} MB (ingest_memory_mb): a frame "
                "may be far larger than its manifest says"
            )
        problem = Problem(printable(path), kind, f"{printable(path.name)}: {reason}")
        found = Probed("unknown", [problem], 0, content_hash(path))
    json.dump(asdict(found), sys.stdout)


if __name__ == "__main__":
    main()
