"""The deployment files through the standard checkers, offline:

* kubernetes-validate: every manifest in deploy/k8s against the Kubernetes API's JSON schemas,
  strict (unknown fields are errors), for the oldest version we target and the newest shipped;
* checkov: deploy/k8s (kubernetes), the Dockerfile (dockerfile) and docker-compose.yml (checkov
  has no docker-compose policies of its own: deploy/checkov/compose_hardening.py holds ours, the
  pods' rules for each service; and the secrets scan over both files); no finding, and every
  skip says why;
* the compose nginx configuration, rendered from the same template, passes ``nginx -t``.

The checkers live in .venv-tools (``make tools``; ``make test`` builds it): skipped, saying
so, without it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.dockerspec import COMPOSE_FILE, DOCKERFILE, K8S_DIR, REPO

TOOLS_PYTHON = REPO / ".venv-tools" / "bin" / "python"
CHECKOV = REPO / ".venv-tools" / "bin" / "checkov"
# The oldest Kubernetes we target (autoscaling/v2, policy/v1, networking.k8s.io/v1 all GA
# long before) and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.33", "1.37"]
MANIFESTS = sorted(str(path) for path in K8S_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def tools_python() -> str:
    if not TOOLS_PYTHON.exists():
        pytest.skip(".venv-tools is missing: `make tools` builds it (checkov, kubernetes-validate)")
    return str(TOOLS_PYTHON)


def validate(tools_python: str, version: str, files: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tools_python, str(REPO / "scripts" / "k8s_validate.py")]
        + ["--kubernetes-version", version, *files],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_the_kubernetes_api_strict(tools_python, version):
    result = validate(tools_python, version, MANIFESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    validated = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    documents = sum(
        1
        for path in MANIFESTS
        for d in yaml.safe_load_all(Path(path).read_text())
        if d and d.get("kind") != "Kustomization"
    )
    assert len(validated) == documents


def test_strict_validation_refuses_an_unknown_field(tools_python, tmp_path):
    typo = (
        (K8S_DIR / "deployment.yaml")
        .read_text()
        .replace("readOnlyRootFilesystem:", "readOnlyRootFileSystem:")
    )
    path = tmp_path / "deployment.yaml"
    path.write_text(typo)
    result = validate(tools_python, KUBERNETES_VERSIONS[0], [str(path)])
    assert result.returncode == 1
    assert "readOnlyRootFileSystem' was unexpected" in result.stdout


def checkov(arguments: list[str]) -> list[dict]:
    """checkov's JSON reports (one per framework that ran), offline."""
    result = subprocess.run(
        [str(CHECKOV), "--skip-download", "--compact", "-o", "json", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout) if result.stdout.strip() else []
    return reports if isinstance(reports, list) else [reports]


def findings(reports: list[dict]) -> tuple[list[dict], list[dict], int]:
    failed, skipped, passed = [], [], 0
    for report in reports:
        results = report.get("results", {})
        failed += results.get("failed_checks", [])
        skipped += results.get("skipped_checks", [])
        passed += report.get("summary", {}).get("passed", 0)
    return failed, skipped, passed


@pytest.mark.slow
@pytest.mark.parametrize(
    "arguments",
    [
        ["--framework", "kubernetes", "-d", str(K8S_DIR)],
        ["--framework", "dockerfile", "-f", str(DOCKERFILE)],
        ["--framework", "yaml", "-f", str(COMPOSE_FILE), "--external-checks-dir", "deploy/checkov"],
        ["--framework", "secrets", "-f", str(COMPOSE_FILE), "-f", str(DOCKERFILE)],
    ],
    ids=["k8s", "dockerfile", "compose", "secrets"],
)
def test_checkov_finds_nothing_and_every_skip_says_why(tools_python, arguments):
    failed, skipped, passed = findings(checkov(arguments))
    summary = [(f["check_id"], f["resource"], f["file_path"]) for f in failed]
    assert not failed, summary
    if arguments[1] == "kubernetes":  # the annotated skips are seen (four reasons, seven objects)
        assert len(skipped) >= 7
    for skip in skipped:
        reason = skip["check_result"].get("suppress_comment") or ""
        assert len(reason.split()) >= 5, (skip["check_id"], skip["resource"], reason)
    if arguments[1] == "yaml":  # every policy of ours on every compose service
        services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
        assert passed + len(skipped) == 7 * len(services)
    elif arguments[1] != "secrets":
        assert passed > 0, "checkov ran no check"


def nginx_version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30).stderr
    return tuple(int(n) for n in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", output).groups())


def test_the_compose_nginx_configuration_passes_nginx_t(tmp_path):
    """The template with compose's values, as the nginx image renders it. `serve` does not
    resolve here (127.0.0.1 instead), and an nginx older than 1.27.3 (Debian bookworm's 1.22)
    lacks `resolver`/`resolve` in an upstream block: those are dropped, saying so."""
    sys.path.insert(0, str(REPO))
    from benchmarks.fleet import find_nginx, load_renderer

    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install -y nginx; make test does it as root)")
    environment = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["nginx"]["environment"]
    upstream = environment["CONVSERVE_UPSTREAM_SERVERS"].replace("serve:", "127.0.0.1:")
    if nginx_version(binary) < (1, 27, 3):
        upstream = re.sub(r"resolver [^;]+;", "", upstream).replace(" resolve;", ";")
    renderer = load_renderer()
    prefix = tmp_path / "nginx"
    renderer.write_local_config(prefix, "127.0.0.1:8080", ["127.0.0.1:1"])
    conf = renderer.render_template(
        {
            "CONVSERVE_LISTEN": environment["CONVSERVE_LISTEN"],
            "CONVSERVE_UPSTREAM_SERVERS": upstream,
        }
    )
    (prefix / "conf" / "convserve.conf").write_text(conf)
    result = subprocess.run(
        [binary, "-e", "stderr", "-t", "-p", str(prefix), "-c", "conf/nginx.conf"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
