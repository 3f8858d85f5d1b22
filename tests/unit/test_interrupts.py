"""A signal stops a command at once, but never inside a critical section."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(body: str) -> subprocess.CompletedProcess:
    script = "import os, signal, time\nfrom core import interrupts\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_signal_stops_at_once_and_runs_the_cleanups(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    done = _run(f"""
        interrupts.stop_on_signals("test run", "nothing was done")
        with interrupts.on_interrupt(lambda: open({str(marker)!r}, "w").close()):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            print("not reached")
    """)
    assert done.returncode == 128 + signal.SIGTERM
    assert "not reached" not in done.stdout
    assert done.stderr.strip() == (
        "steelsight test run: interrupted by SIGTERM, stopped; nothing was done"
    )
    assert marker.exists()


def test_a_signal_inside_a_critical_section_waits_for_its_end() -> None:
    done = _run("""
        interrupts.stop_on_signals("test run")
        with interrupts.critical() as achieved:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            print("section finished", flush=True)
            achieved.append("registered steelsight-marking version 3")
        print("not reached")
    """)
    assert done.returncode == 128 + signal.SIGINT
    assert done.stdout.splitlines() == ["section finished"]
    assert "stopping once the registration ends" in done.stderr
    assert "done before it: registered steelsight-marking version 3" in done.stderr


def test_children_are_terminated() -> None:
    done = _run("""
        import subprocess, sys
        interrupts.stop_on_signals("test run")
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    """)
    pid = int(done.stdout.split()[0])
    assert done.returncode == 128 + signal.SIGTERM
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_a_child_that_ignores_sigterm_is_killed_and_gone_before_the_exit() -> None:
    """A child deaf to SIGTERM (a server busy shutting down) is killed after the grace
    and reaped by the command itself: at its exit nothing of it is left, not even a
    zombie (`train` once left its Prefect server's process behind for an instant)."""
    done = _run("""
        import subprocess, sys
        interrupts.stop_on_signals("test run")
        deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        deaf += "print(1, flush=True); time.sleep(60)"
        child = subprocess.Popen([sys.executable, "-c", deaf], stdout=subprocess.PIPE)
        child.stdout.readline()  # its handler is in place
        print(child.pid, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    """)
    pid = int(done.stdout.split()[0])
    assert done.returncode == 128 + signal.SIGTERM
    assert not Path(f"/proc/{pid}").exists()
