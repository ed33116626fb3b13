"""The README and the docstrings a newcomer reads: its snippets run as written, its links stay inside the repository."""

from __future__ import annotations

import os
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tidings.runtime
from tidings import UnitOfWork, ValidationError
from tidings.cli import app as cli_app
from tidings.runtime import Consumer, HandlerContext

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)


def test_the_readme_has_python_snippets() -> None:
    assert PYTHON_BLOCKS, "the README shows no python code block"


@pytest.mark.parametrize("number", range(len(PYTHON_BLOCKS)))
def test_each_readme_python_snippet_runs_as_written(number: int, tmp_path: Path) -> None:
    # Given a snippet of the README, saved as a file / when it is run by a fresh interpreter in an empty directory
    script = tmp_path / f"readme_{number}.py"
    script.write_text(PYTHON_BLOCKS[number])
    env = {key: value for key, value in os.environ.items() if not key.startswith("TIDINGS_")}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    # Then it exits cleanly
    assert done.returncode == 0, f"README python block #{number + 1} failed:\n{done.stderr}"


def test_the_readme_snippet_creates_and_saves_a_new_aggregate() -> None:
    assert any("uow.add(" in block or "return License." in block for block in PYTHON_BLOCKS)


def test_every_path_the_readme_names_is_inside_the_repository() -> None:
    # Paths in backticks or links that look like files must exist here, and none may climb out
    assert "../" not in README, "the README points outside the repository"
    named = set(re.findall(r"`((?:docs|examples|src|bench|faults|tests)/[\w./-]*)`", README))
    named |= set(re.findall(r"\]\(((?!https?:)[^)]+)\)", README))
    missing = sorted(path for path in named if not (ROOT / path.split("#")[0]).exists())
    assert not missing, f"the README names paths that do not exist: {missing}"


def test_the_readme_lists_every_cli_command() -> None:
    commands = {command.name for command in cli_app.registered_commands} | {
        group.name for group in cli_app.registered_groups
    }
    commands.discard(None)
    listed = re.search(r"cli/\s+`tidings ([^`]*)`", README)
    assert listed is not None, "the README's layout does not list the CLI's commands"
    assert {name.strip() for name in listed.group(1).split("|")} == commands


def test_the_story_module_is_where_the_readme_says() -> None:
    assert "python -m examples.story" in README
    assert (ROOT / "examples" / "story.py").exists()
    assert re.search(r"^examples/story\.py\s", README, flags=re.M)


@pytest.mark.parametrize(
    ("owner", "attribute"),
    [
        (UnitOfWork, "cause"),
        (UnitOfWork, "causation_id"),
        (Consumer, "stats"),
        (HandlerContext, "tx"),
        (ValidationError, "field"),
    ],
)
def test_help_explains_the_attribute(owner: type, attribute: str) -> None:
    # help(Class) shows the class docstring: the attribute is described there, under Attributes
    text = pydoc.render_doc(owner, renderer=pydoc.plaintext)
    attributes = text.split("Attributes:", 1)
    assert len(attributes) == 2, f"help({owner.__name__}) has no Attributes section"
    assert re.search(rf"\b{attribute}: \w", attributes[1]), f"help({owner.__name__}) does not explain {attribute}"


def test_the_runtime_package_describes_what_it_has_now() -> None:
    doc = tidings.runtime.__doc__ or ""
    assert " next" not in doc
    for process in ("relay", "consumer", "projection", "saga", "scheduler"):
        assert process in doc.lower()
