"""manifests/ and charts/, offline: every rendered object validates strictly, checkov, no secret literals.

kustomize and helm render for real (``make test`` installs pinned kubectl/helm binaries into
``.tools/``); the tests that need a binary skip, saying so, where it is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from sherlock.serving.schema import validate_manifest

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "sherlock"
OVERLAYS = ("base", "overlays/gpu-pool", "overlays/local")
RENDERED = OVERLAYS + ("chart",)
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS = MANIFESTS / "checkov-skips.txt"
# a mapping key whose value must never be a literal
SENSITIVE_KEY = re.compile(r"(password|passwd|secret_access_key|access_key_id|api_key|token|backend_store_uri|dsn)$",
                           re.IGNORECASE)
LITERAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credentials in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@$]+:[^/\s@$]+@"),
}


def tool(name: str) -> str:
    """The pinned binary in .tools/ (``make test``), else one on PATH, else skip."""
    pinned = ROOT / ".tools" / name / name
    found = str(pinned) if pinned.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (`make test` installs it into .tools/)")
    return found


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def render(overlay: str) -> list[dict]:
    """The objects of a kustomize overlay (``base`` or ``overlays/…``), or of the chart (``chart``)."""
    if overlay == "chart":
        return helm_template()
    return [doc for doc in yaml.safe_load_all(run(tool("kubectl"), "kustomize", str(MANIFESTS / overlay))) if doc]


def helm_template(*settings: str) -> list[dict]:
    sets = [argument for setting in settings for argument in ("--set", setting)]
    output = run(tool("helm"), "template", "sherlock", str(CHART), "--namespace", "sherlock", *sets)
    return [doc for doc in yaml.safe_load_all(output) if doc]


def secret_literals(text: str, documents: list | None = None) -> list[str]:
    """Where ``text`` (and its parsed ``documents``) holds a secret literal."""
    found = [f"{name}: {match.group(0)[:24]}…" for name, pattern in LITERAL_PATTERNS.items()
             for match in pattern.finditer(text)]

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
                found.append(f"{path}: a Secret with data")
            if isinstance(node.get("name"), str) and SENSITIVE_KEY.search(node["name"]) and node.get("value"):
                found.append(f"{path}: env {node['name']} has a literal value")
            for key, value in node.items():
                if SENSITIVE_KEY.search(str(key)) and isinstance(value, (str, int)) and not isinstance(value, bool) \
                        and str(value).strip():
                    found.append(f"{path}.{key}: literal value")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}[{index}]")

    walk(documents or [], "")
    return found


@pytest.mark.parametrize("overlay", RENDERED)
def test_every_rendered_object_validates_strictly(overlay):
    documents = render(overlay)
    kinds = {(d["apiVersion"], d["kind"]) for d in documents}
    assert ("serving.kserve.io/v1alpha1", "ServingRuntime") in kinds and ("apps/v1", "StatefulSet") in kinds
    for document in documents:
        validate_manifest(document)  # Kubernetes KUBERNETES_VERSION strict; KServe kinds by the generated schema


def test_validation_is_strict_about_what_it_renders():
    statefulset = next(d for d in render("base") if d["kind"] == "StatefulSet")
    statefulset["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(ValueError, match="'resource' was unexpected"):
        validate_manifest(statefulset)


def test_overlays_do_what_they_say():
    def runtime(documents):
        return next(d for d in documents if d["kind"] == "ServingRuntime")["spec"]

    base, gpu, local = (render(overlay) for overlay in OVERLAYS)
    assert "nodeSelector" not in runtime(base) and "nvidia.com/gpu" not in runtime(base)["containers"][0]["resources"][
        "limits"]
    assert runtime(gpu)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert runtime(gpu)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert runtime(gpu)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert runtime(local)["containers"][0]["image"].endswith("-cpu")
    sizes = {d["metadata"]["name"]: d["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
             for d in local if d["kind"] == "StatefulSet"}
    assert sizes == {"sherlock-minio": "10Gi", "sherlock-postgres": "1Gi"}
    assert all(d["metadata"].get("namespace") == "sherlock" for d in base if d["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", ("overlays/gpu-pool", "chart"))
def test_workloads_are_hardened_and_pinned(overlay):
    for document in render(overlay):
        if document["kind"] not in ("Deployment", "StatefulSet", "Job", "ServingRuntime"):
            continue
        spec = document["spec"] if document["kind"] == "ServingRuntime" else document["spec"]["template"]["spec"]
        for container in spec["containers"]:
            name = f"{document['kind']}/{document['metadata']['name']}"
            context = container["securityContext"] | spec.get("securityContext", {})
            assert context["runAsNonRoot"] and not context["allowPrivilegeEscalation"], name
            assert context["readOnlyRootFilesystem"] and context["capabilities"]["drop"] == ["ALL"], name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert re.search(r":[\w.-]*\d[\w.-]*$", container["image"]) and ":latest" not in container["image"], name


@pytest.mark.parametrize("overlay", ("base", "chart"))
def test_pipeline_role_is_namespaced_and_narrow(overlay):
    documents = render(overlay)
    assert not [d for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = [d for d in documents if d["kind"] == "Role"]
    rules = {(rule["apiGroups"][0], rule["resources"][0]): rule for rule in role["rules"]}
    assert set(rules[("serving.kserve.io", "inferenceservices")]["verbs"]) >= {"get", "create", "patch"}
    assert rules[("", "secrets")]["resourceNames"] == ["sherlock-s3"] and rules[("", "secrets")]["verbs"] == ["get"]


def test_checkov_has_no_findings_beyond_the_listed_ones(tmp_path):
    if not CHECKOV.exists():
        pytest.fail("checkov is not installed: `make test` installs it into .venv-checkov")
    skips = {}
    for line in SKIPS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            check, resource, reason = line.split(maxsplit=2)
            assert len(reason) > 20, f"skip {check} needs a reason"
            skips[(check, resource)] = reason
    used = set()
    for overlay in RENDERED:
        rendered = tmp_path / f"{overlay.replace('/', '-')}.yaml"
        rendered.write_text(yaml.safe_dump_all(render(overlay)))
        result = subprocess.run([str(CHECKOV), "--framework", "kubernetes", "-f", str(rendered), "-o", "json",
                                 "--quiet", "--skip-download"], capture_output=True, text=True)
        report = json.loads(result.stdout)
        assert report["summary"]["passed"] > 100, report["summary"]
        for failed in report["results"]["failed_checks"]:
            key = next((k for k in ((failed["check_id"], failed["resource"]), (failed["check_id"], "*")) if k in skips),
                       None)
            assert key is not None, f"{overlay}: {failed['check_id']} {failed['check_name']} on {failed['resource']}"
            used.add(key)
    assert used == set(skips), f"skips no longer needed: {set(skips) - used}"


def scanned_files() -> list[Path]:
    files = [*MANIFESTS.rglob("*.yaml"), *(ROOT / "charts").rglob("*.yaml"), *(ROOT / "pipelines").glob("*.yaml"),
             *(ROOT / "configs").rglob("*.yaml")]
    return sorted(f for f in files if f.is_file())


def test_no_secret_literal_in_manifests_chart_or_pipelines():
    assert len(scanned_files()) > 10
    for path in scanned_files():
        text = path.read_text()
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError:  # a Helm template: text patterns only
            documents = []
        assert secret_literals(text, documents) == [], path
    for overlay in RENDERED:
        documents = render(overlay)
        assert secret_literals(yaml.safe_dump_all(documents), documents) == [], overlay


@pytest.mark.parametrize("planted", [
    {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"}, "stringData": {"k": "v"}},
    {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]},
    {"env": [{"name": "MLFLOW_BACKEND_STORE_URI", "value": "sqlite:///x.db"}]},
    {"minio": {"rootPassword": "hunter2"}},
    {"args": ["--uri", "postgresql://mlflow:hunter2@db:5432/mlflow"]},
    {"note": "AKIAABCDEFGHIJKLMNOP"},
])
def test_the_scan_finds_planted_literals(planted):
    assert secret_literals(yaml.safe_dump(planted), [planted])


def test_chart_installs_what_the_gpu_pool_overlay_does():
    def objects(documents):
        return {(d["kind"], d["metadata"]["name"]): d for d in documents if d["kind"] != "Namespace"}

    def container(document):
        return document["spec"]["template"]["spec"]["containers"][0]

    chart, kustomize = objects(render("chart")), objects(render("overlays/gpu-pool"))
    assert chart.keys() == kustomize.keys()
    for key in (("ServingRuntime", "sherlock"), ("NetworkPolicy", "sherlock-minio"),
                ("NetworkPolicy", "sherlock-mlflow")):
        assert chart[key]["spec"] == kustomize[key]["spec"], key
    assert chart[("Role", "sherlock-pipeline")]["rules"] == kustomize[("Role", "sherlock-pipeline")]["rules"]
    for key in (("StatefulSet", "sherlock-minio"), ("StatefulSet", "sherlock-postgres"),
                ("Deployment", "sherlock-mlflow")):
        chart_env, kustomize_env = ({e["name"]: e.get("value") for e in container(side[key])["env"]}
                                    for side in (chart, kustomize))
        hosts = "MLFLOW_SERVER_ALLOWED_HOSTS"  # the same names, in another order
        chart_hosts, kustomize_hosts = (chart_env.pop(hosts, None) or ""), (kustomize_env.pop(hosts, None) or "")
        assert set(chart_hosts.split(",")) == set(kustomize_hosts.split(","))
        assert chart_env == kustomize_env, key
        for field in ("image", "command", "args", "ports", "readinessProbe", "livenessProbe", "securityContext"):
            assert container(chart[key]).get(field) == container(kustomize[key]).get(field), (key, field)


def test_network_policies_admit_the_pipeline_pods():
    from pipelines.common import POD_LABELS

    for overlay in ("base", "chart"):
        admitted = {label for d in render(overlay) if d["kind"] == "NetworkPolicy"
                    for rule in d["spec"]["ingress"] for peer in rule["from"]
                    for label in peer.get("podSelector", {}).get("matchLabels", {})}
        assert set(POD_LABELS) <= admitted, overlay


def test_chart_values_switch_components():
    cpu = helm_template("servingRuntime.gpu.count=0", "servingRuntime.variant=cpu", "postgres.enabled=false")
    runtime = next(d for d in cpu if d["kind"] == "ServingRuntime")["spec"]
    assert "nodeSelector" not in runtime and "nvidia.com/gpu" not in runtime["containers"][0]["resources"]["limits"]
    assert runtime["containers"][0]["image"].endswith("-cpu")
    assert not [d for d in cpu if "postgres" in d["metadata"]["name"]]
    for document in cpu:
        validate_manifest(document)


def test_chart_lints_and_enforces_its_values_schema():
    run(tool("helm"), "lint", "--strict", str(CHART))
    result = subprocess.run([tool("helm"), "template", "sherlock", str(CHART), "--set", "servingRuntime.gpu.count=one"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "count" in result.stderr


def test_values_validate_against_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert list(validator.iter_errors(values)) == []
    for path, bad in ((("minio", "image"), "quay.io/minio/minio:latest"), (("servingRuntime", "variant"), "rocm"),
                      (("mlflow", "resources", "limits", "memory"), "lots"), (("secrets", "s3"), "Not_A_Name"),
                      (("rbac", "clusterWide"), True)):
        broken = json.loads(json.dumps(values))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = bad
        assert list(validator.iter_errors(broken)), path


def admission(isvc: dict) -> list[str]:
    """The messages of the validations of manifests/cluster-policy that refuse ``isvc``, evaluated by a
    real CEL implementation (variables first, in order, as the API server does). There is no API
    server here: this checks the policy's logic, not its registration."""
    import cel

    (policy,) = [d for d in render("cluster-policy") if d["kind"] == "ValidatingAdmissionPolicy"]
    context = {"object": isvc, "variables": {}}
    for variable in policy["spec"]["variables"]:
        context["variables"][variable["name"]] = cel.evaluate(variable["expression"], context)
    return [check["message"] for check in policy["spec"]["validations"]
            if cel.evaluate(check["expression"], context) is not True]


def test_cluster_policy_validates_strictly_and_binds_the_namespace():
    documents = render("cluster-policy")
    assert {d["kind"] for d in documents} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for document in documents:
        assert "namespace" not in document["metadata"]  # cluster-scoped
        validate_manifest(document)
    (binding,) = [d for d in documents if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "sherlock"}


def test_admission_policy_admits_what_deploy_writes_and_refuses_tampered_services():
    import copy
    from types import SimpleNamespace

    from sherlock.config import load_config
    from sherlock.serving.deploy import DeployConfig, inference_service, to_manifest

    version = SimpleNamespace(name="sherlock", version="3")
    deployed = {name: to_manifest(inference_service(load_config(DeployConfig, overrides={
        "model": "models:/sherlock@champion", "output": "/tmp/unused", "name": name}), "s3://sherlock/r/ckpt", version))
        for name in ("sherlock", "sherlock-scl", "sherlock-stic")}
    for name, isvc in deployed.items():
        assert admission(isvc) == [], name

    def tampered(change) -> list[str]:
        isvc = copy.deepcopy(deployed["sherlock"])
        change(isvc)
        return admission(isvc)

    predictor = lambda isvc: isvc["spec"]["predictor"]  # noqa: E731
    container = lambda isvc: predictor(isvc)["containers"][0]  # noqa: E731
    cases = {
        "one of the names": lambda i: i["metadata"].update(name="mine"),
        "only a predictor": lambda i: i["spec"].update(transformer={"containers": [{"image": "evil:1"}]}),
        "project image": lambda i: container(i).update(image="docker.io/attacker/miner:1"),
        "`sherlock serve`": lambda i: container(i).update(command=["sh", "-c", "cat /var/run/secrets/*"]),
        "nothing from a Secret": lambda i: container(i).update(envFrom=[{"secretRef": {"name": "sherlock-minio"}}]),
        "serving ServiceAccount": lambda i: predictor(i).update(serviceAccountName="default-editor"),
        "only emptyDir": lambda i: predictor(i)["volumes"].append({"name": "s",
                                                                   "secret": {"secretName": "sherlock-minio"}}),
    }
    cases["project image (model)"] = lambda i: predictor(i).update(model={"modelFormat": {"name": "sherlock"},
                                                                          "image": "docker.io/attacker/x:1"})
    cases["nothing from a Secret (env)"] = lambda i: container(i)["env"].append(
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "sherlock-minio", "key": "MINIO_ROOT_PASSWORD"}}})
    for expected, change in cases.items():
        refused = tampered(change)
        assert len(refused) == 1 and expected.split(" (")[0] in refused[0], (expected, refused)
    assert tampered(lambda i: container(i).update(image="ghcr.io/sherlock-vlm/sherlock@sha256:" + "0" * 64)) == []


def test_the_trainer_runtime_validates_and_the_chart_renders_the_same():
    """manifests/trainer (--trainer trainjob) and the chart with trainer.enabled: the ClusterTrainingRuntime the
    training steps' TrainJobs name, hardened like the other workloads, and a read right to that one runtime."""
    from components.trainjob import CONTAINER, RUNTIME

    kustomized = {d["kind"]: d for d in render("trainer")}
    charted = {d["kind"]: d for d in helm_template("trainer.enabled=true") if d["kind"].startswith("Cluster")}
    assert set(kustomized) == set(charted) == {"ClusterTrainingRuntime", "ClusterRole", "ClusterRoleBinding"}
    for document in [*kustomized.values(), *charted.values()]:
        validate_manifest(document)
    runtime, chart_runtime = kustomized["ClusterTrainingRuntime"], charted["ClusterTrainingRuntime"]
    assert runtime["metadata"]["name"] == chart_runtime["metadata"]["name"] == RUNTIME
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    assert runtime["spec"] == chart_runtime["spec"]
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == CONTAINER and container["image"].endswith("-cuda")
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert not pod["automountServiceAccountToken"]
    for rbac in (kustomized, charted):
        assert rbac["ClusterRole"]["rules"] == [{"apiGroups": ["trainer.kubeflow.org"],
                                                 "resources": ["clustertrainingruntimes"],
                                                 "resourceNames": [RUNTIME], "verbs": ["get"]}]
        assert rbac["ClusterRoleBinding"]["subjects"][0]["name"] == "sherlock-pipeline"
    assert not [d for d in helm_template() if d["kind"] == "ClusterTrainingRuntime"]  # off by default
