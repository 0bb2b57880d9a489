"""Every shell example of the docs is run, and what it prints compared with what the doc says
(tests/docs/markdown_examples.py has the rules, tests/docs/doc_runner.py how they run); an
example that cannot run here says why in the doc, and nothing else may be left out.

Against a real server (gunicorn, the service's own config, a copy of the embedded store,
ADMIN_TOKEN=s3cret as the docs use) or the servers the examples start themselves, on free
ports. Training examples use real MNIST when this machine has it; on generated digits
(tests/docs/conftest.py) they run the same commands, but their figures are not compared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.docs.doc_runner import claim_holds, make_scratch, rewrite, run_blocks
from tests.docs.markdown_examples import doc_paths, shell_blocks
from tests.support import REPO
from tests.support.mnist import find_mnist_dir
from tests.support.servers import GunicornServer

# The slowest doc, model_store/README.md, trains three small models: ~45 s on a quiet 2-core
# machine, ~100 s while other jobs run.
DOC_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """The server the examples that start none talk to: ``make serve`` on the embedded store."""
    directory = tmp_path_factory.mktemp("doc_server")
    store = directory / "store"
    shutil.copytree(REPO / "model_store", store, ignore=shutil.ignore_patterns("*.md"))
    server = GunicornServer(store, directory / "server.log", ADMIN_TOKEN="s3cret").start()
    yield server
    server.stop()


def test_every_shell_block_is_run_or_excused_with_a_reason():
    blocks = [block for path in doc_paths() for block in shell_blocks(path)]
    assert blocks, "no shell examples found: the reader is broken"
    assert [b.where for b in blocks if b.excuse is not None and not b.excuse.strip()] == []


def test_an_excuse_must_sit_right_before_its_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- not run: needs a Docker engine -->\n```sh\ndocker ps\n```\n\n"
        "<!-- not run: needs a Docker engine -->\nprose between\n```sh\ndocker ps\n```\n"
    )
    assert [block.excuse for block in shell_blocks(doc)] == ["needs a Docker engine", None]


@pytest.mark.parametrize("doc", doc_paths(), ids=lambda path: str(path.relative_to(REPO)))
def test_the_examples_print_what_the_doc_says(doc, shared_server, tmp_path, doc_mnist_dir):
    mnist_dir = doc_mnist_dir
    blocks = [block for block in shell_blocks(doc) if block.excuse is None]
    if not blocks:
        pytest.skip(f"{doc.name}: every shell example is excused")
    scratch = make_scratch(tmp_path / "scratch", mnist_dir)
    outcomes = run_blocks(blocks, scratch, mnist_dir, shared_server.port, DOC_TIMEOUT_S)
    check_figures = find_mnist_dir() is not None
    problems = []
    for outcome in outcomes:
        claims_error = any("error:" in claim for claim in outcome.command.claims)
        where = f"{outcome.block.path.name}:{outcome.command.line} `{outcome.command.text}`"
        if outcome.status is None:
            problems.append(f"{where}: never ran (the doc's run timed out?)")
            continue
        if (outcome.status != "0") != claims_error:
            problems.append(f"{where}: exit {outcome.status}\n{outcome.output[-1500:]}")
        for claim in outcome.command.claims:
            claim = rewrite(claim, scratch, mnist_dir, shared_server.port)  # /tmp/demo-store
            if not claim_holds(claim, outcome.output, check_figures):
                problems.append(
                    f"{where}: the doc says\n  {claim}\nit printed\n{outcome.output[-1500:]}"
                )
    assert problems == [], "\n\n".join(problems)
    if check_figures:
        assert published_with_an_alias_below(scratch, LEARNED_SOMETHING) == []


# What a model that learned anything scores on MNIST's test set (chance: ~0.10; the short
# training example once published a model at 0.0983, predicting "4" for everything).
LEARNED_SOMETHING = 0.5


def published_with_an_alias_below(scratch: Path, floor: float) -> list[str]:
    """Every version an example published straight to an alias whose recorded test accuracy
    is below ``floor``: a short training example must not put a useless model behind an alias
    (the regression gate compares with what the alias had; on an empty store it had nothing)."""
    weak = []
    for aliases_file in scratch.glob("*/*/aliases.json"):
        history = json.loads(aliases_file.read_text())["history"]
        for alias, moves in history.items():
            for move in moves:
                if move["action"] != "publish":
                    continue
                manifest = aliases_file.parent / str(move["version"]) / "manifest.json"
                accuracy = json.loads(manifest.read_text())["metrics"].get("test_accuracy")
                if accuracy is None or accuracy < floor:
                    weak.append(f"{aliases_file.parent.name}:{move['version']}@{alias}: {accuracy}")
    return weak
