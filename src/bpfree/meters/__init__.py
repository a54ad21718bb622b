"""Meters: time, memory, FLOPs and energy, each reading labelled with its source."""

from bpfree.meters.base import Meter, Reading, format_reading
from bpfree.meters.timing import CpuTimer, WallTimer, synchronize

__all__ = ["CpuTimer", "Meter", "Reading", "WallTimer", "format_reading", "synchronize"]
