"""How a flow running in this process reports progress to whoever shows it (the command
line's bars): one hook per flow, a no-op until a callback is set for a block."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ProgressHook:
    """Call it as the callback; ``to(callback)`` sets the callback while a block runs."""

    def __init__(self) -> None:
        self._callback: Callable[..., None] | None = None

    def __call__(self, *args) -> None:
        if self._callback is not None:
            self._callback(*args)

    @contextmanager
    def to(self, callback: Callable[..., None]) -> Iterator[None]:
        self._callback = callback
        try:
            yield
        finally:
            self._callback = None
