"""Fair comparisons: each rule on its native network beside backprop on the same network."""

from bpfree.comparison.plan import Entry, PlannedRun, build_plan, native_model, parse_entries
from bpfree.comparison.runner import Comparison, compare

__all__ = [
    "Comparison",
    "Entry",
    "PlannedRun",
    "build_plan",
    "compare",
    "native_model",
    "parse_entries",
]
