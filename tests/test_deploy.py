"""Deployment files: the Kubernetes manifests (base and overlays), the Dockerfile, .dockerignore and
crontab.example. No network, no database, no kubectl.

The overlays are rendered by the small kustomize subset below (resources, namespace, labels,
images, strategic-merge patches from files). It raises `Unsupported` on anything else, so an
overlay that starts using another kustomize feature fails here instead of being checked wrongly.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from billing_cli.config import VARIABLES, VARIABLES_BY_NAME, Settings, load_settings
from billing_cli.errors import ConfigError, ExitCode
from tests.conftest import BILLING, ROOT, billing_subprocess_env

K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(path.parent for path in (K8S / "overlays").glob("*/kustomization.yaml"))
RENDERINGS = {"base": BASE} | {f"overlays/{path.name}": path for path in OVERLAYS}
SECRET_EXAMPLE = BASE / "secret.example.yaml"

CONFIGMAP = "billing-config"
CONTAINER = "billing"
UID = 10001

VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]

# podFailurePolicy from the one table of exit codes: these are worth retrying within the Job
# (Count toward backoffLimit); every other failure code fails the Job at once (FailJob).
RETRYABLE_NAMES = {"DATABASE_UNAVAILABLE", "PARTIAL", "INTERRUPTED", "PEER_UNAVAILABLE"}
# The codes decided to fail the Job. A new ExitCode must be put in one of the two sets by someone
# who knows what it means (test_every_exit_code_is_classified), never land in FailJob by default.
FAIL_JOB_NAMES = {"INTERNAL", "USAGE", "CONFIG", "SCHEMA_OUTDATED", "ALREADY_RUNNING", "REFUSED", "UNHEALTHY",
                  "MISMATCH"}
RETRYABLE = {int(code) for code in ExitCode if code.name in RETRYABLE_NAMES}
FAIL_JOB = {int(code) for code in ExitCode} - {int(ExitCode.OK)} - RETRYABLE
# Only Kubernetes (per pod of an Indexed Job) or the sharded CronJob's own env may set these.
PER_POD_VARIABLES = {"SHARD_COUNT", "JOB_COMPLETION_INDEX"}

MONTHLY_JOBS = {"invoice-monthly", "legacy-run"}

# --- Secrets: one per need, least privilege ---
# The keys of each Secret. Every secret=True variable is in exactly one of them; the other keys are
# companions the program only accepts together with that secret (a username without its password,
# a webhook URL without its signing secret: exit 3), so they must never be in the ConfigMap, which
# pods without that Secret read too.
DATABASE, STRIPE, SMTP, WEBHOOK = "billing-database", "billing-stripe", "billing-smtp", "billing-webhook"
SECRET_KEYS = {
    DATABASE: {"DATABASE_URL"},
    STRIPE: {"STRIPE_API_KEY"},
    SMTP: {"INVOICE_SMTP_USERNAME", "INVOICE_SMTP_PASSWORD"},
    WEBHOOK: {"NOTIFY_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET"},
}
SECRET_COMPANIONS = {"INVOICE_SMTP_USERNAME", "NOTIFY_WEBHOOK_URL"}
# A pod without it must not start. The others are optional: an environment may not use the feature
# (and with the feature on but its Secret missing, the program exits 3 naming the variable).
REQUIRED_SECRETS = {DATABASE}
# Every Job and CronJob of every rendering -> exactly the Secrets its pods read, and never another.
# aggregate-hourly: no Stripe; no SMTP, because it e-mails only with NOTIFY_ON_AGGREGATE_ERRORS (off
# everywhere; test_secret_table_follows_what_each_job_uses fails if an overlay turns it on). reconcile:
# SMTP, because it e-mails its differences when NOTIFY_ON_COMPLETION is on (both overlays).
JOB_SECRETS = {
    "billing-db-upgrade": {DATABASE},
    "billing-aggregate-hourly": {DATABASE, WEBHOOK},
    "billing-invoice-monthly": {DATABASE, STRIPE, SMTP, WEBHOOK},
    "billing-invoice-monthly-sharded": {DATABASE, STRIPE, SMTP, WEBHOOK},
    "billing-legacy-run": {DATABASE, STRIPE, SMTP, WEBHOOK},
    "billing-reconcile": {DATABASE, STRIPE, SMTP, WEBHOOK},
}
# Every feature that needs a Secret turned on, with the non-secret settings it requires.
FEATURES_ON = {"INVOICE_ENABLE_S3": "true", "INVOICE_S3_BUCKET": "b", "INVOICE_ENABLE_STRIPE": "true",
               "INVOICE_ENABLE_EMAIL": "true", "INVOICE_SMTP_HOST": "smtp.example.com",
               "INVOICE_SMTP_FROM": "billing@example.com", "NOTIFY_ON_COMPLETION": "true",
               "NOTIFY_EMAIL": "finance@example.com"}
FEATURES_OFF = {"INVOICE_ENABLE_S3": "false", "INVOICE_ENABLE_STRIPE": "false", "INVOICE_ENABLE_EMAIL": "false",
                "NOTIFY_ON_COMPLETION": "false", "NOTIFY_ON_AGGREGATE_ERRORS": "false"}


# --- a small, honest kustomize ---------------------------------------------------------------

class Unsupported(Exception):
    """A kustomization uses something this renderer does not implement."""


_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                   "PersistentVolume", "StorageClass", "PriorityClass"}
# Strategic-merge keys of the lists our patches may touch; every other list is replaced.
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath"}


def _load_all(path: Path) -> list[dict]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise Unsupported(f"{path}: a YAML document that is not a mapping")
    return docs


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` would print, for the subset we use."""
    kustomization_file = directory / "kustomization.yaml"
    if not kustomization_file.is_file():
        raise Unsupported(f"{directory}: no kustomization.yaml")
    [kustomization] = _load_all(kustomization_file)
    unknown = set(kustomization) - _KUSTOMIZATION_KEYS
    if unknown:
        raise Unsupported(f"{kustomization_file}: {sorted(unknown)}")
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise Unsupported(f"{kustomization_file}: kind {kustomization['kind']}")

    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        if "://" in entry or entry.startswith("git@"):
            raise Unsupported(f"{kustomization_file}: remote resource {entry}")
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += render(path)
        elif path.is_file():
            objects += _load_all(path)
        else:
            raise FileNotFoundError(f"{kustomization_file}: resource {entry} not found")

    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise Unsupported(f"{kustomization_file}: patch {patch} (only `path:` to a strategic-merge file)")
        for document in _load_all(directory / patch["path"]):
            _apply_patch(objects, document, directory / patch["path"])

    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]

    for entry in kustomization.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"}:
            raise Unsupported(f"{kustomization_file}: labels {entry}")
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise Unsupported(f"{kustomization_file}: labels on selectors or templates")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(entry["pairs"])

    for image in kustomization.get("images", []):
        if set(image) - {"name", "newName", "newTag"} or "name" not in image:
            raise Unsupported(f"{kustomization_file}: image {image}")
        for obj in objects:
            for container in _all_containers(obj):
                container["image"] = _retag(container["image"], image)

    seen: set[tuple[str, str]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{directory}: {key} defined twice"
        seen.add(key)
    return objects


def _apply_patch(objects: list[dict], patch: dict, source: Path) -> None:
    targets = [obj for obj in objects if obj["apiVersion"] == patch.get("apiVersion")
               and obj["kind"] == patch.get("kind") and obj["metadata"]["name"] == patch["metadata"]["name"]]
    if len(targets) != 1:
        raise Unsupported(f"{source}: the patch matches {len(targets)} objects, not one")
    _merge(targets[0], patch, source)


def _merge(target: dict, patch: dict, source: Path) -> None:
    for key, value in patch.items():
        if key.startswith("$"):
            raise Unsupported(f"{source}: directive {key}")
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, source)
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(target.get(key), list):
            merge_key = _MERGE_KEYS[key]
            for item in value:
                if not isinstance(item, dict) or merge_key not in item or any(k.startswith("$") for k in item):
                    raise Unsupported(f"{source}: list item {item} of {key}")
                match = [existing for existing in target[key] if existing.get(merge_key) == item[merge_key]]
                if match:
                    _merge(match[0], item, source)
                else:
                    target[key].append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _all_containers(node: object) -> list[dict]:
    found: list[dict] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += value
            else:
                found += _all_containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _all_containers(item)
    return found


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    name, _, digest = image.partition("@")
    tag = None
    if name.rfind(":") > name.rfind("/"):
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _retag(image: str, entry: dict) -> str:
    name, tag, digest = _split_image(image)
    if name != entry["name"]:
        return image
    name = entry.get("newName", name)
    if "newTag" in entry:
        tag, digest = str(entry["newTag"]), None
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


@cache
def _rendered(directory: Path) -> tuple[dict, ...]:
    return tuple(render(directory))


def rendered(name: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(RENDERINGS[name])))


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [obj for obj in objects if obj["kind"] == kind]


def configmap_data(objects: list[dict]) -> dict[str, str]:
    [configmap] = [obj for obj in by_kind(objects, "ConfigMap") if obj["metadata"]["name"] == CONFIGMAP]
    return configmap["data"]


# What an operator fills in before the first run: the manifests ship without a real seller, and
# every job refuses to start until it is set (test_a_made_up_seller_never_reaches_a_customer).
SELLER_FILLED_IN = {"INVOICE_SELLER_NAME": "Acme Cloud GmbH",
                    "INVOICE_SELLER_ADDRESS": "Hauptstrasse 1|10115 Berlin|Germany"}


def filled_in(objects: list[dict]) -> dict[str, str]:
    """The ConfigMap's data as it runs: with the seller an operator sets in the overlay."""
    return configmap_data(objects) | SELLER_FILLED_IN


def job_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(name, Job spec) of every Job and every CronJob's job template."""
    specs = [(obj["metadata"]["name"], obj["spec"]) for obj in by_kind(objects, "Job")]
    specs += [(obj["metadata"]["name"], obj["spec"]["jobTemplate"]["spec"]) for obj in by_kind(objects, "CronJob")]
    return specs


def billing_job(cronjob: dict) -> str:
    """The billing command a CronJob runs: the first argument to the image's `billing` entrypoint."""
    [container] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container["args"][0]


def secret_examples() -> dict[str, dict]:
    """The example Secrets by name (placeholders: stand-ins for the real ones in the tests)."""
    secrets = _load_all(SECRET_EXAMPLE)
    by_name = {secret["metadata"]["name"]: secret for secret in secrets}
    assert len(by_name) == len(secrets), "an example Secret defined twice"
    return by_name


def example_secret_data(*, without: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, str]]:
    """name -> data of the example Secrets, as if the namespace held all of them but `without`."""
    return {name: secret["stringData"] for name, secret in secret_examples().items() if name not in without}


class PodWouldNotStart(Exception):
    """A non-optional Secret or key is missing: CreateContainerConfigError."""


def _secret_references(node: object) -> list[dict]:
    """Every reference to a Secret anywhere in an object: envFrom secretRef, env secretKeyRef, a
    secret or projected volume, as {"name": ..., "key": ..., "optional": ...} (key None: all keys)."""
    found: list[dict] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretRef", "secretKeyRef") and isinstance(value, dict):
                found.append({"name": value.get("name"), "key": value.get("key"), "optional": value.get("optional")})
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                found.append({"name": value["secretName"], "key": None, "optional": value.get("optional")})
            elif key == "secret" and isinstance(value, dict) and "name" in value:  # projected volume source
                found.append({"name": value["name"], "key": None, "optional": value.get("optional")})
            else:
                found += _secret_references(value)
    elif isinstance(node, list):
        for item in node:
            found += _secret_references(item)
    return found


def pod_environment(container: dict, configmap: dict[str, str],
                    secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The variables Kubernetes gives `container` when the namespace holds `configmap` and `secrets`
    (name -> data): envFrom in order, then env, which wins over envFrom."""
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"} and source["configMapRef"]["name"] == CONFIGMAP, source
        environ.update(configmap)
    for item in container.get("env", []):
        if "value" in item:
            environ[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]  # nothing else is used (KeyError otherwise)
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is not None:
            environ[item["name"]] = value
        elif not ref.get("optional", False):
            raise PodWouldNotStart(f"{item['name']}: secret {ref['name']} key {ref['key']}")
    return environ


def secrets_used(job: str, settings: Settings) -> set[str]:
    """The Secrets a run of `job` (its first argument) reads with these settings, as the program
    behaves (billing_cli/runs/): invoice-monthly and legacy-run deliver and always notify, reconcile
    reads Stripe and S3 and notifies on differences, aggregate-hourly notifies on errors only with
    NOTIFY_ON_AGGREGATE_ERRORS, `db upgrade` notifies no one. Notifying: e-mail (through the SMTP
    server) with NOTIFY_ON_COMPLETION, the webhook with NOTIFY_WEBHOOK_URL."""
    invoicing = job in MONTHLY_JOBS
    notifies = invoicing or job == "reconcile" or (job == "aggregate-hourly" and settings.notify_on_aggregate_errors)
    used = {DATABASE}
    if settings.stripe_enabled and (invoicing or job == "reconcile"):
        used.add(STRIPE)
    if (invoicing and settings.email_enabled) or (notifies and settings.notify_on_completion):
        used.add(SMTP)
    if notifies and settings.webhook_url:
        used.add(WEBHOOK)
    return used


# --- the renderer itself -----------------------------------------------------------------------

def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {A: b}\n")
    unsupported = [
        "commonLabels: {a: b}",
        "patches:\n  - path: p.yaml\n    target: {kind: ConfigMap}",
        "patches:\n  - patch: '[{\"op\": \"remove\", \"path\": \"/data\"}]'",
        "images:\n  - name: billing\n    digest: sha256:0",
        "labels:\n  - pairs: {a: b}\n    includeSelectors: true",
        "configMapGenerator: []",
    ]
    for extra in unsupported:
        (tmp_path / "kustomization.yaml").write_text(f"resources: [cm.yaml]\n{extra}\n")
        with pytest.raises(Unsupported):
            render(tmp_path)


def test_renderer_merges_containers_by_name(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "billing", "args": ["x"], "env": [{"name": "A", "value": "1"}]},
            {"name": "b", "image": "other:1"}]}}}}))
    (tmp_path / "patch.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "a", "env": [{"name": "B", "value": "2"}], "args": ["y"]}]}}}}))
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: ns\nresources: [job.yaml]\npatches: [{path: patch.yaml}]\n"
        "images: [{name: billing, newName: r.example/billing, newTag: '2'}]\n")
    [job] = render(tmp_path)
    a, b = job["spec"]["template"]["spec"]["containers"]
    assert a == {"name": "a", "image": "r.example/billing:2", "args": ["y"],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
    assert b == {"name": "b", "image": "other:1"}
    assert job["metadata"]["namespace"] == "ns"


# --- the manifests ----------------------------------------------------------------------------

def test_every_base_manifest_is_a_resource_except_the_secret_example() -> None:
    [kustomization] = _load_all(BASE / "kustomization.yaml")
    resources = set(kustomization["resources"])
    files = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert SECRET_EXAMPLE.name not in resources
    assert resources == files - {SECRET_EXAMPLE.name}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_objects_pass_kubernetes_validate(name: str, version: str) -> None:
    objects = rendered(name) + (list(secret_examples().values()) if name == "base" else [])
    assert objects
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {path}: {exc.message}")


@pytest.mark.parametrize("name", RENDERINGS)
def test_cronjob_settings(name: str) -> None:
    cronjobs = by_kind(rendered(name), "CronJob")
    assert {billing_job(c) for c in cronjobs} == {"aggregate-hourly", "invoice-monthly", "legacy-run", "reconcile"}
    for cronjob in cronjobs:
        where = f"{name}: {cronjob['metadata']['name']}"
        spec = cronjob["spec"]
        assert spec["concurrencyPolicy"] in {"Allow", "Forbid", "Replace"}, where
        assert spec["concurrencyPolicy"] == "Forbid", where
        assert len(spec["schedule"].split()) == 5, where
        assert spec["timeZone"] == "Etc/UTC", where
        assert spec["startingDeadlineSeconds"] > 0, where
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1, where
        job = spec["jobTemplate"]["spec"]
        assert 1 <= job["backoffLimit"] <= 6, where
        assert job["activeDeadlineSeconds"] > 0 and job["ttlSecondsAfterFinished"] > 0, where
        if billing_job(cronjob) == "aggregate-hourly":
            assert job["activeDeadlineSeconds"] < 3600, f"{where}: must end before the next hourly run"


@pytest.mark.parametrize("name", RENDERINGS)
def test_exactly_one_monthly_invoicing_cronjob_is_active(name: str) -> None:
    """invoice-monthly, its sharded variant and legacy-run bill the same month: never two at once."""
    cronjobs = by_kind(rendered(name), "CronJob")
    active = [c["metadata"]["name"] for c in cronjobs
              if billing_job(c) in MONTHLY_JOBS and not c["spec"].get("suspend", False)]
    assert len(active) == 1, f"{name}: active monthly CronJobs {active}"
    for always in ("aggregate-hourly", "reconcile"):
        runs = [c for c in cronjobs if billing_job(c) == always]
        assert len(runs) == 1 and not runs[0]["spec"].get("suspend", False), f"{name}: {always}"


def test_legacy_run_and_sharded_are_suspended_in_the_base() -> None:
    cronjobs = {c["metadata"]["name"]: c for c in by_kind(rendered("base"), "CronJob")}
    legacy = [c for c in cronjobs.values() if billing_job(c) == "legacy-run"]
    sharded = [c for c in cronjobs.values() if "--shard-count" in _container(c["spec"]["jobTemplate"]["spec"])["args"]]
    assert len(legacy) == 1 and len(sharded) == 1
    assert legacy[0]["spec"]["suspend"] is True
    assert sharded[0]["spec"]["suspend"] is True


@pytest.mark.parametrize("name", RENDERINGS)
def test_sharded_invoicing_is_an_indexed_job(name: str) -> None:
    sharded = [c for c in by_kind(rendered(name), "CronJob")
               if "--shard-count" in _container(c["spec"]["jobTemplate"]["spec"])["args"]]
    assert len(sharded) == 1
    job = sharded[0]["spec"]["jobTemplate"]["spec"]
    args = _container(job)["args"]
    assert args[0] == "invoice-monthly"
    shards = int(args[args.index("--shard-count") + 1])
    env = {item["name"]: item["value"] for item in _container(job).get("env", []) if "value" in item}
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == shards == int(env["SHARD_COUNT"])


def _container(job_spec: dict) -> dict:
    containers = job_spec["template"]["spec"]["containers"]
    [container] = [c for c in containers if c["name"] == CONTAINER]
    return container


@pytest.mark.parametrize("name", RENDERINGS)
def test_pods_are_hardened_and_configured(name: str) -> None:
    objects = rendered(name)
    assert [s["metadata"]["name"] for s in by_kind(objects, "ServiceAccount")] == ["billing"]
    assert configmap_data(objects)
    specs = job_specs(objects)
    assert any(_container(spec)["args"] == ["db", "upgrade"] for _, spec in specs), "no migration Job"
    for job_name, spec in specs:
        where = f"{name}: {job_name}"
        pod = spec["template"]["spec"]
        assert pod["restartPolicy"] == "Never", where
        assert pod["serviceAccountName"] == "billing", where
        assert pod["terminationGracePeriodSeconds"] == 30, where
        assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                                          "fsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}, where
        container = _container(spec)
        assert "command" not in container, f"{where}: use the image's ENTRYPOINT (billing) and args"
        image_name, tag, _ = _split_image(container["image"])
        assert image_name.rsplit("/", 1)[-1] == "billing" and tag and tag != "latest", where
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        [volume] = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
        assert "emptyDir" in volume, where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), where
        # The ConfigMap whole; Secrets only key by key (test_each_pod_reads_exactly_its_secrets).
        assert container["envFrom"] == [{"configMapRef": {"name": CONFIGMAP}}], where
        if container["args"][0] in MONTHLY_JOBS | {"reconcile"}:
            # IRSA: the S3 upload (and reconcile's S3 check) needs the projected service account token.
            assert pod.get("automountServiceAccountToken", True) is True, where


def test_every_exit_code_is_classified() -> None:
    names = {code.name for code in ExitCode} - {"OK"}
    assert names == RETRYABLE_NAMES | FAIL_JOB_NAMES, "classify the new exit code for podFailurePolicy"
    assert not RETRYABLE_NAMES & FAIL_JOB_NAMES


@pytest.mark.parametrize("name", RENDERINGS)
def test_pod_failure_policy_follows_the_exit_codes(name: str) -> None:
    for job_name, spec in job_specs(rendered(name)):
        where = f"{name}: {job_name}"
        assert spec["template"]["spec"]["restartPolicy"] == "Never", where
        containers = {c["name"] for c in spec["template"]["spec"]["containers"]}
        rules = spec["podFailurePolicy"]["rules"]
        fail_job: set[int] = set()
        ignore_disruption = None
        for index, rule in enumerate(rules):
            if "onExitCodes" in rule:
                assert not rule.get("onPodConditions"), where
                codes = rule["onExitCodes"]
                assert codes["containerName"] in containers, where
                assert codes["operator"] == "In", f"{where}: keep the rules explicit (In)"
                if rule["action"] == "FailJob":
                    fail_job |= set(codes["values"])
                else:
                    assert rule["action"] == "Count", where
                    assert set(codes["values"]) <= RETRYABLE, where
            elif {"type": "DisruptionTarget", "status": "True"} in rule["onPodConditions"]:
                assert rule["action"] == "Ignore", where
                ignore_disruption = index
        assert fail_job == FAIL_JOB, where
        assert not fail_job & RETRYABLE, where
        assert ignore_disruption == 0, f"{where}: evictions must be ignored before any exit code rule"


@pytest.mark.parametrize("name", RENDERINGS)
def test_configmap_holds_known_non_secret_variables(name: str) -> None:
    data = configmap_data(rendered(name))
    for key, value in data.items():
        assert key in VARIABLES_BY_NAME, f"{name}: {key} is not a billing variable"
        owner = [secret for secret, keys in SECRET_KEYS.items() if key in keys]
        assert not VARIABLES_BY_NAME[key].secret, f"{name}: secret {key} belongs in {owner}"
        assert key not in SECRET_COMPANIONS, \
            f"{name}: {key} belongs in {owner}, next to its secret: pods without it would exit 3"
        assert isinstance(value, str), key
    assert data["BILLING_REQUIRE_DATABASE_URL"] == "true"
    assert not PER_POD_VARIABLES & set(data), f"{name}: per-pod variables would shard every job"
    assert "PROCESS_MONTH" not in data, "PROCESS_MONTH would pin every monthly run to one month"


def _pod_settings(spec: dict, configmap: dict[str, str], secrets: dict[str, dict[str, str]],
                  env_file: Path) -> list[Settings]:
    """The validated settings of each pod of a Job (each index of an Indexed Job), as Kubernetes
    would start it under this ConfigMap and these Secrets; ConfigError (exit 3) as the program raises it."""
    environ = pod_environment(_container(spec), configmap, secrets) | {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    indexes = range(spec["completions"]) if spec.get("completionMode") == "Indexed" else [None]
    return [load_settings(environ | ({"JOB_COMPLETION_INDEX": str(index)} if index is not None else {}),
                          env_file=env_file) for index in indexes]


def _mounted_secrets(spec: dict) -> set[str]:
    return {ref["name"] for ref in _secret_references(spec["template"])}


@pytest.mark.parametrize("name", RENDERINGS)
def test_configuration_is_valid_in_every_pod(name: str, tmp_path: Path) -> None:
    """What each pod of this rendering sees (the ConfigMap, its own env, only the example Secrets
    it reads and, for an Indexed Job, each JOB_COMPLETION_INDEX) passes the program's own
    validation: no exit 3. Also with every feature turned on in the ConfigMap: a pod without the
    Stripe key must not fail on the Stripe flag (the program validates every feature, whatever the
    command). And each secret variable reaches exactly the pods whose Secret holds it."""
    objects = rendered(name)
    secret_vars = {v.name for v in VARIABLES if v.secret}
    for configmap in (filled_in(objects), filled_in(objects) | FEATURES_ON):
        for job_name, spec in job_specs(objects):
            where = f"{name}: {job_name}"
            container = _container(spec)
            assert {item["name"] for item in container.get("env", [])} <= set(VARIABLES_BY_NAME), where
            environ = pod_environment(container, configmap, example_secret_data())
            allowed = set().union(*(SECRET_KEYS[secret] for secret in JOB_SECRETS[job_name]))
            assert secret_vars & set(environ) == secret_vars & allowed, where
            for settings in _pod_settings(spec, configmap, example_secret_data(), tmp_path / "absent.env"):
                assert settings.require_database_url and settings.database_url is not None, where


@pytest.mark.parametrize("name", RENDERINGS)
def test_a_made_up_seller_never_reaches_a_customer(name: str, tmp_path: Path) -> None:
    """As shipped, the manifests name no real seller: every pod exits 3 naming the two variables
    until the overlay's ConfigMap holds the company's legal name and address."""
    objects = rendered(name)
    for job_name, spec in job_specs(objects):
        with pytest.raises(ConfigError) as refused:
            _pod_settings(spec, configmap_data(objects), example_secret_data(), tmp_path / "absent.env")
        assert "INVOICE_SELLER_NAME and INVOICE_SELLER_ADDRESS are unset or the placeholder" in str(refused.value), \
            f"{name}: {job_name}"


@pytest.mark.parametrize("name", RENDERINGS)
def test_each_pod_reads_exactly_its_secrets(name: str) -> None:
    """Every rendered object: only the Jobs' billing containers refer to Secrets; each Job's pods
    read exactly the Secrets of JOB_SECRETS, key by key (never a whole Secret by envFrom, never a
    volume), every key of each Secret they read, and only billing-database is required."""
    objects = rendered(name)
    specs = dict(job_specs(objects))
    assert set(specs) == set(JOB_SECRETS), f"{name}: put every Job in JOB_SECRETS, with the Secrets it needs"
    for obj in objects:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] not in ("Job", "CronJob"):
            assert not _secret_references(obj), where
            continue
        spec = specs[obj["metadata"]["name"]]
        pod = spec["template"]["spec"]
        others = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] != CONTAINER]
        assert not _secret_references(others) and not _secret_references(pod.get("volumes", [])), where
        container = _container(spec)
        assert not any("secretRef" in source for source in container.get("envFrom", [])), \
            f"{where}: read Secrets key by key (env valueFrom.secretKeyRef), never whole"
        read: dict[str, set[str]] = {}
        for item in container.get("env", []):
            if "valueFrom" not in item:
                continue
            assert set(item["valueFrom"]) == {"secretKeyRef"}, f"{where}: {item['name']}"
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] in SECRET_KEYS, f"{where}: unknown Secret {ref['name']}"
            assert ref["key"] == item["name"], f"{where}: {item['name']} from key {ref['key']}"
            assert ref["key"] in SECRET_KEYS[ref["name"]], f"{where}: {ref['key']} is not a key of {ref['name']}"
            required = ref["name"] in REQUIRED_SECRETS
            assert ref.get("optional", False) is not required, \
                f"{where}: {ref['name']} must be {'required' if required else 'optional: true'}"
            read.setdefault(ref["name"], set()).add(ref["key"])
        assert set(read) == JOB_SECRETS[obj["metadata"]["name"]], f"{where}: reads {sorted(read)}"
        assert _mounted_secrets(spec) == set(read), where
        for secret, keys in read.items():
            assert keys == SECRET_KEYS[secret], f"{where}: all of {secret} ({sorted(SECRET_KEYS[secret])})"


@pytest.mark.parametrize("name", RENDERINGS)
def test_secret_table_follows_what_each_job_uses(name: str, tmp_path: Path) -> None:
    """JOB_SECRETS against the program's behaviour (secrets_used): with the rendering's ConfigMap
    and every feature on, each job has every Secret it would use; and it never has one it could not
    use even with everything on, NOTIFY_ON_AGGREGATE_ERRORS too."""
    objects = rendered(name)
    features_on = filled_in(objects) | FEATURES_ON
    everything_on = features_on | {"NOTIFY_ON_AGGREGATE_ERRORS": "true"}
    for job_name, spec in job_specs(objects):
        job = _container(spec)["args"][0]
        mounted = _mounted_secrets(spec)
        [settings, *_] = _pod_settings(spec, features_on, example_secret_data(), tmp_path / "absent.env")
        needs = secrets_used(job, settings)
        assert needs <= mounted, \
            f"{name}: {job_name} uses {sorted(needs - mounted)}: give it them, and update JOB_SECRETS"
        [settings, *_] = _pod_settings(spec, everything_on, example_secret_data(), tmp_path / "absent.env")
        may_use = secrets_used(job, settings)
        assert mounted <= may_use, f"{name}: {job_name} never uses {sorted(mounted - may_use)}: take it away"


@pytest.mark.parametrize("name", RENDERINGS)
def test_optional_secrets_may_be_missing(name: str, tmp_path: Path) -> None:
    """Only billing-database is needed to start: with the features off, every pod starts and
    validates with it alone. Without it, no pod starts. With Stripe on but no billing-stripe, the
    pods that call Stripe fail the right way: exit 3 (CONFIG) naming STRIPE_API_KEY."""
    objects = rendered(name)
    features_off = filled_in(objects) | FEATURES_OFF
    for job_name, spec in job_specs(objects):
        where = f"{name}: {job_name}"
        only_database = example_secret_data(without=set(SECRET_KEYS) - REQUIRED_SECRETS)
        assert _pod_settings(spec, features_off, only_database, tmp_path / "absent.env"), where
        with pytest.raises(PodWouldNotStart):
            _pod_settings(spec, features_off, example_secret_data(without=REQUIRED_SECRETS), tmp_path / "absent.env")
        if STRIPE in _mounted_secrets(spec):
            with pytest.raises(ConfigError, match="STRIPE_API_KEY") as failure:
                _pod_settings(spec, features_off | {"INVOICE_ENABLE_STRIPE": "true"},
                              example_secret_data(without={STRIPE}), tmp_path / "absent.env")
            assert failure.value.exit_code == ExitCode.CONFIG, where


def test_secret_examples_hold_placeholders_only() -> None:
    """One example Secret per need, with exactly its keys, placeholders only; every secret variable
    of the program is in exactly one Secret."""
    examples = secret_examples()
    assert set(examples) == set(SECRET_KEYS)
    secret_vars = {v.name for v in VARIABLES if v.secret}
    for variable in secret_vars:
        holders = [name for name, keys in SECRET_KEYS.items() if variable in keys]
        assert len(holders) == 1, f"{variable} must be in exactly one Secret, not {holders}"
    for name, keys in SECRET_KEYS.items():
        assert keys & secret_vars, f"{name} holds no secret variable"
        assert keys - secret_vars <= SECRET_COMPANIONS, name
        assert not keys & PER_POD_VARIABLES, name
    for name, secret in examples.items():
        assert secret["kind"] == "Secret" and secret["type"] == "Opaque", name
        assert "data" not in secret, f"{name}: stringData placeholders only"
        values = secret["stringData"]
        assert set(values) == SECRET_KEYS[name], name
        for key, value in values.items():
            assert key in VARIABLES_BY_NAME, key
            assert "CHANGE_ME" in value, f"{name}: {key}: use a CHANGE_ME placeholder"
            assert not re.search(r"[sr]k_(live|test)_(?!CHANGE_ME\b)", value), key
    text = SECRET_EXAMPLE.read_text(encoding="utf-8")
    assert not re.search(r"[sr]k_(live|test)_[A-Za-z0-9]{8,}", text.replace("CHANGE_ME", ""))


# --- schedules --------------------------------------------------------------------------------

@cache
def billing_schedule(output_format: str, overrides: tuple[tuple[str, str], ...] = ()) -> str:
    with tempfile.TemporaryDirectory() as cwd:  # no .env of the developer's
        result = subprocess.run([*BILLING, "schedule", "--format", output_format], cwd=cwd, check=False,
                                env=billing_subprocess_env(**dict(overrides)),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def k8s_schedules(overrides: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    schedules = yaml.safe_load(billing_schedule("k8s", overrides))
    assert set(schedules) == {"aggregate-hourly", "invoice-monthly", "legacy-run", "reconcile"}
    return schedules


@pytest.mark.parametrize("name", RENDERINGS)
def test_cronjob_schedules_match_billing_schedule(name: str) -> None:
    objects = rendered(name)
    defaults = k8s_schedules()
    assert defaults == {"aggregate-hourly": "0 * * * *", "invoice-monthly": "0 0 * * *",
                        "legacy-run": "0 0 1 * *", "reconcile": "0 6 * * *"}
    # The ConfigMap may set the six-field schedules: the CronJobs must follow them too.
    configured = k8s_schedules(tuple(sorted((k, v) for k, v in configmap_data(objects).items()
                                            if k.endswith("_SCHEDULE"))))
    for cronjob in by_kind(objects, "CronJob"):
        job = billing_job(cronjob)  # the sharded CronJob runs invoice-monthly
        where = f"{name}: {cronjob['metadata']['name']}"
        assert cronjob["spec"]["schedule"] == defaults[job], where
        assert cronjob["spec"]["schedule"] == configured[job], where


# --- crontab.example --------------------------------------------------------------------------

_FIELD = r"[0-9*][0-9*/,\-]*"
_ENTRY = re.compile(rf"^(?P<schedule>{_FIELD}(?:\s+{_FIELD}){{4}})\s+(?P<command>.+)$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")
_BILLING_CMD = re.compile(r"(?P<binary>\S*)(?<![\w.-])billing\s+(?P<job>[a-z][a-z-]*)")


def crontab_entries(text: str) -> tuple[list[dict], list[dict]]:
    """(active, commented-out) entries: schedule, command, billing binary and job."""
    active: list[dict] = []
    commented: list[dict] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        is_comment = stripped.startswith("#")
        body = stripped.lstrip("#").strip() if is_comment else stripped
        if not is_comment and _VARIABLE.match(body):
            continue  # CRON_TZ=UTC, PATH=..., BILLING_ENV_FILE=...
        match = _ENTRY.match(body)
        if match is None:
            assert is_comment, f"crontab.example: cannot parse {line!r}"
            continue
        command = _BILLING_CMD.search(match["command"])
        if command is None:
            assert is_comment, f"crontab.example: no billing command in {line!r}"
            continue
        entry = {"schedule": " ".join(match["schedule"].split()), "command": match["command"],
                 "binary": command["binary"], "job": command["job"], "line": line}
        (commented if is_comment else active).append(entry)
    return active, commented


def test_crontab_example_is_what_billing_schedule_prints() -> None:
    generated = billing_schedule("crontab")
    assert (ROOT / "crontab.example").read_bytes() == generated.encode("utf-8"), \
        "regenerate it: billing schedule --format crontab > crontab.example (with no *_SCHEDULE set)"


@pytest.mark.parametrize("overrides", [(), (("AGGREGATE_SCHEDULE", "0 5 * * * *"), ("RUN_SCHEDULE", "0 30 6 2 * *"))],
                         ids=["defaults", "configured"])
def test_billing_schedule_crontab_runs_each_job_once_with_flock_and_a_log(overrides) -> None:
    text = billing_schedule("crontab", overrides)
    expected = k8s_schedules(overrides)  # the same five-field forms as the CronJobs
    assert text.splitlines()[0] == "CRON_TZ=UTC"
    active, commented = crontab_entries(text)
    # invoice-monthly and legacy-run bill the same month: only one of them is active.
    assert sorted(e["job"] for e in active) == ["aggregate-hourly", "invoice-monthly", "reconcile"]
    for entry in active:
        assert entry["schedule"] == expected[entry["job"]], entry["line"]
        assert entry["command"].startswith(f"/usr/bin/flock -n /run/lock/billing-{entry['job']}.lock "), entry["line"]
        assert entry["binary"].startswith("/"), f"absolute path to billing: {entry['line']}"
        assert entry["command"].endswith(f" >> /var/log/billing/{entry['job']}.log 2>&1"), entry["line"]
    legacy = [e for e in commented if e["job"] == "legacy-run"]
    assert len(legacy) == 1 and legacy[0]["schedule"] == expected["legacy-run"]
    assert legacy[0]["command"].endswith(" >> /var/log/billing/legacy-run.log 2>&1")


def test_crontab_parser_sees_active_lines(tmp_path: Path) -> None:
    active, commented = crontab_entries(
        "CRON_TZ=UTC\n# 0 0 1 * *  /x/billing legacy-run\n"
        "0 * * * *  flock -n /run/lock/billing-aggregate-hourly.lock /x/billing aggregate-hourly\n")
    assert [e["job"] for e in active] == ["aggregate-hourly"]
    assert [e["job"] for e in commented] == ["legacy-run"]


# --- Dockerfile and .dockerignore ------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        else:
            assert stages, f"{instruction} before FROM"
        stages[-1].append(instruction)
    return stages


def test_dockerfile() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build"
    final = stages[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == str(UID), "the image's user is the pods' runAsUser"
    [entrypoint] = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["billing"]

    everything = " ".join(args for stage in stages for _, args in stage)
    assert "embedded" not in everything, "the image is built without the embedded extra"
    for keyword, args in final:
        if keyword == "RUN":
            assert not re.search(r"apt-get\s+install.*\b(build-essential|gcc|g\+\+|make|libpq-dev|python3-dev)\b",
                                 args), f"build tools in the final image: {args}"
    # The builder copies the lock and the package only, never the whole context.
    copies = [args for stage in stages[:-1] for keyword, args in stage if keyword == "COPY"]
    sources = {source for args in copies for source in args.split()[:-1] if not source.startswith("--")}
    assert sources <= {"requirements/runtime.txt", "pyproject.toml", "README.md", "billing_cli", "billing_cli/"}, \
        sources
    # Reproducible: the dependencies come from the hashed lock, the package adds nothing to them.
    installs = [args for stage in stages[:-1] for keyword, args in stage if keyword == "RUN" and "pip install" in args]
    assert installs == ["/opt/venv/bin/pip install --require-hashes -r requirements/runtime.txt",
                        "/opt/venv/bin/pip install --no-deps --no-build-isolation ."], installs


def test_dockerignore() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".git", ".venv", "tests", "bench", "docs", ".billing", ".env"):
        assert needed in patterns, needed
    assert {"**/__pycache__", "**/*.pyc"} <= patterns
    for kept in ("README.md", "pyproject.toml", "billing_cli"):
        assert kept not in patterns


def test_deploy_readme_covers_the_exit_codes() -> None:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    for code in ExitCode:
        assert f"`{code.name}`" in readme, code.name
    for phrase in ("kubectl apply -k deploy/k8s/overlays/production", "billing schedule --format k8s"):
        assert phrase in readme, phrase
    for secret in SECRET_KEYS:
        assert re.search(rf"kubectl (-n \S+ )?create secret generic {secret}\b", readme), secret
    assert "job/billing-db-upgrade" in readme, "the migration Job runs first"


# --- reproducible installs -------------------------------------------------------------------

def _pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version \\` line of a pip-compiled lock file."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^ ;\\]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(3)
    return pins


def test_the_lock_files_pin_every_dependency_with_hashes_within_pyproject_bounds() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    test = [Requirement(r) for r in project["optional-dependencies"]["test"] + project["optional-dependencies"]["embedded"]
            if not r.startswith("billing")]
    for lock, needed in (("runtime.txt", runtime), ("test.txt", runtime + test)):
        path = ROOT / "requirements" / lock
        pins = _pins(path)
        for requirement in [*needed, Requirement("setuptools>=68")]:  # setuptools builds the package
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{lock} does not pin {name}: run requirements/refresh"
            assert requirement.specifier.contains(pins[name], prereleases=True), (lock, name, pins[name])
        text = path.read_text(encoding="utf-8")
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
        assert all("--hash=sha256:" in block for block in blocks if "==" in block), f"{lock}: a pin without hashes"
    assert "billing" not in _pins(ROOT / "requirements" / "test.txt")  # the project itself is installed apart


def test_ci_runs_the_readme_test_command_verbatim_from_the_lock() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = re.findall(r"```sh\n(.*?)\n```", readme.split("## Quick start")[1].split("\n## ")[0], re.S)
    assert len(commands) == 2, "the quick start has exactly two set-up commands"
    test_command = commands[1]
    assert test_command.endswith(".venv/bin/python -m pytest") and "--require-hashes -r requirements/test.txt" in \
        test_command
    assert test_command in ci.splitlines()
