"""Carbon = measured kWh x grid intensity, with the intensity's source recorded.

The intensity comes from, in order: the user (``--grid-intensity`` gCO2e/kWh), a country code
looked up in ``COUNTRY_INTENSITY``, else the world average (475 gCO2e/kWh), labelled as such.
Only measured energy enters ``carbon``; with no measured energy the reading is
``unavailable:no_energy_measured``. An energy *estimate* may give a ``carbon_estimate``, labelled
``estimate:<method>``, never mixed into ``carbon``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bpfree.errors import ConfigError, shorten
from bpfree.meters.base import Reading

WORLD_AVERAGE = 475.0  # gCO2e/kWh: global average of electricity (IEA), CodeCarbon's default

# Carbon intensity of electricity generation, gCO2e/kWh, year 2021, rounded: Our World in Data
# (ourworldindata.org/grapher/carbon-intensity-electricity, from Ember and the Energy Institute),
# as compiled in CodeCarbon's global_energy_mix.json. Keyed by ISO 3166-1 alpha-3 code.
COUNTRY_INTENSITY: dict[str, float] = {
    "AUS": 531,
    "AUT": 148,
    "BEL": 157,
    "BRA": 159,
    "CHN": 544,
    "CZE": 406,
    "DEU": 365,
    "DNK": 221,
    "ESP": 194,
    "FRA": 67,
    "GBR": 268,
    "GRC": 353,
    "HUN": 233,
    "IDN": 623,
    "IND": 637,
    "IRL": 364,
    "ISL": 29,
}
COUNTRY_SOURCE = "Our World in Data 2021"
ALPHA2 = {
    "AU": "AUS",
    "AT": "AUT",
    "BE": "BEL",
    "BR": "BRA",
    "CN": "CHN",
    "CZ": "CZE",
    "DE": "DEU",
    "DK": "DNK",
    "ES": "ESP",
    "FR": "FRA",
    "GB": "GBR",
    "UK": "GBR",
    "GR": "GRC",
    "HU": "HUN",
    "ID": "IDN",
    "IN": "IND",
    "IE": "IRL",
    "IS": "ISL",
}


@dataclass(frozen=True)
class GridIntensity:
    value: float  # gCO2e/kWh
    source: str  # "user:grid_intensity", "table:FRA (Our World in Data 2021)", "world_average"
    country: str | None = None  # ISO alpha-3, when the value came from the table


def known_countries() -> list[str]:
    return sorted(COUNTRY_INTENSITY)


def resolve_intensity(
    grid_intensity: float | None = None, country: str | None = None
) -> GridIntensity:
    """The grid intensity to use and where it came from."""
    if grid_intensity is not None:
        if not 0 <= grid_intensity < math.inf:
            raise ConfigError(
                f"grid_intensity must be a finite number >= 0 gCO2e/kWh, got {grid_intensity}"
            )
        return GridIntensity(float(grid_intensity), "user:grid_intensity")
    if country:
        code = country.strip().upper()
        code = ALPHA2.get(code, code)
        if code not in COUNTRY_INTENSITY:
            raise ConfigError(
                f"no grid intensity known for country {shorten(country)}; known: "
                f"{', '.join(known_countries())} (ISO alpha-3, or alpha-2); "
                "or pass the value with --grid-intensity gCO2e/kWh"
            )
        return GridIntensity(COUNTRY_INTENSITY[code], f"table:{code} ({COUNTRY_SOURCE})", code)
    return GridIntensity(WORLD_AVERAGE, "world_average")


def carbon_from(energy: list[Reading], intensity: GridIntensity) -> Reading:
    """gCO2e of the *measured* energies in ``energy``; estimates and unavailable ones skipped."""
    measured = [r for r in energy if r.measured]
    if not measured:
        return Reading.unavailable("g", "no_energy_measured", f"grid intensity {intensity.source}")
    assert all(r.unit == "J" for r in measured)
    joules = sum(r.value for r in measured if r.value is not None)
    kwh = joules / 3.6e6
    return Reading(
        kwh * intensity.value,
        "g",
        f"measured_energy*{intensity.source}",
        f"{kwh:.3g} kWh ({', '.join(r.source for r in measured)}) x {intensity.value:g} gCO2e/kWh",
    )


def carbon_estimate_from(energy: Reading, intensity: GridIntensity) -> Reading:
    """gCO2e of an energy estimate; stays labelled as an estimate."""
    if energy.value is None:
        return Reading.unavailable("g", energy.source)
    kwh = energy.value / 3.6e6
    return Reading(
        kwh * intensity.value,
        "g",
        energy.source,
        f"{kwh:.3g} kWh (estimated) x {intensity.value:g} gCO2e/kWh ({intensity.source})",
    )
