"""The README and docs/ say what the code does: every ``recipe-run`` command shown in README.md runs
(offline, on the tiny recipes, in a temporary folder), its test command is the one CI runs, the
``--watch`` sample is what a session prints, docs/cli.md documents exactly the options of
``--help``, docs/recipes.md every key of the format, and every relative link points at a file.

Conventions the README follows (so that this module can read it):

- A fenced ``sh`` block holds commands, one a line (``\\`` continues a line). A ``recipe-run``
  command exits 0 unless its comment ends with ``exit N``. A block whose first line is
  ``# needs a GPU ...`` is shown, not run: each recipe it runs must really need the Hub.
- The commands of the "Quick start" blocks are set-up lines: only their ``recipe-run`` part runs,
  and the test command must end with the line of ``.ci/run`` after "the README's test command".
- The fenced block right after the ``--watch`` command's block is what that session prints, with
  ``seeds = 2`` changed to ``seeds = 3`` after the first round.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

README = REPO / "README.md"
DOCS = REPO / "docs"
CLI_DOC = DOCS / "cli.md"
RECIPES_DOC = DOCS / "recipes.md"
CI_RUN = REPO / ".ci" / "run"
CI_MARKER = "--- the README's test command"
NEEDS_HUB = "# needs a GPU"
MAX_README_LINES = 200


# --- reading markdown ---------------------------------------------------------------------------------

@dataclass
class Block:
    lang: str
    lines: list[str]
    start: int  # line number (1-based) of the opening fence


def fenced_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    current: Block | None = None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if current is None and fence:
            current = Block(fence.group(1), [], number)
        elif current is not None and re.match(r"^\s*```\s*$", line):
            blocks.append(current)
            current = None
        elif current is not None:
            current.lines.append(line)
    assert current is None, f"a fenced block opened at line {current.start} is never closed"
    return blocks


def prose(text: str) -> str:
    """The text outside fenced blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", text, flags=re.S | re.M)


@dataclass
class Command:
    text: str  # the recipe-run command, as written
    expected: int  # its exit status
    line: str  # the whole line it is part of


def shell_lines(block: Block) -> list[tuple[str, str]]:
    """(code, comment) per logical line of a shell block."""
    logical: list[str] = []
    pending = ""
    for line in block.lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        code, _, comment = line.partition(" #") if not line.lstrip().startswith("#") else ("", "", line.lstrip()[1:])
        if code.strip() or comment.strip():
            out.append((code.strip(), comment.strip()))
    return out


def commands_of(block: Block) -> list[Command]:
    commands = []
    for code, comment in shell_lines(block):
        status = re.search(r"\bexit (\d+)$", comment)
        for part in code.split("&&"):
            part = part.strip()
            if part == "recipe-run" or part.startswith("recipe-run "):
                commands.append(Command(part, int(status.group(1)) if status else 0, code))
    return commands


def shell_blocks(text: str) -> list[Block]:
    return [b for b in fenced_blocks(text) if b.lang in ("sh", "bash", "shell", "console")]


def readme_blocks() -> tuple[list[Block], list[Block]]:
    """The README's shell blocks: (run by the tests, shown as needing a GPU and the Hub)."""
    blocks = shell_blocks(README.read_text())
    shown = [b for b in blocks if b.lines and b.lines[0].strip().startswith(NEEDS_HUB)]
    return [b for b in blocks if b not in shown], shown


def is_setup(command: Command) -> bool:
    """A Quick start line: a virtual environment, installs, then the command."""
    return "pip install" in command.line


def ci_test_command() -> str:
    lines = CI_RUN.read_text().splitlines()
    (at,) = [i for i, line in enumerate(lines) if CI_MARKER in line]
    return lines[at + 1].strip()


def torch_pin(text: str) -> str:
    (pin,) = set(re.findall(r"pip install (?:--quiet )?(torch==\S+)", text))
    return pin


# --- the README -------------------------------------------------------------------------------------

def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


def test_readme_test_command_is_the_one_ci_runs():
    ci = ci_test_command()
    assert "pytest" in ci
    runs, _ = readme_blocks()
    lines = [code for block in runs for code, _ in shell_lines(block) if "pytest" in code]
    assert len(lines) == 1, lines
    parts = [p.strip() for p in lines[0].split("&&")]
    ci_parts = [p.strip() for p in ci.split("&&")]
    assert parts[-len(ci_parts):] == ci_parts, (lines[0], ci)
    # before it, what .ci/run does before it too: a virtual environment, then the same torch pin
    assert parts[:-len(ci_parts)] == ["python3 -m venv .venv", ". .venv/bin/activate",
                                      f"pip install {torch_pin(CI_RUN.read_text())}"]


def test_readme_demo_command_installs_as_ci_does_and_runs_the_tiny_recipe():
    runs, _ = readme_blocks()
    setups = [c for block in runs for c in commands_of(block) if is_setup(c)]
    assert [c.text for c in setups] == ["recipe-run recipes/tiny.toml"]
    parts = [p.strip() for p in setups[0].line.split("&&")]
    assert parts == ["python3 -m venv .venv", ". .venv/bin/activate", f"pip install {torch_pin(CI_RUN.read_text())}",
                     "pip install -e .", "recipe-run recipes/tiny.toml"]


def test_commands_shown_as_needing_the_hub_do():
    _, shown = readme_blocks()
    assert shown, f"no block starts with {NEEDS_HUB!r}"
    for block in shown:
        commands = commands_of(block)
        assert commands, block.lines
        for command in commands:
            recipes = [a for a in shlex.split(command.text)[1:] if a.endswith(".toml")]
            assert recipes, command.text
            for recipe in recipes:
                ids = model_ids(REPO / recipe)
                assert any(not i.startswith("tiny:") for i in ids), f"{recipe} runs offline: run it in the tests"


def model_ids(path: Path) -> list[str]:
    data = tomllib.loads(path.read_text())
    ids = []
    if "extends" in data:
        ids += model_ids(path.parent / data["extends"])
    ids += [data["model"]["id"]] if "id" in data.get("model", {}) else []
    for value in data.get("matrix", {}).get("axes", {}).get("model", []):
        ids.append(value if isinstance(value, str) else value["id"])
    return ids


def test_every_recipe_run_shown_in_the_readme_prose_is_a_command_the_tests_run():
    runs, shown = readme_blocks()
    commands = {c.text for block in runs + shown for c in commands_of(block)}
    spans = re.findall(r"`(recipe-run [^`]+)`", prose(README.read_text()))
    for span in spans:
        assert span in commands, f"`{span}` is shown in the README's text but in no command block"


def test_readme_layout_names_every_recipe_and_existing_folders():
    text = README.read_text()
    layout = text[text.index("## Project layout"):]
    (block,) = fenced_blocks(layout)[:1]
    listed = " ".join(block.lines)
    for recipe in sorted((REPO / "recipes").glob("*.toml")):
        assert recipe.name in listed, f"{recipe.name} is missing from the README's layout"
    folders = [m.group(1) for line in block.lines if (m := re.match(r"^(\S+)/\s", line))]
    assert len(folders) >= 6
    for folder in folders:
        assert (REPO / folder).is_dir(), folder


@pytest.mark.slow
def test_every_readme_command_runs_offline(tmp_path, monkeypatch, recipe_runner_cli):
    """Each ``recipe-run`` command of the README, in order, in a folder holding a copy of recipes/
    (so outputs/, the lock file and the schema land there), in this process."""
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    runs, _ = readme_blocks()
    commands = [c for block in runs for c in commands_of(block) if "--watch" not in c.text]
    assert len(commands) >= 10
    modes = {"--dry-run", "--compare", "--reproduce", "--lock", "--locked", "--schema", "--list-plugins"}
    assert modes <= {arg for c in commands for arg in shlex.split(c.text)}, "a mode is missing from the README"
    printed = {}
    for command in commands:
        args = shlex.split(command.text)[1:]
        redirect = None
        if ">" in args:
            at = args.index(">")
            assert at == len(args) - 2, command.text
            args, redirect = args[:at], args[at + 1]
        assert not any(ch in "".join(args) for ch in "|;$*?<`"), f"shell syntax the test does not run: {command.text}"
        result = recipe_runner_cli(*args)
        assert result.code == command.expected, f"{command.text}: exit {result.code}\n{result.out}\n{result.err}"
        assert "Traceback" not in result.err, command.text
        if redirect is not None:
            Path(redirect).write_text(result.out)
        printed.setdefault(command.text, []).append(result.out)
    # what the comments promise
    assert "nothing to do, nothing loaded" in printed["recipe-run recipes/tiny.toml"][1]
    (reproduced,) = [out for text, outs in printed.items() if "--reproduce" in text for out in outs]
    assert "pixel-identical" in reproduced
    assert json.loads((tmp_path / "recipe.schema.json").read_text())["properties"]["model"]
    assert (tmp_path / "recipes" / "tiny.lock").is_file()
    assert (tmp_path / "outputs" / "tiny" / "index.html").is_file()


@pytest.mark.slow
def test_the_readme_watch_sample_is_what_a_session_prints(tmp_path):
    """The README's ``--watch`` command, run for real: its output, numbers aside, is the sample."""
    text = README.read_text()
    blocks = fenced_blocks(text)
    (at,) = [i for i, b in enumerate(blocks) if any("--watch" in c.text for c in commands_of(b))]
    (command,) = commands_of(blocks[at])
    sample = blocks[at + 1].lines
    assert "`seeds = 2` changed\nto `seeds = 3`" in text, "the README says which edit its sample shows"
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    recipe = tmp_path / "recipes" / "tiny.toml"
    assert "\nseeds = 2\n" in recipe.read_text()
    log = tmp_path / "watch.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        # SIGINT back to its default in the child: a background job's shell hands it down ignored
        proc = subprocess.Popen([sys.executable, "-m", "recipe_runner", *shlex.split(command.text)[1:]],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_rounds(log, proc, 1)
        edited = tmp_path / "recipes" / ".tiny.toml.swp"
        edited.write_text(recipe.read_text().replace("\nseeds = 2\n", "\nseeds = 3\n"))
        os.replace(edited, recipe)
        wait_for_rounds(log, proc, 2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    printed = log.read_text().splitlines()
    assert printed[-1].startswith("interrupted") or printed[-1].startswith("watching"), printed
    printed = [line for line in printed if line.strip() and not line.startswith("interrupted")]
    assert [numbers_aside(line) for line in printed] == [numbers_aside(line) for line in sample]


def wait_for_rounds(log: Path, proc: subprocess.Popen, rounds: int, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while log.read_text().count("\nwatching ") < rounds:
        assert proc.poll() is None, f"--watch ended ({proc.returncode}):\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no round {rounds}:\n{log.read_text()}"
        time.sleep(0.05)


def numbers_aside(line: str) -> str:
    """Timings and memory change from run to run; counts do not."""
    return re.sub(r"\d+ MiB", "# MiB", re.sub(r"\d+\.\d+", "#", line))


# --- docs/cli.md ---------------------------------------------------------------------------------------

OPTION = r"(?<![\w/.-])(--?[a-zA-Z][\w-]*)"


def help_options(capsys: pytest.CaptureFixture[str]) -> set[str]:
    from recipe_runner.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    options = set()
    for line in text.splitlines():
        if re.match(r"^\s{2}-", line):  # an option's first line: "  -p MODULE, --plugin MODULE   help"
            header = re.split(r"\s{2,}", line.strip())[0]
            options |= set(re.findall(OPTION, header))
    return options


def test_cli_doc_has_every_option_of_help_and_no_other(capsys):
    options = help_options(capsys)
    assert {"--out", "--dry-run", "--watch", "-p", "--plugin", "--help", "--version"} <= options
    text = CLI_DOC.read_text()
    section = text[text.index("## Options"):]
    section = section[:section.index("\n## ", 1)]
    table = [row.split("|")[1] for row in section.splitlines() if row.startswith("| `")]
    documented = {opt for cell in table for opt in re.findall(OPTION, cell)}
    assert options - documented == set(), "options of --help missing from docs/cli.md's table"
    mentioned = set(re.findall(OPTION, re.sub(r"python3? -m\b", "", text)))
    assert mentioned - options == set(), "docs/cli.md names options recipe-run does not have"


def test_cli_doc_gives_every_exit_status():
    from recipe_runner.cli import main

    text = CLI_DOC.read_text()
    section = text[text.index("## Exit status"):]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == {main.EXIT_OK, main.EXIT_FAILED, main.EXIT_INVALID, main.EXIT_INTERRUPTED}


# --- docs/recipes.md ---------------------------------------------------------------------------------

def doc_sections(text: str) -> dict[str, set[str]]:
    """Each ``## `` section of a markdown file: the names in the first cell of its table rows."""
    sections: dict[str, set[str]] = {}
    heading = ""
    for line in prose(text).splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = set()
        elif line.startswith("| `") and heading:
            sections[heading] |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return sections


def schema_ref(spec: dict) -> str | None:
    for candidate in (spec, spec.get("additionalProperties") or {}, *spec.get("anyOf", []), *spec.get("allOf", [])):
        if isinstance(candidate, dict) and "$ref" in candidate:
            return candidate["$ref"].rsplit("/", 1)[-1]
    return None


def test_recipes_doc_has_every_key_of_the_format_and_every_built_in_optimization(recipe_runner_cli):
    result = recipe_runner_cli("--schema")
    assert result.code == 0, result.err
    schema = json.loads(result.out)
    sections = doc_sections(RECIPES_DOC.read_text())

    def section_of(table: str) -> str | None:
        found = [h for h in sections if f"`[{table}]`" in h or f"`[{table}." in h]
        return found[0] if found else None

    def keys_of(definition: str) -> set[tuple[str, str]]:  # (key, the definition of its table, if any)
        props = schema["$defs"][definition].get("properties", {})
        return {(key, schema_ref(spec) or "") for key, spec in props.items()}

    missing = []
    for table, spec in schema["properties"].items():
        section = section_of(table)
        if section is None:  # a plain key: a row of "Top level"
            if table not in sections["Top level"]:
                missing.append(table)
            continue
        todo = [schema_ref(spec)] if schema_ref(spec) else []
        while todo:  # a table's keys, and those of the tables in it, are rows of its section
            for key, inner in keys_of(todo.pop()):
                if key not in sections[section]:
                    missing.append(f"{table}: {key}")
                if inner:
                    todo.append(inner)
    assert not missing, f"keys without a row in docs/recipes.md: {missing}"

    listed = recipe_runner_cli("--list-plugins")
    assert listed.code == 0, listed.err
    built_in, current = set(), False
    for line in listed.out.splitlines():
        if not line.startswith(" "):
            current = "[built-in;" in line
        elif current and (m := re.match(r"\s+\[optimizations\] (\w+) ", line)):
            built_in.add(m.group(1))
    assert {"attention_slicing", "lora", "compile"} <= built_in
    rows = sections[section_of("optimizations") or "?"]
    assert built_in - rows == set(), "built-in optimizations without a row in docs/recipes.md's [optimizations]"


# --- links and names ---------------------------------------------------------------------------------

def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def slugs(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()).splitlines():
        if not (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(path):
    links = re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text()))
    for link in links:
        if re.match(r"^[a-z]+:", link):  # https:, mailto:, file:
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.exists(), f"{path.name}: {link}: no such file"
        assert REPO in resolved.parents or resolved == REPO, f"{path.name}: {link} points outside the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in slugs(resolved), f"{path.name}: {link}: no heading with that anchor"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_the_modules_and_scripts_the_docs_name_exist(path):
    text = path.read_text()
    for ref in set(re.findall(r"`((?:runner|plugins|bench)/[\w/.]*)`", text)):
        assert (REPO / ref).exists(), f"{path.name}: `{ref}` does not exist"
    for script in set(re.findall(r"python (bench/\w+\.py)", text)):
        assert (REPO / script).is_file(), f"{path.name}: {script} does not exist"
    import importlib

    for dotted in set(re.findall(r"`(recipe_runner(?:\.\w+)+)", text)):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{path.name}: `{dotted}`: {attr} not found"
                obj = getattr(obj, attr)
            break
        else:
            raise AssertionError(f"{path.name}: `{dotted}` is not importable")


def test_the_parameters_sample_in_provenance_md_is_what_an_image_of_that_job_carries():
    """docs/provenance.md shows the A1111 "parameters" text of a DPM++ job: it must be the text the
    writer embeds for that job (it once showed the class name where images say ``DPM++ 2M``)."""
    from recipe_runner.plan.labels import a1111_sampler
    from recipe_runner.plan.matrix import Job
    from recipe_runner.records.outputs import a1111_parameters

    block = next(b for b in fenced_blocks((REPO / "docs" / "provenance.md").read_text()) if any(line.startswith("Negative prompt:") for line in b.lines))
    text = "\n".join(block.lines).strip()
    prompt, negative, _ = text.splitlines()
    job = Job(index=0, prompt=prompt, seed=1, params={
        "negative_prompt": negative.removeprefix("Negative prompt: "), "num_inference_steps": 20,
        "guidance_scale": 7.5, "width": 512, "height": 512})
    shown = a1111_parameters(job, a1111_sampler("DPMSolverMultistepScheduler"), "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert shown == text
