"""Command-line options derived from config dataclasses: the flag's default is the field's
default, so each default is defined once, in its dataclass.

An `Option` names a flag, the dataclass and field it sets, and a help text; `add_options`
adds a table of them to an argparse parser, and `collect` sorts parsed values back into
keyword arguments per dataclass, so the library (not only the CLI) maps flat option values
onto configs.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping


def field_default(owner: type, name: str):
    """The default of dataclass `owner`'s field `name`."""
    for f in dataclasses.fields(owner):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{owner.__name__}.{name} has no default.")
    raise TypeError(f"{owner.__name__} has no field {name!r}.")


@dataclasses.dataclass(frozen=True)
class Option:
    """One flag: `flag` ("--em-cycles") sets `owner.field`; its default is the field's.

    type: converts the flag's text (None: the type of the default). choices: allowed values.
    """

    flag: str
    owner: type
    field: str
    help: str
    type: Callable | None = None
    choices: tuple | None = None

    @property
    def dest(self) -> str:
        """The argparse destination: the flag without dashes, '-' as '_'."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def default(self):
        """The owner's default for the field."""
        return field_default(self.owner, self.field)


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add the options' flags; a bool field becomes a --flag / --no-flag pair."""
    for option in options:
        default = option.default
        if isinstance(default, bool):
            parser.add_argument(option.flag, action=argparse.BooleanOptionalAction,
                                default=default, help=option.help)
            continue
        kind = option.type or (type(default) if default is not None else str)
        parser.add_argument(option.flag, type=kind, default=default, choices=option.choices,
                            help=option.help)


def collect(values: Mapping, options: Iterable[Option]) -> dict[type, dict]:
    """{owner: {field: value}} for the options present in `values` (keyed by dest)."""
    out: dict[type, dict] = {}
    for option in options:
        if option.dest in values:
            out.setdefault(option.owner, {})[option.field] = values[option.dest]
    return out
