"""Monitoring files, checked without running anything: promtool on the Prometheus config, rules and their
unit tests; every Grafana dashboard is valid, unique, on the provisioned data source, and its queries parse."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM = ROOT / "monitoring" / "prometheus"
GRAFANA = ROOT / "monitoring" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# What Grafana puts in place of its own variables before the query reaches Prometheus.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: apt-get install prometheus (listed in tests/apt-packages.txt)")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid():
    ok(promtool("check", "config", "prometheus.yml"))


def test_rules_are_valid():
    ok(promtool("check", "rules", *sorted(str(p.relative_to(PROM)) for p in (PROM / "rules").glob("*.yml"))))


def test_rule_unit_tests_pass(report):
    ok(promtool("test", "rules", *sorted(str(p.relative_to(PROM)) for p in (PROM / "tests").glob("*.yml"))))
    report.real("promtool test rules: every alert fires on its failure and not on a healthy neighbour")


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for f in (PROM / "rules").glob("*.yml") for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for f in (PROM / "tests").glob("*.yml") for case in yaml.safe_load(f.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts and alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def test_scrape_jobs_are_discovered_not_static():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"gateway", "service", "vllm"}
    for job in jobs.values():
        assert "static_configs" not in job and job["file_sd_configs"]


# ---------------------------------------------------------------- Grafana
def provisioned_uid() -> str:
    data = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = data["datasources"]
    assert ds["type"] == "prometheus"
    return ds["uid"]


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels inside collapsed rows
    return out


def queries(dash: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])]


def substitute(expr: str, variables: list[str]) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    for name in variables:  # every variable is used as a regex matcher: All = .*
        expr = expr.replace("${" + name + "}", ".*").replace("$" + name, ".*")
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_dashboards_are_current():
    subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--check"], check=True)


def test_dashboards_valid_unique_and_on_the_provisioned_datasource():
    uid = provisioned_uid()
    assert {p.name for p in DASHBOARDS} == {"overview.json", "llm.json", "image.json", "vision.json"}
    uids, titles = set(), set()
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] not in uids and dash["title"] not in titles, path.name
        uids.add(dash["uid"])
        titles.add(dash["title"])
        ids = [p["id"] for p in panels(dash)]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        used = {json.dumps(p["datasource"], sort_keys=True) for p in panels(dash) if "datasource" in p}
        used |= {json.dumps(t["datasource"], sort_keys=True) for p in panels(dash) for t in p.get("targets", [])}
        used |= {json.dumps(v["datasource"], sort_keys=True) for v in dash["templating"]["list"] if "datasource" in v}
        assert used == {json.dumps({"type": "prometheus", "uid": uid}, sort_keys=True)}, path.name
        assert queries(dash), path.name


def test_every_panel_query_parses(tmp_path):
    """promtool parses each query as a recording rule: syntax, functions and label matchers."""
    rules = []
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        names = [v["name"] for v in dash["templating"]["list"]]
        for i, (title, expr) in enumerate(queries(dash)):
            rules.append({"record": f"dashboard:{path.stem}:q{i}", "expr": substitute(expr, names),
                          "labels": {"panel": re.sub(r"[^\w ]", "", title)}})
        for v in dash["templating"]["list"]:
            if v["type"] == "query":  # label_values(SELECTOR, label): the selector must parse
                inner = re.fullmatch(r"label_values\((.*), *\w+\)", v["query"]["query"]).group(1)
                rules.append({"record": f"dashboard:{path.stem}:var_{v['name']}", "expr": substitute(inner, names)})
    out = tmp_path / "dashboard_queries.yml"
    out.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    ok(promtool("check", "rules", str(out)))
    assert len(rules) > 60


def test_grafana_dashboard_provider_points_at_a_folder():
    data = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "modelplat.yml").read_text())
    (provider,) = data["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
