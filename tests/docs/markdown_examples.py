"""The shell examples of the docs, read as the tests run them.

The rule: every fenced ``sh`` block (``bash`` and ``shell`` too) in README.md,
docs/*.md and model_store/README.md is either run by tests/docs/test_doc_examples.py or
excused by an HTML comment on the line before its fence saying why::

    <!-- not run: needs a Docker engine -->
    ```sh
    docker build -t convserve:0.1.0 .
    ```

A block is split into commands (backslash continuations and here-documents kept with their
command). A comment is a *claimed output* of the command before it when it starts with ``{``,
``[`` or ``convserve: error``, or when it is a whole line ``#`` + at least three spaces
(``#   published mnist:1``); any other comment is prose. In a claim, ``...`` (optionally
followed by a word, ``[...10]``) stands for anything, whitespace is not compared, and a
decimal number means "this value, rounded to the digits shown, or within 0.1 % of it": the
figures of a training run depend on the order in which the CPU's BLAS kernels add float32
numbers, so their last digit differs between CPUs (model_store/README.md's second model:
96.57 % on an Intel Xeon, 96.59 % on an AMD EPYC, from the same seed and data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import REPO

SHELL_LANGUAGES = {"sh", "bash", "shell"}
EXCUSE = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
HEREDOC = re.compile(r"<<-?\s*'?\"?(?P<word>[A-Za-z_]+)'?\"?")
CLAIM_START = re.compile(r"^(\{|\[|convserve: error)")


def doc_paths() -> list[Path]:
    """Every doc whose examples are held to the rule, in a stable order."""
    return [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        REPO / "model_store/README.md",
    ]


@dataclass
class Command:
    """One command of a block: its text as bash reads it, and what the doc says it prints."""

    text: str
    line: int
    claims: list[str] = field(default_factory=list)


@dataclass
class ShellBlock:
    path: Path
    line: int  # the fence's line, 1-based
    text: str
    excuse: str | None  # the reason given, or None when the block is to be run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def shell_blocks(path: Path) -> list[ShellBlock]:
    """The fenced shell blocks of one Markdown file, each with its excuse if it has one."""
    lines = path.read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = re.match(r"^ {0,3}(```+|~~~+)\s*(\w*)", lines[index])  # as CommonMark
        if not fence:
            index += 1
            continue
        marker, language = fence.group(1), fence.group(2).lower()
        end = index + 1
        while end < len(lines) and not lines[end].lstrip().startswith(marker):
            end += 1
        if language in SHELL_LANGUAGES:
            previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            excused = EXCUSE.match(previous.strip())
            blocks.append(
                ShellBlock(
                    path,
                    index + 1,
                    "\n".join(lines[index + 1 : end]),
                    excused.group("reason") if excused else None,
                )
            )
        index = end + 1
    return blocks


def split_comment(line: str) -> tuple[str, str | None]:
    """(code, comment) as bash splits them: ``#`` after whitespace, outside quotes."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position].rstrip(), line[position + 1 :].strip()
    return line.rstrip(), None


def is_claim(comment: str, whole_line: str | None = None) -> bool:
    if whole_line is not None and re.match(r"^#\s{3,}\S", whole_line):
        return True
    return bool(CLAIM_START.match(comment))


def commands(block_text: str, first_line: int = 1) -> list[Command]:
    """The block's commands in order, each with the outputs the doc claims for it."""
    result: list[Command] = []
    lines = block_text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        number = first_line + index
        index += 1
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            comment = line.lstrip()[1:].strip()
            if result and is_claim(comment, line.lstrip()):
                result[-1].claims.append(comment)
            continue
        code, comment = split_comment(line)
        parts = [code]
        while code.endswith("\\") and index < len(lines):
            code, more = split_comment(lines[index])
            comment = more or comment
            parts.append(code)
            index += 1
        heredoc = HEREDOC.search(" ".join(parts))
        if heredoc:
            while index < len(lines):
                parts.append(lines[index])
                index += 1
                if parts[-1].strip() == heredoc.group("word"):
                    break
        command = Command("\n".join(parts), number)
        if comment and is_claim(comment):
            command.claims.append(comment)
        result.append(command)
    return result
