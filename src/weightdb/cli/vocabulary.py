"""The one vocabulary every `weightdb` command speaks (the README's command table documents it,
tests/test_cli_vocabulary.py checks it).

Sizes and durations carry their unit in the value (``--memory 256MiB``, ``--timeout 30s``);
choices are a registry's names, checked at parse time and listed in ``--help``; files a command
writes are ``--output/-o``; ``--json`` means the same everywhere; ``--models`` is a comma list.
Usage lines name arguments in capitals and flags show no value type. Old spellings keep working
for one release through `vocabulary_command`, with a one-line warning on stderr.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from weightdb.units import parse_size


def parse_size_value(value: str | int) -> int:
    """Bytes written as people write them: 4096, 64KiB, 256MiB, 1GB."""
    try:
        return parse_size(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | float) -> float:
    """A duration with its unit, 500ms, 30s, 2m or 1h, as seconds; a bare number is seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise typer.BadParameter(f"cannot read duration {value!r}: write e.g. 500ms, 30s, 2m")
    return float(match.group(1)) * _SECONDS_PER_UNIT[match.group(2) or "s"]


def parse_positive_duration(value: str | float) -> float:
    """`parse_duration`, refusing zero (a time limit or timeout of nothing)."""
    seconds = parse_duration(value)
    if seconds == 0:
        raise typer.BadParameter(f"duration {value!r} must be longer than zero")
    return seconds


def size_option(*names: str, help_text: str, default: str | None = None) -> Any:
    """An option taking bytes with their unit (``256MiB``)."""
    return typer.Option(
        *names,
        parser=parse_size_value,
        metavar="SIZE",
        help=help_text,
        show_default=default or False,
    )


def duration_option(
    *names: str, help_text: str, default_seconds: float, allow_zero: bool = False
) -> Any:
    """An option taking a duration with its unit (``30s``, ``500ms``)."""
    shown = f"{default_seconds * 1000:g}ms" if default_seconds < 1 else f"{default_seconds:g}s"
    return typer.Option(
        *names,
        parser=parse_duration if allow_zero else parse_positive_duration,
        metavar="DURATION",
        help=help_text,
        show_default=shown,
    )


def registry_choice(names: Iterable[str]) -> Any:
    """A ``Literal`` of a registry's names (policies, packers, dedup methods) and its aliases
    (``weightdb`` for the defaults): typer checks it at parse time and lists them in
    ``--help``."""
    return Literal[(*names, *getattr(names, "aliases", ()))]


def output_option(help_text: str) -> Any:
    """The one way to name a file or directory a command writes: ``--output/-o PATH``."""
    return typer.Option("--output", "-o", metavar="PATH", help=help_text, show_default=False)


JSON_HELP = "Print JSON instead of a table."
JsonOption = Annotated[bool, typer.Option("--json", help=JSON_HELP)]

ModelsOption = Annotated[
    str | None,
    typer.Option("--models", help="Comma-separated model names (default: all)."),
]


def model_list(models: str | None) -> list[str] | None:
    """The names of a ``--models a,b,c`` value, or None for all."""
    return [m.strip() for m in models.split(",") if m.strip()] if models else None


@dataclass(frozen=True)
class OldSpelling:
    """An option's previous name; ``unit`` is appended to a bare value (``--timeout-s 5`` is
    ``--timeout 5s``)."""

    new: str
    unit: str = ""


def _rename(args: list[str], old: Mapping[str, OldSpelling]) -> list[str]:
    """``args`` with every old option spelling replaced, warning once per spelling."""
    renamed: list[str] = []
    pending_unit: str | None = None
    for arg in args:
        if pending_unit is not None:
            renamed.append(arg + pending_unit if _is_number(arg) else arg)
            pending_unit = None
            continue
        if arg == "--":
            renamed.extend(args[len(renamed) :])
            break
        name, equals, value = arg.partition("=")
        spelling = old.get(name)
        if spelling is None:
            renamed.append(arg)
            continue
        warn_deprecated(
            name, spelling.new + (f" with a unit, e.g. 5{spelling.unit}" if spelling.unit else "")
        )
        if equals:
            unit = spelling.unit if _is_number(value) else ""
            renamed.append(f"{spelling.new}={value}{unit}")
        else:
            renamed.append(spelling.new)
            pending_unit = spelling.unit
    return renamed


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _plain_help(command: TyperCommand | TyperGroup) -> None:
    """Flags show no ``<bool>`` type in help (they take no value)."""
    for param in command.params:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""


class VocabularyCommand(TyperCommand):
    """A command whose usage line names arguments in capitals (``SOURCE``, not ``{source}``),
    whose flags show no value type, and which accepts ``old_spellings`` with a warning."""

    old_spellings: Mapping[str, OldSpelling] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _rename(args, self.old_spellings))

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [self.options_metavar or "", *_argument_usage(self.get_params(ctx))]

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        return _flag_without_type(super().get_help_option(ctx))


class VocabularyGroup(TyperGroup):
    """A command group with the same help conventions as `VocabularyCommand`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        return _flag_without_type(super().get_help_option(ctx))


def _argument_usage(params: list[Any]) -> list[str]:
    pieces = []
    for param in params:
        if isinstance(param, TyperArgument) and not param.hidden:
            name = param.metavar or (param.name or "").upper()
            name += "..." if param.nargs != 1 else ""
            pieces.append(name if param.required else f"[{name}]")
    return pieces


def _flag_without_type(option: TyperOption | None) -> TyperOption | None:
    if option is not None:
        option.metavar = ""
    return option


def vocabulary_command(**old_spellings: OldSpelling) -> type[VocabularyCommand]:
    """The command class to pass as ``cls=``: keyword names are old option names with ``_``
    for ``-`` (``budget_bytes=OldSpelling("--memory")`` accepts ``--budget-bytes``)."""
    old = {"--" + name.replace("_", "-"): spelling for name, spelling in old_spellings.items()}
    return type("VocabularyCommand", (VocabularyCommand,), {"old_spellings": old})


def warn_deprecated(old: str, new: str) -> None:
    """One line on stderr: ``old`` works for this release only; say ``new``."""
    typer.echo(f"warning: {old} is deprecated and goes in the next release; use {new}", err=True)
