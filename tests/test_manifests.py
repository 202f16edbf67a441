"""manifests/ and charts/, offline: every rendered object validates strictly, checkov, no secret literals.

kustomize and helm render for real (``make test`` installs pinned kubectl/helm binaries into
``.tools/``); the tests that need a binary skip, saying so, where it is missing.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from sherlock.serving.schema import validate_manifest
from tests.admission import admission

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "sherlock"
OVERLAYS = ("base", "overlays/gpu-pool", "overlays/local", "overlays/s3-tls")
RENDERED = OVERLAYS + ("chart",)
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIPS = MANIFESTS / "checkov-skips.txt"
REGISTERED = "s3://sherlock-models/sherlock/0123456789abcdef"  # a registered checkpoint's copy
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


def test_the_runtime_probes_time_out_as_the_deployed_predictor_does():
    """The ServingRuntime's probes wait, repeat and give up as the InferenceService ``sherlock deploy`` writes
    (its comment says "same probes"; their paths differ: v2 readiness for the runtime, v1 for the predictor)."""
    from types import SimpleNamespace

    from sherlock.serving.deploy import DeployConfig, inference_service, to_manifest

    (deployed,) = to_manifest(inference_service(DeployConfig(model="models:/m@champion", output="out"), "s3://b/k",
                                                SimpleNamespace(name="m", version="1")))["spec"]["predictor"][
                                                    "containers"]
    (runtime,) = next(d for d in render("base") if d["kind"] == "ServingRuntime")["spec"]["containers"]
    timing = ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")
    for probe in ("readinessProbe", "livenessProbe"):
        assert ({k: runtime[probe].get(k) for k in timing} == {k: deployed[probe].get(k) for k in timing}), probe
    assert runtime["livenessProbe"]["httpGet"]["path"] == deployed["livenessProbe"]["httpGet"]["path"] == "/"


def test_overlays_do_what_they_say():
    def runtime(documents):
        return next(d for d in documents if d["kind"] == "ServingRuntime")["spec"]

    base, gpu, local = (render(overlay) for overlay in ("base", "overlays/gpu-pool", "overlays/local"))
    assert "nodeSelector" not in runtime(base) and "nvidia.com/gpu" not in runtime(base)["containers"][0]["resources"][
        "limits"]
    assert runtime(gpu)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert runtime(gpu)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert runtime(gpu)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert runtime(local)["containers"][0]["image"].endswith("-cpu")
    sizes = {d["metadata"]["name"]: d["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
             for d in local if d["kind"] == "StatefulSet"}
    assert sizes == {"sherlock-seaweedfs": "10Gi", "sherlock-postgres": "1Gi"}
    assert all(d["metadata"].get("namespace") == "sherlock" for d in base if d["kind"] != "Namespace")


def test_s3_tls_overlay_and_chart_serve_https_and_their_clients_trust_the_ca():
    """SeaweedFS's S3 gateway is given the TLS Secret's pair (tests/test_s3_identities.py starts the real
    gateway with these flags and reaches it over HTTPS only) and probed over HTTPS; MLflow and the bucket
    Job trust the CA ConfigMap (AWS_CA_BUNDLE). The kustomize overlay and the chart's values agree."""
    def workloads(documents):
        return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in documents
                if d["kind"] in ("StatefulSet", "Deployment", "Job")
                and d["metadata"]["name"] in ("sherlock-seaweedfs", "sherlock-mlflow", "sherlock-buckets")}

    overlay = workloads(render("overlays/s3-tls"))
    chart = workloads(helm_template("seaweedfs.tls.secretName=sherlock-s3-tls", "s3CABundleConfigMap=sherlock-s3-ca"))
    for side in (overlay, chart):
        weed = side["sherlock-seaweedfs"]["containers"][0]
        assert weed["command"][-2:] == ["-s3.cert.file=/tls/tls.crt", "-s3.key.file=/tls/tls.key"]
        assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in weed["volumeMounts"]
        assert {"name": "tls", "secret": {"secretName": "sherlock-s3-tls"}} in side["sherlock-seaweedfs"]["volumes"]
        assert weed["readinessProbe"]["httpGet"]["scheme"] == weed["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
        for client in ("sherlock-mlflow", "sherlock-buckets"):
            container = side[client]["containers"][0]
            assert {"name": "AWS_CA_BUNDLE", "value": "/etc/sherlock-s3-ca/cabundle.crt"} in container["env"]
            assert {"name": "s3-ca", "mountPath": "/etc/sherlock-s3-ca", "readOnly": True} in container["volumeMounts"]
            assert {"name": "s3-ca", "configMap": {"name": "sherlock-s3-ca", "items": [
                {"key": "cabundle.crt", "path": "cabundle.crt"}]}} in side[client]["volumes"]
    plain = workloads(render("base"))
    assert "scheme" not in plain["sherlock-seaweedfs"]["containers"][0]["readinessProbe"]["httpGet"]
    assert not [e for e in plain["sherlock-mlflow"]["containers"][0]["env"] if e["name"] == "AWS_CA_BUNDLE"]


@pytest.mark.parametrize("overlay", ("overlays/gpu-pool", "chart"))
def test_workloads_are_hardened_and_pinned(overlay):
    for document in render(overlay):
        if document["kind"] not in ("Deployment", "StatefulSet", "Job", "ServingRuntime"):
            continue
        spec = document["spec"] if document["kind"] == "ServingRuntime" else document["spec"]["template"]["spec"]
        for container in spec["containers"] + spec.get("initContainers", []):
            name = f"{document['kind']}/{document['metadata']['name']}/{container['name']}"
            context = container["securityContext"] | spec.get("securityContext", {})
            assert context["runAsNonRoot"] and not context["allowPrivilegeEscalation"], name
            assert context["readOnlyRootFilesystem"] and context["capabilities"]["drop"] == ["ALL"], name
            assert {"requests", "limits"} <= set(container["resources"]), name
            assert re.search(r":[\w.-]*\d[\w.-]*$", container["image"]) and ":latest" not in container["image"], name


@pytest.mark.parametrize("overlay", ("base", "chart"))
def test_pipeline_role_is_namespaced_and_narrow(overlay):
    documents = render(overlay)
    assert not [d for d in documents if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Role"}
    assert set(roles) == {"sherlock-pipeline", "sherlock-deployer"}
    rules = {(rule["apiGroups"][0], rule["resources"][0]): rule for rule in roles["sherlock-pipeline"]["rules"]}
    assert ("serving.kserve.io", "inferenceservices") not in rules  # every step runs as it: no deploying
    assert rules[("", "secrets")]["resourceNames"] == ["sherlock-s3"] and rules[("", "secrets")]["verbs"] == ["get"]


@pytest.mark.parametrize("overlay", ("base", "chart"))
def test_only_the_deployer_writes_inference_services_and_only_the_projects(overlay):
    """The deployer may create InferenceServices (RBAC cannot limit a create by name; the admission
    policy pins the names) and read and patch only the names the admission policy admits."""
    documents = render(overlay)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    rules = objects[("Role", "sherlock-deployer")]["rules"]
    assert [rule["verbs"] for rule in rules] == [["create"], ["get", "patch"]]
    assert all(rule["apiGroups"] == ["serving.kserve.io"] and rule["resources"] == ["inferenceservices"]
               for rule in rules)
    assert "resourceNames" not in rules[0]
    policy = next(yaml.safe_load_all((MANIFESTS / "cluster-policy" / "inferenceservice-policy.yaml").read_text()))
    (names,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "names"]
    assert rules[1]["resourceNames"] == yaml.safe_load(names)
    assert objects[("ServiceAccount", "sherlock-deployer")]["automountServiceAccountToken"] is False
    token = objects[("Secret", "sherlock-deployer-token")]
    assert token["type"] == "kubernetes.io/service-account-token" and "data" not in token
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "sherlock-deployer"}
    binding = objects[("RoleBinding", "sherlock-deployer")]
    assert binding["roleRef"]["name"] == "sherlock-deployer"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "sherlock-deployer", "namespace": "sherlock"}]
    bound = {d["roleRef"]["name"]: d["subjects"] for d in documents if d["kind"] == "RoleBinding"}
    assert bound["sherlock-pipeline"][0]["name"] == "sherlock-pipeline"


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
    for key in (("ServingRuntime", "sherlock"), ("NetworkPolicy", "sherlock-seaweedfs"),
                ("NetworkPolicy", "sherlock-mlflow")):
        assert chart[key]["spec"] == kustomize[key]["spec"], key
    for role in ("sherlock-pipeline", "sherlock-deployer"):
        assert chart[("Role", role)]["rules"] == kustomize[("Role", role)]["rules"], role
    assert (json.loads(chart[("ConfigMap", "sherlock-s3-identities")]["data"]["identities.json"])
            == json.loads(kustomize[("ConfigMap", "sherlock-s3-identities")]["data"]["identities.json"]))
    assert (chart[("StatefulSet", "sherlock-seaweedfs")]["spec"]["template"]["spec"]["volumes"]
            == kustomize[("StatefulSet", "sherlock-seaweedfs")]["spec"]["template"]["spec"]["volumes"])
    for key in (("StatefulSet", "sherlock-seaweedfs"), ("StatefulSet", "sherlock-postgres"),
                ("Deployment", "sherlock-mlflow")):
        chart_env, kustomize_env = ({e["name"]: e.get("value") for e in container(side[key])["env"]}
                                    for side in (chart, kustomize))
        hosts = "MLFLOW_SERVER_ALLOWED_HOSTS"  # the same names, in another order
        chart_hosts, kustomize_hosts = (chart_env.pop(hosts, None) or ""), (kustomize_env.pop(hosts, None) or "")
        assert set(chart_hosts.split(",")) == set(kustomize_hosts.split(","))
        assert chart_env == kustomize_env, key
        for field in ("image", "command", "args", "ports", "readinessProbe", "livenessProbe", "securityContext"):
            assert container(chart[key]).get(field) == container(kustomize[key]).get(field), (key, field)


NAMESPACES = {"sherlock": {"sherlock.dev/client": "true"}, "kube-system": {}, "istio-system": {}, "kubeflow": {},
              "labelled": {"sherlock.dev/client": "true"}, "elsewhere": {}}


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions); ``{}`` selects everything."""
    operators = {"In": lambda key, values: labels.get(key) in values,
                 "NotIn": lambda key, values: labels.get(key) not in values,
                 "Exists": lambda key, _: key in labels, "DoesNotExist": lambda key, _: key not in labels}
    return (all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())
            and all(operators[e["operator"]](e["key"], e.get("values", []))
                    for e in selector.get("matchExpressions", [])))


def allows(policies: list[dict], pod: tuple, peer: tuple, port: int, protocol: str, direction: str) -> bool:
    """Whether the NetworkPolicies of ``pod``'s namespace let ``pod`` receive from (``Ingress``) or send to
    (``Egress``) ``peer`` on ``port``: pods no policy selects for that direction are open; peers by
    podSelector (the policy's namespace), namespaceSelector (with Kubernetes' ``kubernetes.io/metadata.name``
    label), both, or ipBlock (a peer ``("ip", address)`` outside the cluster's pods)."""
    namespace, labels = pod
    selecting = [p for p in policies if p["metadata"]["namespace"] == namespace
                 and direction in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], labels)]
    if not selecting:
        return True
    peer_namespace, peer_labels = peer

    def admits(entry: dict) -> bool:
        if peer_namespace == "ip" or "ipBlock" in entry:
            return (peer_namespace == "ip" and "ipBlock" in entry
                    and ipaddress.ip_address(peer_labels) in ipaddress.ip_network(entry["ipBlock"]["cidr"])
                    and not any(ipaddress.ip_address(peer_labels) in ipaddress.ip_network(cidr)
                                for cidr in entry["ipBlock"].get("except", [])))
        namespace_labels = NAMESPACES[peer_namespace] | {"kubernetes.io/metadata.name": peer_namespace}
        in_namespace = (selects(entry["namespaceSelector"], namespace_labels) if "namespaceSelector" in entry
                        else peer_namespace == namespace)
        return in_namespace and selects(entry.get("podSelector", {}), peer_labels)

    rules = [rule for p in selecting for rule in p["spec"].get(direction.lower(), [])]
    return any((not rule.get("from" if direction == "Ingress" else "to")
                or any(admits(e) for e in rule["from" if direction == "Ingress" else "to"]))
               and (not rule.get("ports") or any(p["port"] == port and p.get("protocol", "TCP") == protocol
                                                 for p in rule["ports"]))
               for rule in rules)


def can_connect(policies: list[dict], source: tuple, target: tuple, port: int, protocol: str = "TCP") -> bool:
    return (allows(policies, source, target, port, protocol, "Egress")
            and allows(policies, target, source, port, protocol, "Ingress"))


def app(name: str) -> tuple:
    """A platform pod, labelled as its workload's template labels it (see :func:`rendered_pods`)."""
    return "sherlock", {"app.kubernetes.io/name": name}


def rendered_pods(documents: list[dict]) -> dict[str, dict]:
    """Pod labels of the rendered workloads, by ``app.kubernetes.io/name``."""
    return {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: d["spec"]["template"]["metadata"][
        "labels"] for d in documents if d["kind"] in ("Deployment", "StatefulSet", "Job")}


CLIENT = {"sherlock.dev/s3-client": "true", "sherlock.dev/mlflow-client": "true"}
def misjudged(documents: list[dict], connections: list[tuple]) -> list[tuple]:
    """The ``(source, target, port, protocol, allowed)`` connections whose verdict under the rendered
    NetworkPolicies is not ``allowed``; a platform pod (:func:`app`) carries its rendered labels."""
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    pods = rendered_pods(documents)

    def labelled(pod: tuple) -> tuple:
        namespace, labels = pod
        return namespace, pods.get(labels.get("app.kubernetes.io/name"), labels) if namespace == "sherlock" else labels

    return [connection for connection in connections if can_connect(
        policies, labelled(connection[0]), labelled(connection[1]), connection[2], connection[3]) is not connection[4]]


STEP = ("sherlock", CLIENT | {"sherlock.dev/pipeline-step": "true"})
TRAINJOB_POD = ("sherlock", CLIENT | {"sherlock.dev/trainjob": "true"})
PREDICTOR = ("sherlock", {"serving.kserve.io/inferenceservice": "sherlock"})
STRANGER = ("sherlock", {})
DNS = ("kube-system", {"k8s-app": "kube-dns"})
GATEWAY = ("istio-system", {"app": "istio-ingressgateway"})
OUTSIDE = ("elsewhere", {})
# (source, target, port, protocol, allowed)
CONNECTIONS = [
    (STEP, app("mlflow"), 5000, "TCP", True), (STEP, app("seaweedfs"), 8333, "TCP", True),
    (STEP, app("postgres"), 5432, "TCP", False), (STEP, OUTSIDE, 443, "TCP", True),
    (STRANGER, app("mlflow"), 5000, "TCP", False), (STRANGER, app("seaweedfs"), 8333, "TCP", False),
    (STRANGER, STEP, 8080, "TCP", False), (OUTSIDE, STEP, 8080, "TCP", False),
    (("labelled", STEP[1]), app("seaweedfs"), 8333, "TCP", True),
    (("elsewhere", STEP[1]), app("seaweedfs"), 8333, "TCP", False),
    (app("mlflow"), app("postgres"), 5432, "TCP", True), (app("mlflow"), app("seaweedfs"), 8333, "TCP", True),
    (app("mlflow"), DNS, 53, "UDP", True), (app("mlflow"), OUTSIDE, 443, "TCP", False),
    (app("mlflow"), app("seaweedfs"), 8888, "TCP", False),
    (app("seaweedfs"), OUTSIDE, 443, "TCP", False), (app("seaweedfs"), DNS, 53, "UDP", False),
    (app("postgres"), app("mlflow"), 5000, "TCP", False), (app("postgres"), OUTSIDE, 443, "TCP", False),
    (app("buckets"), app("seaweedfs"), 8333, "TCP", True), (app("buckets"), app("mlflow"), 5000, "TCP", False),
    (app("mlflow-access"), app("mlflow"), 5000, "TCP", True),
    (app("mlflow-access"), app("seaweedfs"), 8333, "TCP", False),
    (GATEWAY, PREDICTOR, 8080, "TCP", True), (GATEWAY, PREDICTOR, 9000, "TCP", False),
    (PREDICTOR, app("seaweedfs"), 8333, "TCP", True),
    (TRAINJOB_POD, TRAINJOB_POD, 29400, "TCP", True), (STEP, TRAINJOB_POD, 29400, "TCP", False),
    (TRAINJOB_POD, app("mlflow"), 5000, "TCP", True),
]


@pytest.mark.parametrize("overlay", ("base", "chart"))
def test_network_policies_deny_by_default_and_admit_exactly_who_needs_it(overlay):
    """Evaluated with NetworkPolicy semantics (kube-apiserver and a CNI cannot run here): default-deny
    ingress for the namespace, egress of the platform's own pods limited to DNS and their services."""
    from pipelines.common import POD_LABELS, STEP_LABEL, TRAINJOB_LABEL

    documents = render(overlay)
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert set(rendered_pods(documents)) == {"mlflow", "seaweedfs", "postgres", "buckets", "mlflow-access"}
    assert set(STEP[1]) == {*POD_LABELS, STEP_LABEL} and TRAINJOB_LABEL in TRAINJOB_POD[1]
    assert not misjudged(documents, CONNECTIONS)
    without_default_deny = [p for p in policies if p["metadata"]["name"] != "sherlock-default-deny"]
    assert can_connect(without_default_deny, STRANGER, STEP, 8080)  # the evaluator can tell the difference


KFP_API = ("kubeflow", {"app": "ml-pipeline"})
API_SERVER, INTERNET = ("ip", "10.0.0.1"), ("ip", "203.0.113.7")
ISTIOD = ("istio-system", {"app": "istiod"})
# (source, target, port, protocol, allowed) with networkPolicies.workloadEgress on
WORKLOAD_EGRESS = [
    (STEP, DNS, 53, "UDP", True), (STEP, app("mlflow"), 5000, "TCP", True), (STEP, app("seaweedfs"), 8333, "TCP", True),
    (STEP, KFP_API, 8887, "TCP", True), (STEP, API_SERVER, 443, "TCP", True), (STEP, API_SERVER, 22, "TCP", False),
    (STEP, INTERNET, 443, "TCP", False), (STEP, OUTSIDE, 443, "TCP", False), (STEP, TRAINJOB_POD, 29400, "TCP", False),
    (TRAINJOB_POD, TRAINJOB_POD, 29400, "TCP", True), (TRAINJOB_POD, app("seaweedfs"), 8333, "TCP", True),
    (TRAINJOB_POD, app("mlflow"), 5000, "TCP", True), (TRAINJOB_POD, API_SERVER, 443, "TCP", False),
    (TRAINJOB_POD, KFP_API, 8887, "TCP", False), (TRAINJOB_POD, INTERNET, 443, "TCP", False),
    (PREDICTOR, app("seaweedfs"), 8333, "TCP", True), (PREDICTOR, DNS, 53, "UDP", True),
    (PREDICTOR, ISTIOD, 15012, "TCP", True), (PREDICTOR, app("mlflow"), 5000, "TCP", False),
    (PREDICTOR, API_SERVER, 443, "TCP", False), (PREDICTOR, INTERNET, 443, "TCP", False),
]


def test_workload_egress_limits_steps_trainjobs_and_predictors_to_what_they_call():
    """``networkPolicies.workloadEgress`` (off by default: the KFP namespace and the API server's address
    are the installation's) confines the pods the platform starts, evaluated as above; off, their egress
    stays open."""
    documents = helm_template("networkPolicies.workloadEgress.enabled=true",
                              "networkPolicies.workloadEgress.apiServerCIDRs={10.0.0.1/32}",
                              "networkPolicies.workloadEgress.meshNamespace=istio-system")
    for document in documents:
        validate_manifest(document)
    assert not misjudged(documents, WORKLOAD_EGRESS)
    default = [d for d in helm_template() if d["kind"] == "NetworkPolicy"]
    assert all(can_connect(default, source, target, port) for source, target, port in (
        (STEP, INTERNET, 443), (TRAINJOB_POD, API_SERVER, 443), (PREDICTOR, INTERNET, 443)))


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
    for path, bad in ((("seaweedfs", "image"), "docker.io/chrislusf/seaweedfs:latest"),
                      (("servingRuntime", "variant"), "rocm"),
                      (("mlflow", "resources", "limits", "memory"), "lots"), (("secrets", "s3"), "Not_A_Name"),
                      (("rbac", "clusterWide"), True)):
        broken = json.loads(json.dumps(values))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = bad
        assert list(validator.iter_errors(broken)), path


def test_cluster_policy_validates_strictly_and_binds_the_namespace():
    documents = render("cluster-policy")
    assert {d["kind"] for d in documents} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for document in documents:
        assert "namespace" not in document["metadata"]  # cluster-scoped
        validate_manifest(document)
    bindings = {d["spec"]["policyName"]: d for d in documents if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    policies = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ValidatingAdmissionPolicy"}
    assert set(bindings) == set(policies) == {"sherlock-inferenceservices", "sherlock-trainjobs"}
    for binding in bindings.values():
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
        "model": "models:/sherlock@champion", "output": "/tmp/unused", "name": name}), REGISTERED, version))
        for name in ("sherlock", "sherlock-scl", "sherlock-stic")}
    for name, isvc in deployed.items():
        assert admission("sherlock-inferenceservices", isvc) == [], name

    def tampered(change) -> list[str]:
        isvc = copy.deepcopy(deployed["sherlock"])
        change(isvc)
        return admission("sherlock-inferenceservices", isvc)

    predictor = lambda isvc: isvc["spec"]["predictor"]  # noqa: E731
    container = lambda isvc: predictor(isvc)["containers"][0]  # noqa: E731
    cases = {
        "one of the names": lambda i: i["metadata"].update(name="mine"),
        "only a predictor": lambda i: i["spec"].update(transformer={"containers": [{"image": "evil:1"}]}),
        "project image": lambda i: container(i).update(image="docker.io/attacker/miner:1"),
        "`sherlock serve`": lambda i: container(i).update(command=["sh", "-c", "cat /var/run/secrets/*"]),
        "nothing from a Secret": lambda i: container(i).update(envFrom=[{"secretRef": {"name": "sherlock-s3-admin"}}]),
        "serving ServiceAccount": lambda i: predictor(i).update(serviceAccountName="default-editor"),
        "only emptyDir": lambda i: predictor(i)["volumes"].append({"name": "s",
                                                                   "secret": {"secretName": "sherlock-s3-admin"}}),
    }
    fields = "the predictor has only the fields"
    cases[f"{fields} (model)"] = lambda i: predictor(i).update(model={"modelFormat": {"name": "sherlock"},
                                                                     "image": "docker.io/attacker/x:1"})
    # the bypasses of a deny-list: a framework field, the model field with another runtime, a worker
    cases[f"{fields} (framework)"] = lambda i: predictor(i).update(sklearn={
        "image": "docker.io/attacker/x:1", "command": ["sh", "-c", "env"],
        "envFrom": [{"secretRef": {"name": "sherlock-s3-admin"}}]})
    cases[f"{fields} (runtime)"] = lambda i: predictor(i).update(model={
        "modelFormat": {"name": "huggingface"}, "runtime": "kserve-huggingfaceserver",
        "args": ["--trust_remote_code"], "storageUri": "https://attacker.example/model"})
    cases[f"{fields} (worker)"] = lambda i: predictor(i).update(workerSpec={"containers": [
        {"image": "docker.io/attacker/x:1"}]})
    cases[f"{fields} (host)"] = lambda i: predictor(i).update(hostNetwork=True)
    cases["one container (two)"] = lambda i: predictor(i)["containers"].append(dict(container(i), name="side"))
    cases["allow-listed flags (URI)"] = lambda i: container(i)["args"].extend(["--model", "models:/evil@x"])
    cases["allow-listed flags (flag)"] = lambda i: container(i)["args"].append("--trust-remote-code")
    cases["HTTP probes (exec)"] = lambda i: container(i).update(livenessProbe={"exec": {"command": ["sh", "-c", "id"]}})
    cases["HTTP probes (host port)"] = lambda i: container(i)["ports"][0].update(hostPort=8080)
    cases["STORAGE_URI under (bucket)"] = lambda i: container(i)["env"][0].update(value="s3://other/ckpt")
    cases["only variables.env (name)"] = lambda i: container(i)["env"].append({"name": "LD_PRELOAD", "value": "/x"})
    cases["non-root (privileged)"] = lambda i: container(i)["securityContext"].update(privileged=True)
    cases["non-root (capability)"] = lambda i: container(i)["securityContext"]["capabilities"].update(add=["NET_RAW"])
    cases["non-root (root)"] = lambda i: container(i)["securityContext"].update(runAsNonRoot=False)
    cases["labels are (NetworkPolicy label)"] = lambda i: i["metadata"]["labels"].update(
        {"sherlock.dev/s3-client": "true"})
    cases["labels are (mesh)"] = lambda i: i["metadata"]["annotations"].update({"sidecar.istio.io/inject": "false"})
    cases["nothing from a Secret (env)"] = lambda i: container(i)["env"].append(
        {"name": "K", "valueFrom": {"secretKeyRef": {"name": "sherlock-s3-admin", "key": "AWS_SECRET_ACCESS_KEY"}}})
    for expected, change in cases.items():
        refused = tampered(change)
        assert len(refused) == 1 and expected.split(" (")[0] in refused[0], (expected, refused)
    assert tampered(lambda i: container(i).update(image="ghcr.io/sherlock-vlm/sherlock@sha256:" + "0" * 64)) == []
    with_token = to_manifest(inference_service(load_config(DeployConfig, overrides={
        "model": "models:/sherlock@champion", "output": "/tmp/unused", "token_secret": "sherlock-serving-token"}),
        REGISTERED, version))  # the predictor's bearer token, mounted from its Secret
    assert "--token-file" in container(with_token)["args"] and admission("sherlock-inferenceservices", with_token) == []
    assert predictor(with_token)["volumes"][-1] == {"name": "token", "secret": {"secretName": "sherlock-serving-token"}}


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
