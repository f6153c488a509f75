"""The Prometheus exposition: names with units and real help texts, build info and start time; the
Grafana dashboard and the alert rules in monitoring/ load and use only metrics that exist."""

from __future__ import annotations

import json
import platform
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

import dsrlb
from dsrlb import metrics, views
from dsrlb.dataplane.forwarder import Stats

MONITORING = Path(__file__).resolve().parents[3] / "monitoring"
NAME = re.compile(r"\b(?:dsrlb_[a-z0-9_]+|process_start_time_seconds)\b")
DURATION = re.compile(r"[0-9]+[smhd]")


class FakeDaemon:
    """views.Status with one server, two targets (one down), drops and VRRP master."""

    generation = 3

    def show_servers(self) -> list[dict[str, Any]]:
        return [{"id": 1, "vip": "172.16.1.10", "port": 80, "packets": 30, "bytes": 2400, "sessions": 2}]

    def show_targets(self) -> list[dict[str, Any]]:
        return [
            {
                "id": t,
                "ipaddr": f"172.16.1.{99 + t}",
                "packets": 15,
                "bytes": 1200,
                "sessions": 1,
                "health": h,
            }
            | {"admin": "enabled"}
            for t, h in ((1, "up"), (2, "down"))
        ]

    def show_sessions(self, limit: int = 0, client: str | None = None) -> dict[str, Any]:
        return {}

    def show_stats(self) -> dict[str, Any]:
        st = Stats(rx=40, tx=33, forwarded=30, arp_replies=2, icmp_replies=1, drops=Counter(no_target=4))
        stats = views.stats(st, 5, self.generation, 10.0, endpoints={}, access="nftables", restored=1)
        return stats | {"version": dsrlb.__version__, "build": "0123456789ab"}

    def show_vrrp(self) -> dict[str, Any]:
        return {
            "state": "master",
            "vrid": 7,
            "transitions": 2,
            "adverts_sent": 10,
            "adverts_received": 1,
            "drops": {"not_a_peer": 1},
        }

    def bgp_status(self) -> dict[str, Any]:
        vips = [
            {"vip": "172.16.1.10", "announced": True, "reason": ""},
            {"vip": "172.16.1.11", "announced": False, "reason": "no healthy target"},
        ]
        return {"state": "enabled", "device": "dsrlb0", "changes": 3, "vips": vips}

    async def show_bgp(self) -> dict[str, Any]:
        return self.bgp_status()

    def show_bngsync(self) -> dict[str, Any]:
        return {
            "state": "active",
            "syncpeer": "172.16.1.251",
            "peer": "standby",
            "packets_sent": 12,
            "packets_received": 9,
            "packets_resent": 1,
            "batches_lost": 0,
            "sessions_sent": 40,
            "sessions_received": 0,
            "sessions_overflow": 0,
            "full_resyncs_sent": 2,
            "sessions_held": 0,
            "drops": {"not_syncpeer": 3},
        }


def exposition() -> str:
    return metrics.render(FakeDaemon()) + metrics.endpoint_metrics({"metrics": views.Endpoint(4)})


def families(text: str) -> dict[str, dict[str, Any]]:
    """Metric name -> {"help", "type", "samples": {series: value}}, checking the format on the way."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            out[name] = {"help": help_text, "samples": {}}
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            out[name]["type"] = kind
        else:
            series, _, value = line.rpartition(" ")
            name = series.partition("{")[0]
            assert name in out and "type" in out[name], f"sample before its HELP and TYPE: {line}"
            out[name]["samples"][series] = float(value)
    return out


def names() -> set[str]:
    return set(families(exposition()))


def test_every_family_has_a_real_help_text_and_prometheus_names() -> None:
    found = families(exposition())
    for name, family in found.items():
        assert name.startswith("dsrlb_") or name == "process_start_time_seconds", name
        assert family["type"] in ("counter", "gauge"), name
        assert (family["type"] == "counter") == name.endswith("_total"), name
        help_text = family["help"]
        assert len(help_text) >= 20 and help_text.endswith(".") and not help_text.startswith("Frames:"), name
    frames = [
        n for n in found if n.startswith(("dsrlb_rx", "dsrlb_tx_f", "dsrlb_forwarded", "dsrlb_dropped"))
    ]
    assert frames and all("_frames_" in n for n in frames), frames


def test_values() -> None:
    found = families(exposition())
    assert found["dsrlb_forwarded_frames_total"]["samples"] == {"dsrlb_forwarded_frames_total": 30}
    assert found["dsrlb_dropped_frames_total"]["samples"] == {
        'dsrlb_dropped_frames_total{reason="no_target"}': 4,
        'dsrlb_dropped_frames_total{reason="ring_full"}': 5,
    }
    assert found["dsrlb_target_up"]["samples"] == {
        'dsrlb_target_up{target="1",ipaddr="172.16.1.100"}': 1,
        'dsrlb_target_up{target="2",ipaddr="172.16.1.101"}': 0,
    }
    assert found["dsrlb_vrrp_master"]["samples"] == {'dsrlb_vrrp_master{vrid="7"}': 1}
    assert found["dsrlb_ruleset_restored_total"]["samples"] == {
        'dsrlb_ruleset_restored_total{access="nftables"}': 1
    }
    assert found["dsrlb_bngsync_sessions_sent_total"]["samples"] == {
        'dsrlb_bngsync_sessions_sent_total{syncpeer="172.16.1.251"}': 40
    }
    assert found["dsrlb_bngsync_dropped_packets_total"]["samples"] == {
        'dsrlb_bngsync_dropped_packets_total{syncpeer="172.16.1.251",reason="not_syncpeer"}': 3
    }


def test_build_info_and_process_start_time() -> None:
    found = families(exposition())
    labels = (
        f'version="{dsrlb.__version__}",build="0123456789ab",python="{platform.python_version()}",'
        'access="nftables"'
    )
    info = f"dsrlb_build_info{{{labels}}}"
    assert found["dsrlb_build_info"]["samples"] == {info: 1}
    (start,) = found["process_start_time_seconds"]["samples"].values()
    assert time.time() - 3600 < start <= time.time()


# --- monitoring/ ---------------------------------------------------------------------------------


def test_alert_rules_are_prometheus_rule_groups_over_existing_metrics() -> None:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    assert set(document) == {"groups"}
    alerts = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and isinstance(group["name"], str)
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].count("(") == rule["expr"].count(")")
            assert "for" not in rule or DURATION.fullmatch(rule["for"]), rule
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            used = set(NAME.findall(rule["expr"]))
            assert used and used <= names(), (rule["alert"], used - names())
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts))
    for wanted in ("TargetDown", "NoVrrpMaster", "DropsRising", "RulesetRestored", "TableOverflow"):
        assert f"Dsrlb{wanted}" in alerts


def test_grafana_dashboard_loads_and_queries_existing_metrics() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    for expr in exprs:
        used = set(NAME.findall(expr))
        assert used and used <= names(), (expr, used - names())
    everything = " ".join(exprs)
    for needed in (
        "dsrlb_forwarded_frames_total",
        "dsrlb_dropped_frames_total",
        "dsrlb_target_up",
        "dsrlb_vrrp_master",
        "dsrlb_table_entries",
        "dsrlb_table_overflow_packets_total",
    ):
        assert needed in everything
    variable = dashboard["templating"]["list"][0]
    assert set(NAME.findall(variable["definition"])) <= names()


@pytest.mark.parametrize("path", ["alerts.yml", "grafana-dashboard.json"])
def test_monitoring_files_end_with_a_newline(path: str) -> None:
    assert (MONITORING / path).read_text().endswith("\n")
