"""Energy *estimates* (optional extra ``estimate``: CodeCarbon), always labelled as such.

An estimate is stored as ``energy_estimate`` with source ``estimate:codecarbon_offline`` and is
never mixed with measured values (``carbon`` uses measured energy only). Off by default
(``TrainConfig.estimate_energy``): CodeCarbon runs a sampling thread during the window.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from bpfree.meters.base import Reading, add


def codecarbon_available() -> str | None:
    try:
        importlib.import_module("codecarbon")
    except ImportError:
        return "unavailable:codecarbon_not_installed"
    return None


class CodeCarbonMeter:
    """CodeCarbon's ``OfflineEmissionsTracker`` over the window, reported in joules."""

    def __init__(
        self,
        name: str = "energy_estimate",
        *,
        country: str = "USA",
        measure_power_secs: float = 1.0,
    ) -> None:
        self.name = name
        self.country = country
        self.measure_power_secs = measure_power_secs
        self._reason = codecarbon_available()
        self._tracker: Any = None

    def available(self) -> str | None:
        return self._reason

    def start(self) -> None:
        if self._reason is not None:
            return
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=self.country,
            measure_power_secs=self.measure_power_secs,
            save_to_file=False,
            log_level="error",
        )
        self._tracker.start()

    def stop(self) -> Reading:
        if self._reason is not None or self._tracker is None:
            return Reading.unavailable("J", self._reason or "not_started")
        self._tracker.stop()
        data = getattr(self._tracker, "final_emissions_data", None)
        kwh = getattr(data, "energy_consumed", None)
        self._tracker = None
        if kwh is None:
            return Reading.unavailable("J", "codecarbon_no_data")
        return Reading(
            float(kwh) * 3.6e6,
            "J",
            "estimate:codecarbon_offline",
            "CodeCarbon OfflineEmissionsTracker (RAPL where readable, else a TDP model; "
            "GPU via NVML); an estimate, not comparable with measured energy",
        )

    combine = staticmethod(add)
