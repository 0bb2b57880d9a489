"""checkov policies for docker-compose.yml (checkov has none of its own): each service runs
with a read-only root, drops every capability, forbids privilege gain, runs as a non-root user,
has resource limits, a pinned image and a healthcheck - what the Kubernetes checks ask of the
pods. Loaded with ``--external-checks-dir deploy/checkov`` (tests/deploy/test_deploy_checkers.py).

Each check sees one service (``services.*``); a finding is justified inline in the service's
block with ``# checkov:skip=CKV_COMPOSE_N: reason``.
"""

from __future__ import annotations

import re

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.yaml_doc.base_yaml_check import BaseYamlCheck
from checkov.yaml_doc.enums import BlockType

SERVICES = "services.*"


class ComposeServiceCheck(BaseYamlCheck):
    """One rule over every service of a compose file."""

    def __init__(self, check_id: str, name: str, category: CheckCategories):
        super().__init__(
            name=name,
            id=check_id,
            categories=(category,),
            supported_entities=(SERVICES,),
            block_type=BlockType.ARRAY,
        )

    def holds(self, service: dict) -> bool:
        raise NotImplementedError

    def scan_entity_conf(self, conf, entity_type):  # checkov's hook
        if not isinstance(conf, dict):
            return CheckResult.UNKNOWN
        return CheckResult.PASSED if self.holds(conf) else CheckResult.FAILED


class ReadOnlyRoot(ComposeServiceCheck):
    def __init__(self):
        super().__init__(
            "CKV_COMPOSE_1",
            "Service root filesystem is read-only",
            CheckCategories.GENERAL_SECURITY,
        )

    def holds(self, service):
        return service.get("read_only") is True


class DropsAllCapabilities(ComposeServiceCheck):
    def __init__(self):
        super().__init__(
            "CKV_COMPOSE_2", "Service drops ALL capabilities", CheckCategories.GENERAL_SECURITY
        )

    def holds(self, service):
        return "ALL" in (service.get("cap_drop") or [])


class NoNewPrivileges(ComposeServiceCheck):
    def __init__(self):
        super().__init__(
            "CKV_COMPOSE_3", "Service sets no-new-privileges", CheckCategories.GENERAL_SECURITY
        )

    def holds(self, service):
        return "no-new-privileges:true" in (service.get("security_opt") or [])


class NonRootUser(ComposeServiceCheck):
    def __init__(self):
        super().__init__(
            "CKV_COMPOSE_4",
            "Service runs as a non-root numeric user",
            CheckCategories.GENERAL_SECURITY,
        )

    def holds(self, service):
        user = str(service.get("user", "")).split(":")[0]
        return user.isdigit() and int(user) != 0


class ResourceLimits(ComposeServiceCheck):
    def __init__(self):
        super().__init__(
            "CKV_COMPOSE_5", "Service has CPU and memory limits", CheckCategories.GENERAL_SECURITY
        )

    def holds(self, service):
        limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        return bool(limits.get("cpus")) and bool(limits.get("memory"))


class PinnedImage(ComposeServiceCheck):
    def __init__(self):
        super().__init__(
            "CKV_COMPOSE_6",
            "Service image has a version tag or digest",
            CheckCategories.SUPPLY_CHAIN,
        )

    def holds(self, service):
        image = str(service.get("image", ""))
        return "@sha256:" in image or bool(re.search(r":[^:/]*\d[^:/]*$", image))


class HealthCheck(ComposeServiceCheck):
    def __init__(self):
        super().__init__(
            "CKV_COMPOSE_7", "Service has a healthcheck", CheckCategories.GENERAL_SECURITY
        )

    def holds(self, service):
        check = service.get("healthcheck") or {}
        return bool(check.get("test")) and not check.get("disable")


for _check in (
    ReadOnlyRoot,
    DropsAllCapabilities,
    NoNewPrivileges,
    NonRootUser,
    ResourceLimits,
    PinnedImage,
    HealthCheck,
):
    _check()
