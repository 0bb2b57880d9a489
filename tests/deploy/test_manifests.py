"""Compose and Kubernetes files: they parse, and they agree with the Dockerfile and the service.

The image is the single source of truth for the port, the UID, the store path and the
healthcheck; the service's code for the names of its settings. Everything that repeats them
is checked against them here, so a rename in one place cannot silently break a deployment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.support.dockerspec import (
    COMPOSE_FILE,
    K8S_DIR,
    REPO,
    duration_seconds,
    option_value,
    parse_dockerfile,
)

FINAL = parse_dockerfile()[-1]
UID, _, GID = FINAL.user.partition(":")
PORT = int(FINAL.env["BIND"].rsplit(":", 1)[1])
STORE = FINAL.env["MODEL_STORE"]
GRACEFUL_TIMEOUT = float(option_value(FINAL.cmd, "--graceful-timeout"))
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"convserve:{VERSION}"

# Read by the runtime, not by our code: BLAS/OpenMP, Python, pip, tempfile.
RUNTIME_ENV = {
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "TMPDIR",
}
# Where the settings are read: the app's settings table, gunicorn's conf, the CLI's defaults.
CONFIG_SOURCES = [
    REPO / "service" / "config.py",
    REPO / "service" / "gunicorn.conf.py",
    REPO / "training" / "store.py",
    REPO / "training" / "data.py",
]


def load_documents(path: Path) -> list[dict]:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents, f"{path} holds no YAML document"
    for document in documents:
        assert isinstance(document, dict), f"{path}: a document is not a mapping"
    return documents


K8S_FILES = sorted(K8S_DIR.glob("*.yaml"))
K8S = {path.name: load_documents(path) for path in K8S_FILES}
COMPOSE = load_documents(COMPOSE_FILE)[0]


def k8s_objects(kind: str) -> list[dict]:
    return [d for docs in K8S.values() for d in docs if d.get("kind") == kind]


def one(kind: str) -> dict:
    (found,) = k8s_objects(kind)
    return found


def pod_specs() -> list[tuple[str, dict]]:
    """(name, pod spec) of the Deployment and every Job."""
    specs = [
        (d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in k8s_objects("Deployment")
    ]
    for job in k8s_objects("Job"):
        specs.append((job["metadata"]["generateName"], job["spec"]["template"]["spec"]))
    return specs


def all_containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def server_pod() -> dict:
    return one("Deployment")["spec"]["template"]["spec"]


def server_container() -> dict:
    (container,) = server_pod()["containers"]
    return container


def env_of(container: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


@pytest.mark.parametrize("path", K8S_FILES + [COMPOSE_FILE], ids=lambda p: p.name)
def test_yaml_parses(path):
    for document in load_documents(path):
        if path.parent == K8S_DIR:
            assert document.get("apiVersion") and document.get("kind"), path.name


def test_kustomization_lists_the_long_lived_objects_and_not_the_jobs():
    (kustomization,) = K8S["kustomization.yaml"]
    listed = set(kustomization["resources"])
    for name, documents in K8S.items():
        if name == "kustomization.yaml":
            continue
        is_job = all(d["kind"] == "Job" for d in documents)
        assert (name in listed) != is_job, name
    assert {"name": "convserve", "newTag": VERSION} in kustomization["images"]


def test_every_image_is_this_version():
    for name, pod in pod_specs():
        for container in all_containers(pod):
            assert container["image"] == IMAGE, (name, container["name"])
    for service_name, service in COMPOSE["services"].items():
        if service_name == "nginx":  # the proxy: a pinned nginx image (test_compose_nginx_...)
            continue
        assert service["image"] == IMAGE, service_name


def test_deployment_probes_ports_and_replicas():
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    container = server_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    assert env_of(container)["BIND"] == FINAL.env["BIND"]
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports.get(get["port"], get["port"]) == PORT, probe
    # The startup probe must allow at least the image's HEALTHCHECK start period.
    startup = container["startupProbe"]
    start_period = duration_seconds(FINAL.healthcheck["options"]["start-period"])
    assert startup["periodSeconds"] * startup["failureThreshold"] >= start_period
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_graceful_shutdown_fits_in_the_grace_period():
    pod = server_pod()
    drain = float(env_of(server_container())["DRAIN_SECONDS"])
    assert drain == float(FINAL.env["DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > drain + GRACEFUL_TIMEOUT
    compose_grace = duration_seconds(COMPOSE["services"]["serve"]["stop_grace_period"])
    assert compose_grace > drain + GRACEFUL_TIMEOUT
    assert COMPOSE["services"]["serve"]["stop_signal"] == FINAL.stopsignal


def test_service_pdb_and_hpa_point_at_the_deployment():
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("http", PORT)
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # Utilisation is measured against the request: it must exist.
    assert server_container()["resources"]["requests"]["cpu"]


def quantity(text: str | int) -> float:
    """Kubernetes quantities used here: 500m, 1, 2, 256Mi, 1Gi."""
    text = str(text)
    factors = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in factors.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_resources_requests_within_limits():
    for name, pod in pod_specs():
        for container in all_containers(pod):
            resources = container["resources"]
            for kind in ("cpu", "memory"):
                request = quantity(resources["requests"][kind])
                assert 0 < request <= quantity(resources["limits"][kind]), (name, kind)


def test_every_pod_is_non_root_read_only_and_unprivileged():
    for name, pod in pod_specs():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert str(security["runAsUser"]) == UID and str(security["runAsGroup"]) == GID, name
        assert str(security["fsGroup"]) == GID, name
        assert pod["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in all_containers(pod):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/tmp"]["name"] in tmp_volumes, (name, container["name"])


def store_claim_mounts(pod: dict) -> list[tuple[dict, dict]]:
    """(volume, mount) pairs of the store claim in every container of a pod."""
    claim = one("PersistentVolumeClaim")["metadata"]["name"]
    volumes = {
        v["name"]: v
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    return [
        (volumes[m["name"]], m)
        for c in all_containers(pod)
        for m in c["volumeMounts"]
        if m["name"] in volumes
    ]


def test_store_claim_read_only_for_serving_read_write_for_writers():
    pvc = one("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    ((volume, mount),) = store_claim_mounts(server_pod())
    assert mount["mountPath"] == STORE
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    assert env_of(server_container())["MODEL_STORE"] == STORE
    jobs = {job["metadata"]["generateName"]: job for job in k8s_objects("Job")}
    writers = {"convserve-seed-", "convserve-train-", "convserve-promote-"}
    assert set(jobs) == writers | {"convserve-verify-"}
    for name, job in jobs.items():
        pairs = store_claim_mounts(job["spec"]["template"]["spec"])
        assert pairs, name
        for volume, mount in pairs:
            claim_read_only = volume["persistentVolumeClaim"].get("readOnly", False)
            # The writers need the store read-write; the verify Job only reads it.
            assert bool(mount.get("readOnly")) == claim_read_only == (name not in writers), name


def test_verify_job_checks_the_whole_store_read_only():
    (job,) = [j for j in k8s_objects("Job") if j["metadata"]["generateName"] == "convserve-verify-"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:3] == ["convserve", "models", "verify"] and store_argument(args) == STORE
    assert "--clean" not in args  # a check, never a repair
    assert job["spec"]["backoffLimit"] == 0


def store_argument(args: list[str]) -> str | None:
    return option_value(args, "--store")


def test_writer_jobs_use_the_store_and_write_only_to_mounts():
    jobs = {job["metadata"]["generateName"]: job for job in k8s_objects("Job")}
    train_pod = jobs["convserve-train-"]["spec"]["template"]["spec"]
    (train,) = train_pod["containers"]
    args = train["args"]
    assert args[:2] == ["convserve", "train"] and "--publish" in args
    assert option_value(args, "--name") == "mnist" and option_value(args, "--alias") == "staging"
    mounts = [m["mountPath"] for m in train["volumeMounts"]]
    assert store_argument(args) in mounts
    # Read-only root filesystem: every path the job writes must be on a mount.
    for option in ("--out", "--data-dir"):
        assert any(
            option_value(args, option).startswith(m + "/") or option_value(args, option) == m
            for m in mounts
        )
    (download,) = train_pod["initContainers"]
    assert download["args"][:3] == ["convserve", "data", "download"]
    promote = jobs["convserve-promote-"]["spec"]["template"]["spec"]["containers"][0]
    assert promote["args"][:3] == ["convserve", "models", "promote"]
    assert store_argument(promote["args"]) == STORE
    seed = jobs["convserve-seed-"]["spec"]["template"]["spec"]["containers"][0]
    script = seed["command"][-1]
    # Copies the image's embedded model (at STORE) into the claim (mounted elsewhere).
    assert f"{STORE}/mnist" in script and "mv " in script


def known_setting_names() -> set[str]:
    names = set(RUNTIME_ENV)
    for source in CONFIG_SOURCES:
        if not source.exists():
            pytest.skip(f"{source.relative_to(REPO)} is not written yet")
        names.update(re.findall(r"""["']([A-Z][A-Z0-9_]{2,})["']""", source.read_text()))
    return names


def test_environment_names_are_settings_the_code_reads():
    known = known_setting_names()
    used = {"Dockerfile": set(FINAL.env)}
    for name, pod in pod_specs():
        for container in all_containers(pod):
            # Variables only there for Kubernetes' $(NAME) expansion in args are read by it.
            words = " ".join(container.get("command", []) + container.get("args", []))
            expanded = set(re.findall(r"\$\((\w+)\)", words))
            env_names = {e["name"] for e in container.get("env", [])}
            assert expanded <= env_names, (name, container["name"])
            used[f"{name}{container['name']}"] = env_names - expanded
    for name, service in COMPOSE["services"].items():
        if name == "nginx":  # the proxy template's variables (test_compose_nginx_...)
            continue
        used[f"compose {name}"] = set(service.get("environment", {}))
    for where, names in used.items():
        assert names <= known, f"{where}: {sorted(names - known)} are read by nothing"
    # Pointing at the same things as the image.
    for name, value in env_of(server_container()).items():
        if name in FINAL.env and name != "ADMIN_TOKEN":
            assert value == FINAL.env[name], name


def test_compose_serve_mirrors_the_image():
    serve = COMPOSE["services"]["serve"]
    assert serve["read_only"] is True
    assert any(entry.split(":")[0] == "/tmp" for entry in serve["tmpfs"])
    assert serve["user"] == FINAL.user
    assert serve["cap_drop"] == ["ALL"] and "no-new-privileges:true" in serve["security_opt"]
    assert f"models:{STORE}:ro" in serve["volumes"]
    assert serve["environment"]["MODEL_STORE"] == STORE
    assert serve["environment"]["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    # No host port of its own: clients go through the nginx service.
    assert "ports" not in serve
    assert serve["deploy"]["replicas"] >= 2
    check = serve["healthcheck"]
    assert check["test"] == ["CMD"] + FINAL.healthcheck["cmd"]
    for key in ("interval", "timeout", "start_period", "retries"):
        assert str(check[key]) == FINAL.healthcheck["options"][key.replace("_", "-")], key
    assert serve["build"]["context"] == "."
    assert set(COMPOSE["volumes"]) >= {"models"}


def test_compose_train_is_a_profiled_writer_on_the_same_volume():
    train = COMPOSE["services"]["train"]
    assert train["profiles"] == ["train"]
    assert f"models:{STORE}" in train["volumes"]
    assert train["read_only"] is True and train["healthcheck"] == {"disable": True}
    script = " ".join(train["command"])
    assert "convserve data download --dir /data" in script
    words = script.split()
    start = words.index("train")
    args = words[start:]
    assert "--publish" in args and store_argument(args) == STORE
    assert option_value(args, "--name") == "mnist" and option_value(args, "--alias") == "staging"
    assert option_value(args, "--out").startswith("/tmp/")
    assert any(entry.startswith("mnist-data:/data") for entry in train["volumes"])


NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "convserve.conf.template"


def test_compose_nginx_fronts_the_replicas_with_the_repository_template():
    nginx = COMPOSE["services"]["nginx"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-alpine", nginx["image"]), nginx["image"]
    # nginx >= 1.27.3: `resolve` and `resolver` in an upstream block.
    version = tuple(int(n) for n in nginx["image"].split(":")[1].split("-")[0].split("."))
    assert version >= (1, 27, 3)
    mounts = {entry.split(":")[1]: entry.split(":")[0] for entry in nginx["volumes"]}
    assert mounts["/etc/nginx/templates/default.conf.template"] == "./deploy/nginx/" + (
        NGINX_TEMPLATE.name
    )
    # Every variable of the template has a value; the upstream is the serve service's port.
    variables = set(re.findall(r"\$\{(CONVSERVE_[A-Z_]+)\}", NGINX_TEMPLATE.read_text()))
    environment = nginx["environment"]
    assert variables <= set(environment)
    assert f"server serve:{PORT} " in environment["CONVSERVE_UPSTREAM_SERVERS"]
    (published,) = nginx["ports"]
    assert published.split(":")[-1] == environment["CONVSERVE_LISTEN"]
    assert nginx["depends_on"]["serve"]["condition"] == "service_healthy"
    assert nginx["read_only"] is True and nginx["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in nginx["security_opt"]
    assert duration_seconds(nginx["stop_grace_period"]) >= duration_seconds(
        COMPOSE["services"]["serve"]["stop_grace_period"]
    )


def test_ingress_annotations_say_what_the_nginx_template_says():
    """The Kubernetes Ingress (ingress-nginx) and the compose/test nginx share the values."""
    template = NGINX_TEMPLATE.read_text()
    annotations = one("Ingress")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"

    def directive(name: str) -> str:
        return re.search(rf"^\s*{name}\s+([^;]+);", template, re.M).group(1)

    assert annotations[prefix + "proxy-body-size"] == directive("client_max_body_size")
    assert annotations[prefix + "client-body-buffer-size"] == directive("client_body_buffer_size")
    assert annotations[prefix + "proxy-request-buffering"] == directive("proxy_request_buffering")
    assert annotations[prefix + "proxy-buffering"] == directive("proxy_buffering")
    for key in ("proxy-connect-timeout", "proxy-send-timeout", "proxy-read-timeout"):
        assert annotations[prefix + key] + "s" == directive(key.replace("-", "_")), key
    assert annotations[prefix + "proxy-next-upstream"] == "error timeout non_idempotent"
    assert "proxy_next_upstream error timeout non_idempotent;" in template
    assert annotations[prefix + "proxy-next-upstream-tries"] == directive(
        "proxy_next_upstream_tries"
    )
    assert annotations[prefix + "proxy-next-upstream-timeout"] + "s" == directive(
        "proxy_next_upstream_timeout"
    )


def test_ingress_routes_the_public_paths_only():
    ingress = one("Ingress")
    (rule,) = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    service = one("Service")
    for entry in rule["http"]["paths"]:
        backend = entry["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] == service["spec"]["ports"][0]["name"]
    assert ("/predict", "Exact") in paths and ("/v2", "Prefix") in paths
    for hidden in ("/metrics", "/admin/reload", "/admin"):
        for path, kind in paths:
            reaches = (
                hidden == path
                if kind == "Exact"
                else (hidden == path or hidden.startswith(path.rstrip("/") + "/"))
            )
            assert not reaches, (hidden, path)


def test_verify_job_command_passes_on_the_embedded_store_and_writes_nothing(tmp_path):
    """The Job's exact args, on a copy of model_store (its /models): exit 0, no file written
    (the Job mounts the store read-only)."""
    (job,) = [j for j in k8s_objects("Job") if j["metadata"]["generateName"] == "convserve-verify-"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    store = tmp_path / "models"
    shutil.copytree(REPO / "model_store", store)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    time.sleep(0.01)
    args = [str(store) if arg == STORE else arg for arg in container["args"]]
    assert args[0] == "convserve"
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all good" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
