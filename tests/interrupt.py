"""Run a clipdebias command in a child process and ``kill -9`` it at a random moment.

The child is forked from the test process, so it starts in milliseconds (torch, open_clip and faiss
are already imported) and is a real process: SIGKILL ends it without any Python clean-up, exactly
like ``kill -9`` on a shell command. The random moments come from one seeded generator per test;
the seed is ``$CLIPDEBIAS_KILL_SEED`` when set, else drawn at random, and every test prints it (pytest
shows it when the test fails) so that a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SEED_ENV = "CLIPDEBIAS_KILL_SEED"
POLL_S = 0.002


def _child(args: list[str]) -> None:
    """In the forked child: run the command with its output discarded, exit with its code."""
    code = 70
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        from clipdebias.cli import main

        code = main(args)
    except BaseException:  # noqa: BLE001 - the parent only sees the exit code
        code = 71
    finally:
        os._exit(code)


def start(args: list[str]) -> int:
    """Fork a child that runs ``clipdebias ARGS``; returns its pid."""
    pid = os.fork()
    if pid == 0:
        _child(args)
    return pid


def _exit_code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run_to_end(args: list[str], timeout: float = 120.0) -> tuple[int, float]:
    """Run ``clipdebias ARGS`` in a child to its end: ``(exit code, seconds)``."""
    began = time.monotonic()
    pid = start(args)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return _exit_code(status), time.monotonic() - began
        if time.monotonic() - began > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"clipdebias {' '.join(args)} did not finish within {timeout} s")
        time.sleep(POLL_S)


@dataclass
class Killer:
    """Kills commands at random moments drawn from one seeded generator and logs what it did."""

    seed: int
    rng: random.Random = field(init=False)
    log: list[str] = field(default_factory=list)
    last_run_s: float = 0.0  # how long the last child ran, until it ended or was killed

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def from_environment(cls) -> Killer:
        seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**31))
        print(f"kill seed: {seed} (replay with {SEED_ENV}={seed})")
        return cls(seed)

    def run_and_kill(
        self,
        args: list[str],
        latest_s: float,
        watch: Callable[[], None] | None = None,
        after: Callable[[], bool] | None = None,
        timeout: float = 120.0,
    ) -> bool:
        """Run ``clipdebias ARGS`` in a child and SIGKILL it after a random delay in ``[0, latest_s)``,
        counted from the start, or from the moment ``after()`` is first true (an observable point,
        e.g. "the first output file was written"). ``watch()`` is called over and over meanwhile (it
        asserts what must hold at every moment). Returns whether the child was killed (``False``: it
        finished first, with exit code 0; :attr:`last_run_s` then says how long a whole run takes
        now, a better ``latest_s`` for the next try)."""
        delay = self.rng.uniform(0.0, latest_s)
        began = time.monotonic()
        pid = start(args)
        status, since = None, None if after is not None else began
        while since is None or time.monotonic() - since < delay:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            status = None
            if since is None and after is not None and after():
                since = time.monotonic()
            if watch is not None:
                watch()
            if time.monotonic() - began > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError(f"clipdebias {' '.join(args)} neither ended nor reached its kill in {timeout} s")
            time.sleep(POLL_S)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        code = _exit_code(status)
        killed = code == -signal.SIGKILL
        self.last_run_s = time.monotonic() - began
        point = "after the observable point" if after is not None else "after the start"
        self.log.append(f"{delay:.3f} s {point}: {'killed' if killed else f'finished first (exit {code})'}")
        assert killed or code == 0, f"the command failed with exit code {code} ({self})"
        if watch is not None:
            watch()
        return killed

    def note(self, text: str) -> None:
        """Add what a kill left behind to the log."""
        self.log[-1] += f" ({text})"

    def __str__(self) -> str:
        return f"{SEED_ENV}={self.seed}; " + "; ".join(self.log)
