"""A kernel baseline that lost frames is called out in the bench's report: every ratio rests on it."""

from __future__ import annotations

from dataclasses import asdict

from dsrlb_tools.bench import Phase, _report, baseline_warnings


def phase(path: str, placement: str, received: float, delivered: float) -> Phase:
    return Phase(
        path=path,
        placement=placement,
        balancer="receive on cpu1",
        seconds=3.0,
        offered_pps=received,
        received_pps=received,
        delivered_pps=delivered,
        per_target_pps={"target1": delivered / 2, "target2": delivered / 2},
        cpu_us_per_packet={"cpu0": 4.4, "cpu1": 0.2},
        cpu_busy={"cpu0": 1.0, "cpu1": 0.05},
        balancer_cpu_us_per_packet=0.2 if placement == "free" else None,
        daemon_cpu_us_per_packet=None if path == "kernel" else 4.5,
    )


def test_only_a_kernel_baseline_that_lost_frames_is_called_out() -> None:
    phases = [
        phase("kernel", "free", 250_000, 150_000),  # the DAD fault: 60 % delivered, no counter moved
        phase("raw", "free", 250_000, 160_000),  # the Python path may drop; dsrlb counts its drops
        phase("kernel", "shared", 160_000, 159_000),
    ]
    warnings = baseline_warnings(phases)
    assert warnings == [
        "the kernel baseline (free) delivered 60% of what the balancer received: it lost frames, "
        "so the ratios of that placement are not comparable"
    ]
    result = {
        "traffic": "74-byte TCP SYNs",
        "network_cpu": "cpu0",
        "placements": {"free": "cpu1", "shared": "cpu0"},
        "busy_before": {"cpu0": 0.0, "cpu1": 0.0},
        "phases": [asdict(p) for p in phases],
        "warnings": warnings,
    }
    assert f"warning: {warnings[0]}" in _report(result).splitlines()


def test_a_sound_baseline_gives_no_warning() -> None:
    sound = [phase("kernel", "free", 227_000, 227_400), phase("kernel", "shared", 0, 0)]
    assert baseline_warnings(sound) == []
