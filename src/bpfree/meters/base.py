"""The meter protocol: every cost figure carries its unit and where it came from.

``available()`` returns None when the meter works here, else the reason it cannot
(``unavailable:<why>``). ``start()`` / ``stop()`` bracket one measurement window and ``stop``
returns a :class:`Reading`. A training region is several windows (one per epoch); the trainer
folds their readings together with the meter's ``combine`` (a sum for time and energy, a max for
peaks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Reading:
    value: float | None
    unit: str
    source: str  # e.g. "time.perf_counter", "nvml:total_energy", "unavailable:no_gpu"
    note: str = ""
    # seconds a windowed counter measured over (energy): summed with the values, so the minimum
    # a coarse counter needs applies to the run's total, not to each epoch's window
    window_s: float | None = None

    @classmethod
    def unavailable(cls, unit: str, reason: str, note: str = "") -> Reading:
        source = reason if reason.startswith("unavailable:") else f"unavailable:{reason}"
        return cls(None, unit, source, note)

    @property
    def measured(self) -> bool:
        return self.value is not None and not self.source.startswith(("unavailable", "estimate"))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.window_s is None:
            del data["window_s"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reading:
        return cls(
            data["value"], data["unit"], data["source"], data.get("note", ""), data.get("window_s")
        )


def add(a: Reading | None, b: Reading) -> Reading:
    """Sum two readings of one meter; an unavailable side makes the sum unavailable."""
    if a is None:
        return b
    if a.value is None:
        return a
    if b.value is None:
        return b
    window = None if a.window_s is None or b.window_s is None else a.window_s + b.window_s
    return Reading(a.value + b.value, a.unit, a.source, a.note or b.note, window)


def peak(a: Reading | None, b: Reading) -> Reading:
    """The larger of two peak readings."""
    if a is None or a.value is None:
        return b if a is None else a
    if b.value is None:
        return b
    return a if a.value >= b.value else b


class Meter(Protocol):
    name: str

    def available(self) -> str | None: ...

    def start(self) -> None: ...

    def stop(self) -> Reading: ...

    def combine(self, a: Reading | None, b: Reading) -> Reading: ...


def format_reading(data: dict[str, Any] | Reading | None, digits: int = 3) -> str:
    """Human form for tables: 'n/a' for unavailable values, never 0."""
    if data is None:
        return "n/a"
    r = data if isinstance(data, Reading) else Reading.from_dict(data)
    if r.value is None:
        return "n/a"
    label = " (estimate)" if r.source.startswith("estimate") else ""
    if r.unit == "B":  # sizes in binary units
        for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(r.value) >= factor:
                return f"{r.value / factor:.{digits}g} {unit}{label}"
    return f"{r.value:.{digits}g} {r.unit}{label}"
