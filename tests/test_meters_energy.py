"""Energy meters on fake counters: RAPL sysfs trees and a fake NVML module."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest
import torch

from bpfree.meters import Reading, energy
from bpfree.meters.energy import NvmlEnergy, RaplMeter


def rapl_tree(root: Path, packages: dict[str, tuple[int, int]], subzones: bool = True) -> Path:
    """A fake /sys/class/powercap: {zone: (energy_uj, max_energy_range_uj)}."""
    for zone, (value, max_range) in packages.items():
        d = root / zone
        d.mkdir(parents=True)
        (d / "energy_uj").write_text(f"{value}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
        (d / "name").write_text(f"package-{zone.split(':')[1]}\n")
        if subzones:  # a sub-zone (core) must not be double counted
            s = root / f"{zone}:0"
            s.mkdir()
            (s / "energy_uj").write_text("999999\n")
            (s / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def set_energy(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_rapl_normal(tmp_path: Path) -> None:
    root = rapl_tree(
        tmp_path, {"intel-rapl:0": (1_000_000, 10**12), "intel-rapl:1": (5_000_000, 10**12)}
    )
    m = RaplMeter(root=root, min_window_s=0.0)
    assert m.available() is None
    m.start()
    set_energy(root, "intel-rapl:0", 3_500_000)  # +2.5 J
    set_energy(root, "intel-rapl:1", 6_000_000)  # +1.0 J
    r = m.stop()
    assert r.value == pytest.approx(3.5)
    assert (r.unit, r.source) == ("J", "rapl:energy_uj")
    assert "package-0" in r.note and "package-1" in r.note and r.measured


def test_rapl_wraparound(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path, {"intel-rapl:0": (9_000_000, 10_000_000)})
    m = RaplMeter(root=root, min_window_s=0.0)
    m.start()
    set_energy(root, "intel-rapl:0", 500_000)  # wrapped: 1.0 J to the top, then 0.5 J
    assert m.stop().value == pytest.approx(1.5)


def test_rapl_poll_sees_two_wraps(tmp_path: Path) -> None:
    """A window longer than one wrap period is still right: the poll thread reads in between."""
    root = rapl_tree(tmp_path, {"intel-rapl:0": (0, 10_000_000)})
    m = RaplMeter(root=root, min_window_s=0.0, poll_s=3600)
    m.start()
    set_energy(root, "intel-rapl:0", 8_000_000)
    m._accumulate()  # what the poll thread does every poll_s
    set_energy(root, "intel-rapl:0", 6_000_000)  # wrapped once since the poll
    m._accumulate()
    set_energy(root, "intel-rapl:0", 4_000_000)  # and again
    assert m.stop().value == pytest.approx(8 + 8 + 8)


def test_rapl_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = rapl_tree(tmp_path, {"intel-rapl:0": (1, 10**12)})

    def denied(path: Path) -> int:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(energy, "_read_int", denied)
    m = RaplMeter(root=root)
    assert m.available() == "unavailable:permission_denied"
    m.start()
    r = m.stop()
    assert r.value is None and r.source == "unavailable:permission_denied"


@pytest.mark.parametrize("make", ["missing", "empty", "only_mmio"])
def test_rapl_absent(tmp_path: Path, make: str) -> None:
    root = tmp_path / "powercap"
    if make != "missing":
        root.mkdir()
    if make == "only_mmio":
        (root / "intel-rapl-mmio:0").mkdir()
    m = RaplMeter(root=root)
    assert m.available() == "unavailable:no_powercap"
    m.start()
    r = m.stop()
    assert (r.value, r.source) == (None, "unavailable:no_powercap")


def test_rapl_window_too_short(tmp_path: Path) -> None:
    root = rapl_tree(tmp_path, {"intel-rapl:0": (0, 10**12)})
    m = RaplMeter(root=root, min_window_s=60.0)
    m.start()
    r = m.stop()
    assert r.value is None and r.source == "unavailable:window_too_short"


# ---- NVML ------------------------------------------------------------------------------------


def test_nvml_no_gpu() -> None:
    session = NvmlEnergy(None)
    for m in session.meters():
        assert m.available() == "unavailable:no_gpu"
        m.start()
        assert m.stop().source == "unavailable:no_gpu"


def test_nvml_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    session = NvmlEnergy(0)
    assert session.reason == "unavailable:nvml_not_installed"
    r = session.meters()[0].stop()
    assert (r.value, r.source) == (None, "unavailable:nvml_not_installed")


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_pynvml(energy_mj: list[int], power_mw: float = 50_000.0, supported: bool = True):
    """A stand-in for nvidia-ml-py: the counter reads successive values of ``energy_mj``."""
    mod = types.ModuleType("pynvml")
    mod.NVML_ERROR_NOT_SUPPORTED = 3
    mod.NVML_ERROR_NO_PERMISSION = 4
    mod.NVMLError = FakeNVMLError
    reads = iter(energy_mj)
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    mod.nvmlDeviceGetHandleByUUID = lambda u: ("handle", u)
    mod.nvmlDeviceGetName = lambda h: b"Fake GPU"

    def total_energy(handle):
        if not supported:
            raise FakeNVMLError(3)
        return next(reads)

    mod.nvmlDeviceGetTotalEnergyConsumption = total_energy
    mod.nvmlDeviceGetPowerUsage = lambda h: power_mw
    return mod


def test_nvml_counter_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reads: availability probe, then start/stop of the raw meter, then of the above-idle meter.
    mod = fake_pynvml([0, 1_000, 301_000, 1_000, 301_000])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    session = NvmlEnergy(0, idle_seconds=0.0, idle_samples=3, min_window_s=0.0)
    assert session.reason is None and session.idle_w == pytest.approx(50.0)
    raw, above, idle = session.meters()
    assert [m.name for m in (raw, above, idle)] == [
        "gpu_energy",
        "gpu_energy_above_idle",
        "gpu_idle_power",
    ]
    raw.start()
    r = raw.stop()
    assert r.value == pytest.approx(300.0) and r.source == "nvml:total_energy_consumption"
    assert "Fake GPU" in r.note and r.measured
    above.start()
    a = above.stop()
    assert a.value is not None and 300.0 - 1.0 < a.value <= 300.0  # 50 W x (a few ms)
    assert a.source == "nvml:total_energy_consumption-idle"
    i = idle.stop()
    assert (i.value, i.unit, i.source) == (pytest.approx(50.0), "W", "nvml:power_usage")


def test_nvml_window_too_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([0, 0, 0]))
    session = NvmlEnergy(0, idle_samples=0)  # default min window: 1 s
    raw = session.meters()[0]
    raw.start()
    r = raw.settle(raw.stop())  # a run of one window of a few microseconds
    assert r.value is None and r.source == "unavailable:window_too_short"
    assert session.meters()[1].available() == "unavailable:no_idle_power"


def test_nvml_short_epochs_add_up_to_the_runs_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a fast GPU every epoch's window can be under the counter's 1 s minimum; the run's
    # energy is their sum, judged on their total time (it was withheld whole before).
    counter = [0] + [v for k in range(4) for v in (1_000 * 10 * k, 1_000 * (10 * k + 6))]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(counter))
    session = NvmlEnergy(0, idle_samples=0, min_window_s=0.01)
    raw = session.meters()[0]
    total = None
    for _ in range(4):  # four epochs of about 5 ms, 6 J each
        raw.start()
        time.sleep(0.005)
        total = raw.combine(total, raw.stop())
    assert total is not None and total.window_s is not None
    assert total.value == pytest.approx(24.0) and 0.02 <= total.window_s < 1.0
    assert raw.settle(total) == total  # 4 windows of ~5 ms: over the 0.01 s minimum together
    session.min_window_s = 1.0
    withheld = raw.settle(total)  # under the default minimum, the run's total is too short
    assert withheld.value is None and "in all" in withheld.note
    assert Reading.from_dict(total.to_dict()) == total  # checkpoints keep the measured time


def test_nvml_counter_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], supported=False))
    assert NvmlEnergy(0).reason == "unavailable:counter_not_supported"


def test_the_suite_settles_the_runs_gpu_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    # (a CPU suite without its own meters, given the GPU meter: finish() is what is tested)
    """``MeterSuite.finish`` applies the counter's minimum to the run's summed windows."""
    from bpfree.config import TrainConfig
    from bpfree.meters.suite import MeterSuite

    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([0]))
    session = NvmlEnergy(0, idle_samples=0)  # 1 s minimum
    cfg = TrainConfig.build({"rule": "bp", "model": "mlp_1x8", "dataset": "mnist"})
    suite = MeterSuite(cfg, torch.device("cpu"), None, enabled=False)  # type: ignore[arg-type]
    suite.train = [*session.meters()[:1], *suite.train]
    source = "nvml:total_energy_consumption"
    long = Reading(300.0, "J", source, "whole board", 12.0)  # e.g. 30 epochs of 0.4 s
    assert suite.finish({"gpu_energy": long})["gpu_energy"] == long
    short = Reading(3.0, "J", source, "whole board", 0.4)
    settled = suite.finish({"gpu_energy": short})["gpu_energy"]
    assert settled.value is None and settled.source == "unavailable:window_too_short"
