"""Progress, one rule for every verb: a tqdm bar on a terminal, and in a log (output redirected
to a file, a CI job) a plain line every ``interval`` seconds and one at the end."""

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

log = logging.getLogger("nextpose")
T = TypeVar("T")


class Progress:
    """Counts work done. ``enabled`` None: a bar on a terminal, nothing otherwise (the
    pipeline's default); True: a bar on a terminal, log lines otherwise; False: nothing."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        enabled: bool | None = True,
        interval: float = 30.0,
    ):
        terminal = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not (enabled is not False
                        and terminal), file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        self.lines = enabled is True and not terminal
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.count = 0
        self.start = self.last = time.monotonic()
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.count += n
        now = time.monotonic()
        if self.lines and now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)
        self.postfix = values

    def _line(self, now: float) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        rate = self.count / max(now - self.start, 1e-9)
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        log.info(f"{self.desc}: {self.count}{of} ({rate:.2f} {self.unit}/s{extra})")

    def close(self) -> None:
        self.bar.close()
        if self.lines and self.count:
            self._line(time.monotonic())

    def iterate(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, counted one by one; closed at the end."""
        try:
            for item in items:
                yield item
                self.update(1)
        finally:
            self.close()
