"""Read the deployment files the way Docker does, so tests can check and run what they say.

``parse_dockerfile`` splits a Dockerfile into stages and summarises the final one (ENV, WORKDIR,
USER, EXPOSE, COPY, HEALTHCHECK, STOPSIGNAL, CMD); ``DockerIgnore`` applies ``.dockerignore``
with the semantics of moby/patternmatcher (``**``, ``!`` exceptions, a match on a parent
directory excludes everything under it). Only the forms this repository uses need to work, but
anything unexpected raises instead of being silently misread.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_DIR = REPO / "deploy" / "k8s"


@dataclass
class Copy:
    """One COPY/ADD: sources relative to the build context (or to stage ``from_stage``)."""

    sources: list[str]
    destination: str  # absolute, resolved against the WORKDIR in force at that line
    from_stage: str | None
    chown: str | None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str | None = None
    expose: list[str] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)
    cmd: list[str] | None = None
    healthcheck: dict | None = None  # {"options": {name: value}, "cmd": [...]}
    stopsignal: str | None = None

    def runs(self) -> list[str]:
        return [args for keyword, args in self.instructions if keyword == "RUN"]


def logical_lines(text: str) -> list[str]:
    """Instructions with backslash continuations joined; comment and blank lines dropped
    (Docker drops comment lines even inside a continued instruction)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        raise ValueError(f"Dockerfile ends inside a continued line: {current!r}")
    return lines


def exec_or_shell(args: str) -> list[str]:
    """CMD/ENTRYPOINT/HEALTHCHECK CMD arguments: JSON exec form, else shell form."""
    if args.lstrip().startswith("["):
        value = json.loads(args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"exec form must be a JSON list of strings: {args!r}")
        return value
    return ["/bin/sh", "-c", args]


def parse_env(args: str, env: dict[str, str]) -> dict[str, str]:
    """``ENV a=1 b="two words"`` (or the legacy ``ENV a value``), expanding $VAR/${VAR}."""
    words = shlex.split(args, posix=True)
    if words and "=" not in words[0]:
        return {words[0]: args.split(None, 1)[1] if len(words) > 1 else ""}
    pairs = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"ENV word without '=': {word!r}")
        pairs[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: {**env, **pairs}.get(m.group(1), ""), value)
    return pairs


def split_flags(args: str) -> tuple[dict[str, str], str]:
    """Leading ``--name=value`` flags of an instruction, and the rest."""
    flags = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            flags, rest = split_flags(args)
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
            continue
        if not stages:
            if keyword == "ARG":
                continue
            raise ValueError(f"{keyword} before the first FROM")
        stage = stages[-1]
        stage.instructions.append((keyword, args))
        if keyword == "ENV":
            stage.env.update(parse_env(args, stage.env))
        elif keyword == "WORKDIR":
            stage.workdir = posixpath.normpath(posixpath.join(stage.workdir, args))
        elif keyword == "USER":
            stage.user = args
        elif keyword == "EXPOSE":
            stage.expose.extend(args.split())
        elif keyword in ("COPY", "ADD"):
            flags, rest = split_flags(args)
            words = json.loads(rest) if rest.startswith("[") else rest.split()
            # Normalised: a trailing "/" (copy into a directory) does not change the path.
            destination = posixpath.normpath(posixpath.join(stage.workdir, words[-1]))
            stage.copies.append(
                Copy(
                    sources=words[:-1],
                    destination=destination,
                    from_stage=flags.get("from"),
                    chown=flags.get("chown"),
                )
            )
        elif keyword == "CMD":
            stage.cmd = exec_or_shell(args)
        elif keyword == "HEALTHCHECK":
            flags, rest = split_flags(args)
            if rest.upper() == "NONE":
                stage.healthcheck = None
                continue
            cmd_keyword, _, cmd_args = rest.partition(" ")
            if cmd_keyword.upper() != "CMD":
                raise ValueError(f"HEALTHCHECK without CMD: {args!r}")
            stage.healthcheck = {"options": flags, "cmd": exec_or_shell(cmd_args.strip())}
        elif keyword == "STOPSIGNAL":
            stage.stopsignal = args
    if not stages:
        raise ValueError(f"{path}: no FROM")
    return stages


def duration_seconds(text: str) -> float:
    """Docker/compose durations such as ``30s``, ``1m30s``, ``500ms``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def option_value(cmd: list[str], option: str) -> str | None:
    """The value of ``--option value`` or ``--option=value`` in an argument list."""
    for i, word in enumerate(cmd):
        if word == option and i + 1 < len(cmd):
            return cmd[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def _pattern_regex(pattern: str) -> re.Pattern:
    """moby/patternmatcher: ``**`` spans directories, ``*``/``?`` stay within one."""
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") or body.startswith("!") else body)
            out += "]"
            i = end
        elif char == "\\":
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    def __init__(self, path: Path = DOCKERIGNORE):
        self.patterns: list[tuple[bool, re.Pattern]] = []
        self.exceptions: list[str] = []  # the `!` patterns, cleaned
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            cleaned = posixpath.normpath(line[1:].strip() if negated else line).lstrip("/")
            self.patterns.append((negated, _pattern_regex(cleaned)))
            if negated:
                self.exceptions.append(cleaned)

    def excludes(self, relative_path: str) -> bool:
        """Is this path (relative to the context, ``/``-separated) left out of the context?"""
        parts = relative_path.strip("/").split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        excluded = False
        for negated, regex in self.patterns:
            if any(regex.match(prefix) for prefix in prefixes):
                excluded = not negated
        return excluded

    def context_files(self, root: Path = REPO) -> list[str]:
        """Every file ``docker build`` would send from ``root``, as relative paths. Excluded
        directories no exception reaches into are not walked (``.venv`` is large)."""
        found = []
        for directory, subdirs, files in os.walk(root):
            relative_dir = Path(directory).relative_to(root).as_posix()
            prefix = "" if relative_dir == "." else relative_dir + "/"
            subdirs[:] = [
                d
                for d in subdirs
                if not self.excludes(prefix + d)
                or any(e.startswith(prefix + d + "/") for e in self.exceptions)
            ]
            found.extend(prefix + f for f in files if not self.excludes(prefix + f))
        return sorted(found)
