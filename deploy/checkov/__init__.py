"""checkov policies of this repository (docker-compose.yml); see compose_hardening.py."""
