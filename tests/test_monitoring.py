"""deploy/monitoring: the PrometheusRule and the Grafana dashboard. No database.

The metrics they may name are derived from the program: billing_cli/delivery/metrics.py is run
against a collector registry for every job and outcome (`pushed_metrics`), and a real Pushgateway
shows what it adds. The rules are checked and unit-tested with Debian's promtool (package
`prometheus`); without it the promtool tests are reported as skipped, and in CI (`CI` set: .ci/run
installs it) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

from billing_cli.delivery import metrics as metrics_module
from billing_cli.jobs.reconcile import Kind
from billing_cli.outcomes import Component, Job, RunOutcome
from billing_cli.summary import RunSummary
from tests.conftest import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "billing-dashboard.json"
RULE_TESTS = ROOT / "tests" / "monitoring" / "rules.test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"

# What the Pushgateway adds to every group it holds (its own metrics about the push), besides the
# grouping key labels (job, shard; reconcile adds month) and an empty `instance`. test_pushgateway_adds_exactly_this
# checks the list against a real Pushgateway.
PUSHGATEWAY_METRICS = {"push_time_seconds", "push_failure_time_seconds"}
GROUPING_LABELS = {"job", "shard", "instance"}


# --- what the program pushes ------------------------------------------------------------------

def _summaries() -> Iterator[RunSummary]:
    """A run of every job with every outcome, with every count, error and revenue the metrics
    code reads, so that each of its branches pushes what it can."""
    for job in Job:
        for outcome in RunOutcome:
            yield RunSummary(job=job.value, period="2024-01", outcome=outcome, dry_run=False, seconds=1.5,
                             counts={"processed": 2, "failed": 1, "hours": 2, "failed_hours": 1,
                                     "orphan_events": 3, "default_partition_events": 1, "differences": 1},
                             errors={component.value: 1 for component in Component},
                             revenue={"USD": "10.00", "EUR": "2.50"})


def _registries(monkeypatch: pytest.MonkeyPatch, summaries: Iterator[RunSummary]) -> list:
    """The registries push_run_metrics hands to the Pushgateway client, caught instead of sent."""
    import prometheus_client

    caught = []
    monkeypatch.setattr(prometheus_client, "pushadd_to_gateway",
                        lambda url, *, job, grouping_key, registry, timeout: caught.append(registry))
    for summary in summaries:
        metrics_module.push_run_metrics("http://pushgateway.invalid:9091", summary)
    return caught


@pytest.fixture(scope="module")
def pushed_metrics() -> dict[str, set[str]]:
    """metric name -> its label names, for everything a run may push (grouping labels included),
    and the Pushgateway's own metrics."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        registries = _registries(monkeypatch, _summaries())
    names: dict[str, set[str]] = {name: set(GROUPING_LABELS) for name in PUSHGATEWAY_METRICS}
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                names.setdefault(sample.name, set(GROUPING_LABELS)).update(sample.labels)
    return names


def test_pushed_metrics_are_derived_from_the_code(pushed_metrics: dict[str, set[str]]) -> None:
    assert pushed_metrics["billing_errors"] == GROUPING_LABELS | {"component"}
    assert pushed_metrics["billing_revenue"] == GROUPING_LABELS | {"currency"}
    assert "billing_last_success_timestamp_seconds" in pushed_metrics  # pushed on success only
    assert "billing_orphan_usage_events" in pushed_metrics and "billing_reconcile_differences" in pushed_metrics
    assert "billing_usage_events_default_partition" in pushed_metrics
    assert all(name.startswith("billing_") for name in set(pushed_metrics) - PUSHGATEWAY_METRICS)


def test_pushgateway_adds_exactly_this() -> None:
    """A real push: the Pushgateway holds what the registry held, plus PUSHGATEWAY_METRICS."""
    from tests.peers.pushgateway import Pushgateway

    summary = RunSummary(job="invoice-monthly", period="2024-01", outcome=RunOutcome.SUCCEEDED, dry_run=False,
                         seconds=3.0, counts={"processed": 1, "failed": 0}, errors={"data": 0},
                         revenue={"USD": "1.00"})
    with pytest.MonkeyPatch.context() as catching:
        [registry] = _registries(catching, iter([summary]))
    sent = {sample.name for family in registry.collect() for sample in family.samples}
    gateway = Pushgateway().start()
    try:
        metrics_module.push_run_metrics(gateway.url, summary)
        exposed = gateway.metrics()
    finally:
        gateway.stop()
    held = {match[0] for match in re.findall(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}', exposed, re.M)
            if 'job="billing-invoice-monthly"' in match[1]}
    assert held == sent | PUSHGATEWAY_METRICS


# --- PromQL: the metrics and labels an expression names ----------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SELECTOR = re.compile(rf"(?<![\w:])(?P<name>{_NAME})?\s*\{{(?P<matchers>[^{{}}]*)\}}")
_MATCHER = re.compile(r'\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*"(?P<value>(?:[^"\\]|\\.)*)"\s*,?')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan", "atan2"}


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every vector selector of a PromQL expression: (metric name, [(label, op, value)])."""
    found = []
    for match in _SELECTOR.finditer(expr):
        text = match["matchers"]
        matchers = [(m["label"], m["op"], m["value"]) for m in _MATCHER.finditer(text)]
        assert "".join(m.group(0) for m in _MATCHER.finditer(text)).strip() == text.strip(), \
            f"cannot read the label matchers {{{text}}} of {expr!r}"
        name = match["name"]
        if name is None:
            [name] = [value for label, op, value in matchers if label == "__name__" and op == "="]
        found.append((name, matchers))
    rest = _SELECTOR.sub(" ", expr)
    rest = _STRING.sub(" ", _LABEL_LIST.sub(" ", rest))
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges and subqueries: [5m], [1h:5m]
    for match in re.finditer(rf"(?<![\w:.$]){_NAME}(?![\w:])(?!\s*\()", rest):
        if match.group(0) not in _KEYWORDS:
            found.append((match.group(0), []))
    return found


def test_selectors_reads_metric_names_and_matchers() -> None:
    expr = ('sum by (job, component) (rate(foo_total{a="x", b=~"y|z"}[5m] offset 1h)) > on (job) group_left '
            'bar and time() - baz{c!="w"} > 2 * 3600 or label_replace(qux, "d", "$1", "e", "(.*)") or 1e3')
    assert sorted(selectors(expr)) == [("bar", []), ("baz", [("c", "!=", "w")]),
                                       ("foo_total", [("a", "=", "x"), ("b", "=~", "y|z")]), ("qux", [])]
    assert selectors('{__name__="up", job="j"}') == [("up", [("__name__", "=", "up"), ("job", "=", "j")])]


# The label values that must name something real: the jobs (as the Pushgateway's job label), the
# error components, the reconcile kinds.
_LABEL_VALUES = {
    "job": {f"billing-{job.value}" for job in Job},
    "component": {component.value for component in Component},
    "kind": {kind.value for kind in Kind} | {"any"},
}


def unknown_names(expr: str, pushed: dict[str, set[str]]) -> list[str]:
    """What an expression names that the program does not push: metrics, their labels, job names,
    components or reconcile kinds (a regex matcher must match at least one; `=` must be one)."""
    problems = []
    for name, matchers in selectors(expr):
        if name not in pushed:
            problems.append(f"metric {name}")
            continue
        for label, op, value in matchers:
            if label != "__name__" and label not in pushed[name]:
                problems.append(f"label {label} of {name}")
            elif label in _LABEL_VALUES and op in ("=", "!="):
                if value not in _LABEL_VALUES[label]:
                    problems.append(f"{label}={value!r}")
            elif label in _LABEL_VALUES:
                matched = {real for real in _LABEL_VALUES[label] if re.fullmatch(value, real)}
                alternatives = [alt for alt in value.split("|") if "(" not in value]
                if not matched or any(alt not in _LABEL_VALUES[label] for alt in alternatives):
                    problems.append(f"{label}=~{value!r}")
    return problems


def test_unknown_names_are_found(pushed_metrics: dict[str, set[str]]) -> None:
    assert unknown_names('billing_revenue{currency="USD", job="billing-invoice-monthly"}', pushed_metrics) == []
    assert unknown_names("sum(billing_revenue_total)", pushed_metrics) == ["metric billing_revenue_total"]
    assert unknown_names('billing_errors{kind="data"}', pushed_metrics) == ["label kind of billing_errors"]
    assert unknown_names('billing_errors{component=~"s3|stripes"}', pushed_metrics) == ["component=~'s3|stripes'"]
    assert unknown_names('billing_run_duration_seconds{job="billing-invoice-montly"}', pushed_metrics) == \
        ["job='billing-invoice-montly'"]


# --- the PrometheusRule -----------------------------------------------------------------------

@cache
def _rule_manifest() -> dict:
    [manifest] = [doc for doc in yaml.safe_load_all(RULES.read_text(encoding="utf-8")) if doc]
    return manifest


def alert_rules() -> list[dict]:
    return [rule for group in _rule_manifest()["spec"]["groups"] for rule in group["rules"]]


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        message = "promtool is not installed: apt-get install -y prometheus (.ci/run does it)"
        if os.environ.get("CI"):
            raise RuntimeError(message)  # CI must run every test
        pytest.skip(message)
    return binary


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_rule_manifest_is_a_prometheusrule() -> None:
    manifest = _rule_manifest()
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    assert set(manifest) == {"apiVersion", "kind", "metadata", "spec"} and set(manifest["spec"]) == {"groups"}
    assert "namespace" not in manifest["metadata"], "the namespace is chosen when applying (README.md)"
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)) and names
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_rules_name_only_what_the_program_pushes(pushed_metrics: dict[str, set[str]]) -> None:
    for rule in alert_rules():
        assert selectors(rule["expr"]), rule["alert"]
        assert unknown_names(rule["expr"], pushed_metrics) == [], rule["alert"]


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_manifest()["spec"]), encoding="utf-8")
    result = _promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules(tmp_path: Path) -> None:
    """tests/monitoring/rules.test.yaml: the month-not-invoiced alert fires from the 2nd when the
    last success is last month's, also when only a --org run or one shard of a split succeeded,
    and not when a whole run or every shard did; the hourly and failed-run alerts too."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rule_manifest()["spec"]), encoding="utf-8")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = _promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text(encoding="utf-8")))
    assert {"BillingPeriodsNotInvoiced", "BillingHourlyAggregationStale"} <= tested
    assert tested <= {rule["alert"] for rule in alert_rules()}


def test_operations_doc_lists_exactly_the_alerts_of_the_manifest() -> None:
    """docs/operations.md explains each alert (its table) and points at the manifest, which holds
    the expressions: one source of truth."""
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split("## Metrics and alerts")[1].split("\n## ")[0]
    assert "](../deploy/monitoring/prometheusrule.yaml)" in section
    assert "](../deploy/monitoring/billing-dashboard.json)" in section
    assert "expr:" not in section, "the expressions live in deploy/monitoring/prometheusrule.yaml only"
    table = section.split("| alert | fires when | what to do |")[1].split("\n\n")[0]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert len(documented) == len(set(documented))
    assert set(documented) == {rule["alert"] for rule in alert_rules()}


# --- the Grafana dashboard --------------------------------------------------------------------

@cache
def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels() -> list[dict]:
    found = []
    for panel in _dashboard()["panels"]:
        found.append(panel)
        found += panel.get("panels", [])  # collapsed rows hold their panels
    return found


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query."""
    return [(panel["title"], target["expr"]) for panel in panels() for target in panel.get("targets", [])]


def test_dashboard_is_a_grafana_dashboard_over_a_prometheus_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "billing" and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36  # Grafana 9 and later
    assert dashboard.get("id") is None, "no database id: the dashboard is provisioned"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]


def test_dashboard_names_only_what_the_program_pushes(pushed_metrics: dict[str, set[str]]) -> None:
    named = set()
    for title, expr in dashboard_queries():
        assert "$" not in expr.replace("$1", ""), f"{title}: Grafana variables in the query are not checked"
        assert unknown_names(expr, pushed_metrics) == [], title
        named |= {name for name, _ in selectors(expr)}
    # ... and shows everything the program pushes.
    assert named >= set(pushed_metrics) - PUSHGATEWAY_METRICS


def test_dashboard_has_the_panels_operators_need() -> None:
    by_metric: dict[str, set[str]] = {}
    for panel in panels():
        for target in panel.get("targets", []):
            for name, _ in selectors(target["expr"]):
                by_metric.setdefault(name, set()).add(panel["type"])
    assert "stat" in by_metric["billing_last_success_timestamp_seconds"]  # last success per job
    assert by_metric["billing_last_run_success"] & {"state-timeline", "status-history"}  # run outcomes
    for name in ("billing_revenue", "billing_organizations_processed", "billing_errors",
                 "billing_run_duration_seconds"):
        assert "timeseries" in by_metric[name], name
    [revenue] = [expr for _, expr in dashboard_queries() if "billing_revenue" in expr]
    assert re.search(r"\bsum by \(currency\)", revenue)
    assert 'shard!="targeted"' in revenue  # --org runs are not the month's revenue


def test_promtool_parses_the_dashboard_queries(tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:query_{index}", "expr": expr}
             for index, (_, expr) in enumerate(dashboard_queries())]
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}),
                                           encoding="utf-8")
    result = _promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_revenue_query_adds_up_the_shards_of_the_month_only(tmp_path: Path) -> None:
    """The dashboard's revenue query, evaluated by promtool: the shards of the month's split add
    up per currency; a --org run and a job that has not run for 40 days (an earlier whole run)
    are left out."""
    [revenue] = [expr for _, expr in dashboard_queries() if "billing_revenue" in expr]
    day = 86400
    monthly = 'job="billing-invoice-monthly"'

    def series(name: str, labels: str, value: float) -> dict:
        return {"series": f"{name}{{{monthly}, {labels}}}", "values": f"{value}x60"}  # one a day, 60 days

    tests = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1d",
        "input_series": [
            series("billing_revenue", 'shard="0-of-2", currency="USD"', 10),
            series("billing_revenue", 'shard="1-of-2", currency="USD"', 5.5),
            series("billing_revenue", 'shard="1-of-2", currency="EUR"', 2),
            series("billing_revenue", 'shard="targeted", currency="USD"', 100),
            series("billing_revenue", 'shard="all", currency="USD"', 1000),
            series("billing_last_run_timestamp_seconds", 'shard="0-of-2"', 59 * day),
            series("billing_last_run_timestamp_seconds", 'shard="1-of-2"', 59 * day),
            series("billing_last_run_timestamp_seconds", 'shard="targeted"', 59 * day),
            series("billing_last_run_timestamp_seconds", 'shard="all"', 15 * day),  # 45 days before
        ],
        "promql_expr_test": [{"expr": revenue, "eval_time": "60d", "exp_samples": [
            {"labels": '{currency="USD"}', "value": 15.5},
            {"labels": '{currency="EUR"}', "value": 2},
        ]}],
    }]}
    (tmp_path / "revenue.test.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    result = _promtool("test", "rules", "revenue.test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the kustomization ------------------------------------------------------------------------

def test_monitoring_kustomization_holds_the_rules_and_the_dashboard_apart_from_the_jobs() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["resources"] == [RULES.name]
    [generator] = kustomization["configMapGenerator"]
    assert generator["files"] == [DASHBOARD.name]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    assert "namespace" not in kustomization
    # deploy/k8s applies on a cluster without the Prometheus Operator: nothing of it refers here.
    for path in (ROOT / "deploy" / "k8s").rglob("kustomization.yaml"):
        assert "monitoring" not in yaml.safe_load(path.read_text(encoding="utf-8")).get("resources", []), path
    readme = (MONITORING / "README.md").read_text(encoding="utf-8")
    assert "kubectl apply -n monitoring -k deploy/monitoring" in readme
    assert "honorLabels: true" in readme
