"""Declaring config fields, and everything derived from the declarations.

A field of `pipeline.config` is declared once with `setting(...)`, which holds
its help text, its flag, its value for runs recorded before it existed and
whether a resume may change it. The functions below read those declarations
from a config class: the flags (`flag_fields`), the old-run fill-in
(`fields_added`), the resume check (`resumable_fields`) and the README's flag
list (`readme_flag_list`).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message says how to fix it."""


_NEW = object()  # `setting(old=...)` not given: the field has existed since the first runs.


def setting(
    default,
    help: str | None = None,  # noqa: A002 - absl's word for it.
    *,
    flag: bool | str = False,
    old=_NEW,
    resumable: bool = False,
    lower: float | None = None,
    upper: float | None = None,
    parse: typing.Callable[[str], typing.Any] | None = None,
):
    """A config field declared once, with everything derived from it.

    Args:
      default: the value of the `default` preset.
      help: the flag's help text.
      flag: True for a flag named after the field, a string for another name,
        False for none (`launch.common.define_config_flags` defines them).
      old: the value runs used before the field existed; their config.json is
        read with it (`fields_added`), so they resume and export as they trained.
      resumable: a resume may change it (`resumable_fields`).
      lower, upper: the flag's bounds.
      parse: turns the flag's text into the value (flags of other types).
    """
    metadata = {"help": help, "flag": flag, "resumable": resumable, "lower": lower, "upper": upper, "parse": parse}
    if old is not _NEW:
        metadata["old"] = old
    return dataclasses.field(default=default, metadata=metadata)


def parse_number_or_off(flag: str, example: str, off: tuple[str, ...] = ("off", "none")):
    """A flag parser: a number like `example`, or one of `off` for None."""

    def parse(text: str) -> float | None:
        if text.lower() in off:
            return None
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--{flag}={text!r}: give a number like {example}, or 'off'") from None

    return parse


def parse_filters(text: str) -> tuple[int, ...]:
    """`--filters`: integers like 32,64,128."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--filters={text}: give integers like 32,64,128") from None


def declared_fields(config_cls):
    """(section, field) of every field of every section of config class `config_cls`, in order."""
    hints = typing.get_type_hints(config_cls)
    return [
        (section.name, field)
        for section in dataclasses.fields(config_cls)
        if dataclasses.is_dataclass(hints[section.name])
        for field in dataclasses.fields(hints[section.name])
    ]


def fields_added(config_cls) -> dict:
    """ "section.field" -> the value runs used before the field existed (`setting(old=...)`)."""
    return {f"{s}.{f.name}": f.metadata["old"] for s, f in declared_fields(config_cls) if "old" in f.metadata}


def resumable_fields(config_cls) -> tuple[str, ...]:
    """ "section.field" of every field a resume may change (`setting(resumable=True)`)."""
    return tuple(f"{s}.{f.name}" for s, f in declared_fields(config_cls) if f.metadata.get("resumable"))


def flag_fields(config_cls) -> list[tuple[str, str, dataclasses.Field, typing.Any]]:
    """(flag name, section, field, type hint) of every field that has a flag, in declaration order."""
    section_types = typing.get_type_hints(config_cls)
    found = []
    for section, field in declared_fields(config_cls):
        flag = field.metadata.get("flag")
        if flag:
            hint = typing.get_type_hints(section_types[section])[field.name]
            found.append((field.name if flag is True else flag, section, field, hint))
    return found


def readme_flag_list(config_cls) -> str:
    """The README's list of config flags, derived from the declarations (choices and switches shown)."""
    shown = []
    for name, _, _, hint in flag_fields(config_cls):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        choices = typing.get_args(args[0]) if args and typing.get_origin(args[0]) is Literal else ()
        if typing.get_origin(hint) is Literal:
            choices = typing.get_args(hint)
        if choices:
            shown.append(f"`--{name}={'|'.join(choices)}`")
        elif hint is bool:
            shown.append(f"`--[no]{name}`")
        else:
            shown.append(f"`--{name}`")
    return ", ".join(shown)
