"""Carbon arithmetic and the labels that say where the intensity came from."""

from __future__ import annotations

import pytest

from bpfree.config import TrainConfig
from bpfree.errors import ConfigError
from bpfree.meters.base import Reading
from bpfree.meters.carbon import (
    WORLD_AVERAGE,
    carbon_estimate_from,
    carbon_from,
    resolve_intensity,
)


def test_intensity_sources() -> None:
    assert resolve_intensity(100.0, "FRA").source == "user:grid_intensity"
    assert resolve_intensity(100.0).value == 100.0
    fr = resolve_intensity(None, "fr")  # alpha-2, any case
    assert fr.value == 67 and fr.source.startswith("table:FRA") and fr.country == "FRA"
    world = resolve_intensity()
    assert (
        (world.value, world.source) == (WORLD_AVERAGE, "world_average") == (475.0, "world_average")
    )


def test_unknown_country_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known: .*DEU.*FRA"):
        resolve_intensity(None, "XYZ")
    with pytest.raises(ConfigError, match=r"no grid intensity"):
        TrainConfig.build({"rule": "bp", "model": "mlp_1x10", "dataset": "digits", "country": "ZZ"})
    with pytest.raises(ConfigError, match=">= 0"):
        resolve_intensity(-1.0)


def test_carbon_arithmetic() -> None:
    cpu = Reading(3.6e6, "J", "rapl:energy_uj")  # 1 kWh
    gpu = Reading(7.2e6, "J", "nvml:total_energy_consumption")  # 2 kWh
    r = carbon_from([cpu, gpu], resolve_intensity(100.0))
    assert r.value == pytest.approx(300.0) and r.unit == "g"
    assert r.source == "measured_energy*user:grid_intensity"
    assert "rapl:energy_uj" in r.note and "nvml" in r.note
    one = carbon_from([cpu, Reading.unavailable("J", "no_gpu")], resolve_intensity())
    assert one.value == pytest.approx(475.0) and one.source.endswith("world_average")


def test_carbon_never_from_estimates_or_nothing() -> None:
    estimate = Reading(3.6e6, "J", "estimate:codecarbon_offline")
    r = carbon_from([Reading.unavailable("J", "no_powercap"), estimate], resolve_intensity())
    assert (r.value, r.source) == (None, "unavailable:no_energy_measured")
    e = carbon_estimate_from(estimate, resolve_intensity(None, "DEU"))
    assert e.value == pytest.approx(365.0) and e.source == "estimate:codecarbon_offline"
    assert "table:DEU" in e.note


def test_config_and_cli_carry_the_intensity() -> None:
    from bpfree.cli import build_parser

    args = build_parser().parse_args(
        [
            "train",
            "--rule",
            "bp",
            "--model",
            "mlp_1x10",
            "--dataset",
            "digits",
            "--grid-intensity",
            "120",
            "--country",
            "DE",
        ]
    )
    assert (args.grid_intensity, args.country) == (120.0, "DE")
    cfg = TrainConfig.build(
        {
            "rule": "bp",
            "model": "mlp_1x10",
            "dataset": "digits",
            "grid_intensity": 120,
            "country": "DE",
        }
    )
    assert cfg.grid_intensity == 120.0 and cfg.to_dict()["country"] == "DE"
