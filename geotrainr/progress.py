"""Progress bars for long jobs: tqdm on standard error, shown only where a person is watching (a terminal)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

#: the one shape of the library's ``progress`` arguments: called with (items done so far, items in all)
ProgressCallback = Callable[[int, int], None]


class Progress:
    """A tqdm bar fed with running totals: pass it as any ``progress`` argument of the library."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` items are done so far."""
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(max(0, done - self.bar.n))


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Progress]:
    """A bar on standard error that stays silent when it is not a terminal (logs, pipes, tests)."""
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False, mininterval=0.5,
              dynamic_ncols=True) as bar:
        yield Progress(bar)
