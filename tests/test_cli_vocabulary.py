"""One CLI vocabulary: every command's options follow the rules of the README's command table,
old spellings still work for one release with a warning, and values carry their units."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
import typer
import typer.main
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.testing import CliRunner

from weightdb.caching.simulate import POLICY_NAMES
from weightdb.cli import app
from weightdb.cli.serve import OLD_SERVE_SPELLINGS
from weightdb.cli.vocabulary import (
    JSON_HELP,
    OldSpelling,
    VocabularyGroup,
    _rename,
    parse_duration,
    parse_size_value,
    vocabulary_command,
)
from weightdb.dedup import METHODS
from weightdb.packing import ALGORITHMS
from weightdb.storage.policies import POLICIES
from weightdb.zoo.build import SIZES

runner = CliRunner()
WIDE = {"COLUMNS": "300"}

UNIT_IN_NAME = re.compile(r"-(s|ms|us|secs?|seconds?|minutes?|hours?|bytes|[kmgt]i?b|pages)$")
OTHER_OUTPUT_NAMES = {"--out", "--layout", "--path", "--dest", "--output-file", "--out-dir"}
CHOICES = {  # option -> the registries whose names it may offer
    "--policy": [POLICIES, POLICY_NAMES],
    "--algorithm": [ALGORITHMS],
    "--method": [METHODS],
    "--size": [SIZES],
}
DURATION_WORDS = ("timeout", "time-limit", "wait")


def commands(command: TyperCommand | TyperGroup, path: tuple[str, ...] = ()) -> Iterator:
    """Every (path, command) below ``command``, groups included, hidden ones too."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def help_text(application: typer.Typer, path: tuple[str, ...]) -> str:
    result = runner.invoke(application, [*path, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def violations(application: typer.Typer) -> list[str]:
    """Where ``application`` breaks the vocabulary, one line per broken rule."""
    found = []
    json_helps = set()
    for path, command in commands(typer.main.get_command(application)):
        where = " ".join(path) or "weightdb"
        shown = "" if command.hidden else help_text(application, path)
        if any("{" in line for line in shown.splitlines() if "Usage:" in line):
            found.append(f"{where}: usage names an argument in braces")
        if "<bool>" in shown:
            found.append(f"{where}: a flag shows a <bool> type")
        for param in command.params:
            if isinstance(param, TyperArgument) or param.hidden:
                continue
            names = [n for n in param.opts if n.startswith("--")]
            for name in names:
                if UNIT_IN_NAME.search(name):
                    found.append(f"{where} {name}: a unit in the name, not in the value")
                if name.startswith("--budget"):
                    found.append(f"{where} {name}: say --memory (bytes) or --max-drop (accuracy)")
                if name in OTHER_OUTPUT_NAMES:
                    found.append(f"{where} {name}: files a command writes are --output/-o")
                if name == "--output" and "-o" not in param.opts:
                    found.append(f"{where} --output: without -o")
                if name in CHOICES:
                    found += _choice_violations(where, name, param, shown)
                if name == "--memory" and param.metavar != "SIZE":
                    found.append(f"{where} --memory: not a SIZE with its unit")
                if any(word in name for word in DURATION_WORDS) and param.metavar != "DURATION":
                    found.append(f"{where} {name}: not a DURATION with its unit")
                if name == "--models" and "Comma-separated" not in (param.help or ""):
                    found.append(f"{where} --models: not a comma list")
                if name == "--json":
                    json_helps.add(param.help)
    if len(json_helps) > 1:
        found.append(f"--json is explained {len(json_helps)} ways: {sorted(json_helps)}")
    return found


def _choice_violations(where: str, name: str, param: TyperOption, shown: str) -> list[str]:
    descriptor = param.type_descriptor
    if not descriptor.is_choice:
        return [f"{where} {name}: free text, not a choice checked at parse time"]
    choices = tuple(descriptor.choices)
    found = []
    offered = [{*registry, *getattr(registry, "aliases", ())} for registry in CHOICES[name]]
    if set(choices) not in offered:  # a registry's names and its aliases ("weightdb")
        found.append(f"{where} {name}: choices {choices} are not a registry's names")
    if "|".join(choices) not in shown:
        found.append(f"{where} {name}: --help does not list the choices")
    return found


def test_every_command_speaks_the_vocabulary() -> None:
    assert violations(app) == []


def test_the_walk_finds_units_in_names_and_free_text_choices() -> None:
    bad = typer.Typer(cls=VocabularyGroup, add_completion=False)

    @bad.command("run", cls=vocabulary_command())
    def run(
        timeout_seconds: Annotated[float, typer.Option()] = 1.0,
        policy: Annotated[str, typer.Option()] = "lru",
        out: Annotated[Path | None, typer.Option()] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """A command that breaks the rules."""

    @bad.command("other", cls=vocabulary_command())
    def other(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
        """Another."""

    assert violations(bad) == [
        "run --timeout-seconds: a unit in the name, not in the value",
        "run --timeout-seconds: not a DURATION with its unit",
        "run --policy: free text, not a choice checked at parse time",
        "run --out: files a command writes are --output/-o",
        f"--json is explained 2 ways: {sorted(['Print JSON.', JSON_HELP])}",
    ]


def test_usage_names_arguments_in_capitals_and_policies_are_listed() -> None:
    shown = help_text(app, ("import",))
    assert "import [OPTIONS] SOURCE" in shown and "{source}" not in shown
    assert "|".join(POLICIES) in help_text(app, ("predict",))


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30.0), ("2m", 120.0), ("1.5", 1.5), ("1h", 3600)]
)
def test_durations_carry_their_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_unreadable_values_name_the_fix() -> None:
    with pytest.raises(
        typer.BadParameter, match=r"cannot read duration '5 sec': write e\.g\. 500ms"
    ):
        parse_duration("5 sec")
    with pytest.raises(typer.BadParameter, match="cannot read size 'lots'"):
        parse_size_value("lots")
    result = runner.invoke(app, ["pack", "--time-limit", "0s"], env=WIDE)
    assert result.exit_code == 2 and "duration '0s' must be longer than zero" in result.output


def test_old_spellings_are_renamed_with_one_warning_each(capsys) -> None:
    old = {"--" + k.replace("_", "-"): v for k, v in OLD_SERVE_SPELLINGS.items()}
    args = ["--timeout-s", "5", "--max-wait-ms=3", "--budget", "1GiB", "--port", "1"]
    assert _rename(args, old) == [
        "--timeout",
        "5s",
        "--max-wait=3ms",
        "--memory",
        "1GiB",
        "--port",
        "1",
    ]
    assert capsys.readouterr().err.splitlines() == [
        "warning: --timeout-s is deprecated and goes in the next release; use --timeout with a "
        "unit, e.g. 5s",
        "warning: --max-wait-ms is deprecated and goes in the next release; use --max-wait with "
        "a unit, e.g. 5ms",
        "warning: --budget is deprecated and goes in the next release; use --memory",
    ]
    assert _rename(["--", "--budget"], {"--budget": OldSpelling("--memory")}) == ["--", "--budget"]


TRACE = {
    "pages": {
        "p1": {"models": ["a"], "bytes": 1024},
        "p2": {"models": ["a", "b"], "bytes": 1024},
        "p3": {"models": ["b"], "bytes": 1024},
    },
    "requests": [
        {"model": m, "page": p}
        for m, p in [("a", "p1"), ("a", "p2"), ("b", "p2"), ("b", "p3"), ("a", "p1"), ("a", "p2")]
    ],
}


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(TRACE))
    return path


def test_old_cache_and_packing_spellings_still_work_and_warn(trace: Path, tmp_path: Path) -> None:
    new = runner.invoke(app, ["cache", "simulate", str(trace), "--memory", "2KiB", "--json"])
    old = runner.invoke(app, ["cache", "simulate", str(trace), "--budget-bytes", "2KiB", "--json"])
    assert old.exit_code == new.exit_code == 0
    assert old.stderr == (
        "warning: --budget-bytes is deprecated and goes in the next release; use --memory\n"
    )
    assert json.loads(old.stdout) == json.loads(new.stdout)
    pages = runner.invoke(app, ["cache", "simulate", str(trace), "--budget-pages", "2", "--json"])
    assert pages.exit_code == 0 and json.loads(pages.stdout)["budget_pages"] == 2
    assert "--budget-pages is deprecated" in pages.stderr

    instance = tmp_path / "tiny.json"
    instance.write_text(json.dumps({"models": {"a": [1, 2, 3], "b": [2, 3]}, "blocks_per_page": 2}))
    layout = tmp_path / "layout.json"
    args = ["packing", "solve", str(instance), "-a", "greedy1", "--layout", str(layout), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: `weightdb packing` is deprecated and goes in the next release; use "
        "`weightdb packing-study`",
        "warning: --layout is deprecated and goes in the next release; use --output",
    ]
    assert json.loads(layout.read_text()) == {"0": [2, 3], "1": [1]}


def test_cache_compare_says_what_an_online_bound_of_zero_means(trace: Path) -> None:
    roomy = runner.invoke(app, ["cache", "compare", str(trace), "--memory", "8KiB"], env=WIDE)
    said = " ".join(roomy.stdout.split())
    assert "0.000 x opt" not in said
    assert (
        "online bound: 0 B: the pool holds every page the trace reads, so beyond the reads that "
        "first fill it (opt's 3.0 KiB) no policy need read anything" in said
    )
    tight = runner.invoke(app, ["cache", "compare", str(trace), "--memory", "2KiB"], env=WIDE)
    assert "online bound: 1.0 KiB (0.250 x opt), what any policy" in " ".join(tight.stdout.split())


def test_cache_commands_need_a_memory_size(trace: Path) -> None:
    result = runner.invoke(app, ["cache", "simulate", str(trace)], env=WIDE)
    assert result.exit_code == 2
    assert "the simulated pool needs a memory budget: pass --memory SIZE" in result.output


def test_demo_help_describes_the_current_tour() -> None:
    shown = " ".join(help_text(app, ("demo",)).split())
    assert "Tour storage, out-of-memory serving against PyTorch, SQL and HTTP" in shown
    assert "full|small" in shown  # the scales, listed as choices
    assert "repack" not in shown and "two models that share weights" not in shown
