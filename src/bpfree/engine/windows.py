"""The run's measurement windows, owned by the engine and looked up by name.

A window is a named list of meters (``"train"``: one per epoch, around the training steps;
``"selection"``: around each validation pass, the cost of early stopping; ``"test"``: around the
one test evaluation). Entering a window starts its meters in order; leaving it
stops them in reverse order (so the timers, listed last, start last and stop first: the other
meters' own start/stop costs fall outside the timed region) and folds each reading into the
run's cost with the meter's ``combine`` (a sum for time and energy, a max for peaks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from bpfree.meters import Meter, Reading

TRAIN, SELECTION, TEST = "train", "selection", "test"


@dataclass
class Window:
    """The readings of one pass through a window, in the order of its meters."""

    readings: list[Reading] = field(default_factory=list)

    @property
    def wall_s(self) -> float | None:
        return self.readings[-1].value if self.readings else None  # the wall timer is last


class Windows:
    def __init__(self, meters: dict[str, list[Meter]]) -> None:
        self._meters = meters

    def meters(self, name: str) -> list[Meter]:
        return self._meters[name]

    @contextlib.contextmanager
    def measure(self, name: str, cost: dict[str, Reading]) -> Iterator[Window]:
        """Measure the block as window ``name``; add its readings to ``cost``."""
        meters, window = self._meters[name], Window()
        for m in meters:
            m.start()
        try:
            yield window
        except BaseException:  # interrupted: stop the meters (threads), record nothing
            for m in reversed(meters):
                with contextlib.suppress(Exception):
                    m.stop()
            raise
        window.readings = [m.stop() for m in reversed(meters)][::-1]
        for m, r in zip(meters, window.readings, strict=True):
            cost[m.name] = m.combine(cost.get(m.name), r)
