"""The rules the docs tests read examples by: commands and claims split as documented in
tests/docs/markdown_examples.py, claims compared as documented there."""

from __future__ import annotations

import pytest

from tests.docs.doc_runner import claim_holds, server_command
from tests.docs.markdown_examples import commands, shell_blocks, split_comment


def test_a_block_splits_into_commands_with_their_claims():
    block = "\n".join(
        [
            "# prose before",
            'curl -s localhost:8000/healthz      # {"status":"ok"}',
            "curl -s localhost:8000/models       # every model: prose, not a claim",
            "convserve train --limit 10 \\",
            "    --publish --name mnist",
            "#   published mnist:1",
            "# more prose",
            "python3 - <<'EOF'",
            "print('# not a comment')",
            "EOF",
        ]
    )
    found = commands(block)
    assert [c.text.splitlines()[0] for c in found] == [
        "curl -s localhost:8000/healthz",
        "curl -s localhost:8000/models",
        "convserve train --limit 10 \\",
        "python3 - <<'EOF'",
    ]
    assert [c.claims for c in found] == [['{"status":"ok"}'], [], ["published mnist:1"], []]
    assert found[3].text.endswith("EOF")


def test_a_hash_inside_quotes_starts_no_comment():
    assert split_comment("echo '# x' \"#y\"  # z") == ("echo '# x' \"#y\"", "z")


@pytest.mark.parametrize(
    ("claim", "output", "holds"),
    [
        ('{"label":1,"confidence":0.98}', '{"label":1,"confidence":0.9812}', True),
        ('{"label":1,"confidence":0.98}', '{"label":1,"confidence":0.9712}', False),
        ('{"label":1,"confidence":0.98}', '{"label":2,"confidence":0.98}', False),
        ('{"probabilities":[...10]}', '{"probabilities":[0.1,0.9]}', True),
        ("mnist  1  production  92.70%  ...  first", "mnist 1 production 92.70% 2026 first", True),
        ("mnist  1  production  92.70%", "mnist 1 production 52.90%", False),
        # Within 0.1 % of the figure: another CPU's last digit (92.63 % on an AMD EPYC).
        ("mnist  1  production  92.70%", "mnist 1 production 92.63%", True),
        ("mnist  1  production  92.70%", "mnist 1 production 92.55%", False),
        ("below 0.9657 of mnist:2", "below 0.9659 of mnist:2", True),
        ("below 0.9657 of mnist:2", "below 0.9677 of mnist:2", False),
        ("convserve: error: no", "all good", False),
    ],
)
def test_claims_compare_text_loosely_and_figures_by_rounding(claim, output, holds):
    assert claim_holds(claim, output) is holds


def test_figures_are_not_compared_when_asked_not_to():
    assert claim_holds("production  92.70%", "production 11.35%", check_figures=False)


def test_a_server_command_moves_to_the_test_port(tmp_path):
    assert server_command("make serve &", tmp_path, 9001).endswith("PORT=9001")
    moved = server_command(".venv/bin/convserve serve --port 8000 --workers 2", tmp_path, 9001)
    assert moved == ".venv/bin/convserve serve --port 9001 --workers 2"
    assert server_command("curl -s localhost:8000/", tmp_path, 9001) is None


def test_an_indented_fence_is_a_block_too(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("* a list item:\n\n   ```sh\n   curl -s localhost:8000/healthz\n   ```\n")
    (block,) = shell_blocks(doc)
    assert block.excuse is None and "curl" in block.text
