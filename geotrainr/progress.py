"""Progress bars for long jobs: tqdm on standard error, shown only where a person is watching (a terminal)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from collections.abc import Iterator

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar fed with running totals (what the library's ``progress`` callbacks report)."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def done(self, count: int) -> None:
        """``count`` items are done so far."""
        self.bar.update(max(0, count - self.bar.n))

    def done_of(self, count: int, total: int) -> None:
        """``count`` of ``total`` items are done so far."""
        if self.bar.total != total:
            self.bar.total = total
        self.done(count)


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Progress]:
    """A bar on standard error that stays silent when it is not a terminal (logs, pipes, tests)."""
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False, mininterval=0.5,
              dynamic_ncols=True) as bar:
        yield Progress(bar)
