"""Failover figures of the HA suite as a table for people (the issue's closing note needs them)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from hafleet import ADVERT_MS, Window

IMPL = 16  # width of the impl column: "keepalived", "dsrlb raw", "dsrlb nftables"


@dataclass
class Runs:
    """The windows of every run of one (implementation, event)."""

    failover: list[Window] = field(default_factory=list)
    recovery: list[Window] = field(default_factory=list)

    def gap(self, which: str = "failover") -> float:
        return statistics.median(w.gap for w in getattr(self, which))

    def failed(self, which: str = "failover") -> float:
        return statistics.median(w.failed for w in getattr(self, which))


@dataclass
class Report:
    provisioned_by: str
    runs: dict[tuple[str, str], Runs] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, impl: str, event: str, failover: Window, recovery: Window) -> None:
        runs = self.runs.setdefault((impl, event), Runs())
        runs.failover.append(failover)
        runs.recovery.append(recovery)

    def render(self) -> str:
        lines = [
            f"VRRP failover, lab client -> VIP:80, new TCP connection every 20 ms, 0.3 s timeout, "
            f"advert {ADVERT_MS} ms (dsrlb pair: {self.provisioned_by}; data plane access raw = the Python "
            "forwarder, access nftables = the kernel, switched with the role's dsrlb_access)",
            "gap = longest interval between two successful replies; failed = requests without a reply; "
            "recovery = the old master back, taking over again (preempt)",
            f"{'impl':<{IMPL}}{'event':<8}{'runs':>5}  {'gap ms (median)':>16}  {'failed (median)':>16}  "
            f"{'recovery gap ms':>16}  {'recovery failed':>16}   per run: gap ms / failed",
        ]
        for (impl, event), r in self.runs.items():
            per_run = " ".join(f"{w.gap * 1000:.0f}/{w.failed}" for w in r.failover)
            lines.append(
                f"{impl:<{IMPL}}{event:<8}{len(r.failover):>5}  {r.gap() * 1000:>16.0f}  "
                f"{r.failed():>16.1f}  "
                f"{r.gap('recovery') * 1000:>16.0f}  {r.failed('recovery'):>16.1f}   {per_run}"
            )
        return "\n".join(lines + self.notes)
