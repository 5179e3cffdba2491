#!/usr/bin/env python3
"""Generate the man pages and bash completions from the code, or check they are current.

    python hack/gen_docs.py          # rewrite man/*.[158] and completions/bash/*
    python hack/gen_docs.py --check  # exit 1 and list the files that differ

Command pages come from the click command tree through click-man; ocid.conf(5) comes from
the config schema (no generator exists for that). Hand-written sections (EXAMPLES, SEE ALSO,
FILES, ...) live in man/extra/<page>.<section> as roff and are appended to the generated page.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

import click
from click.shell_completion import BashComplete
from click_man.core import generate_man_page

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kpod.cli import cli as kpod_cli  # noqa: E402
from ocic.cli import cli as ocic_cli  # noqa: E402
from ocid import RELEASE_DATE, __version__  # noqa: E402
from ocid.cli import cli as ocid_cli  # noqa: E402
from ocid.config.schema import SECTIONS, Config  # noqa: E402

TOOLS: tuple[tuple[str, click.Group, str], ...] = (
    ("ocid", ocid_cli, "8"),
    ("ocic", ocic_cli, "1"),
    ("kpod", kpod_cli, "1"),
)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("-", "\\-")


def _with_extra(page: str, name: str, section: str) -> str:
    extra = ROOT / "man" / "extra" / f"{name}.{section}"
    if extra.exists():
        page = page.rstrip("\n") + "\n" + extra.read_text()
    return page if page.endswith("\n") else page + "\n"


def command_pages(name: str, group: click.Group, section: str) -> dict[str, str]:
    """One page for the tool and one per top-level command or command group.

    A group's page lists its subcommands with their options, so `ocic-pod(1)` covers
    `ocic pod create|stop|...`.
    """
    pages: dict[str, str] = {}
    root_ctx = click.Context(group, info_name=name)

    def page(ctx: click.Context) -> str:
        text = generate_man_page(ctx, version=__version__, date=RELEASE_DATE)
        # click-man always writes section 1; ocid is a system daemon, section 8.
        text = text.replace(f'"{ctx.command_path.upper()}" "1"',
                            f'"{ctx.command_path.upper()}" "{section}"', 1)
        text = text.replace(r"for full documentation on the", "for the")
        text = text.replace("\n.SH COMMANDS\n.PP\n", "\n.SH COMMANDS\n")
        # NAME gets the whole first line of the help, not click-man's 45-character cut.
        first_line = (ctx.command.help or "").strip().splitlines()[0]
        lines = text.split("\n")
        lines[lines.index(".SH NAME") + 1] = (
            f"{ctx.command_path.replace(' ', chr(92) + '-')} \\- {_escape(first_line)}")
        text = "\n".join(lines)
        text = text.replace("(1)\\fP for the", f"({section})\\fP for the")
        return text

    def subcommand_sections(ctx: click.Context) -> str:
        parts = []
        command = ctx.command
        for sub_name, sub in getattr(command, "commands", {}).items():
            sub_ctx = click.Context(sub, info_name=sub_name, parent=ctx)
            parts.append(f'.SH "{_escape(sub_ctx.command_path.upper())}"')
            parts.append(f".B {_escape(sub_ctx.command_path)}")
            parts.append(_escape(" ".join(sub.collect_usage_pieces(sub_ctx))))
            parts.append(".PP")
            parts.append((sub.help or "").strip().replace("\n\n", "\n.PP\n"))
            for param in sub.params:
                record = param.get_help_record(sub_ctx) if isinstance(param, click.Option) else None
                if record:
                    parts.append(".TP")
                    parts.append(f"\\fB{_escape(record[0])}\\fP")
                    parts.append(record[1])
        return "\n".join(parts) + "\n" if parts else ""

    pages[f"{name}.{section}"] = _with_extra(page(root_ctx), name, section)
    for sub_name, command in group.commands.items():
        ctx = click.Context(command, info_name=sub_name, parent=root_ctx)
        page_name = f"{name}-{sub_name}"
        text = page(ctx)
        if isinstance(command, click.Group):
            text = text.rstrip("\n") + "\n" + subcommand_sections(ctx)
        pages[f"{page_name}.{section}"] = _with_extra(text, page_name, section)
    return pages


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _type_name(tp: object) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return "array of strings"
    if origin is dict:
        return "tables"
    return {str: "string", int: "integer", bool: "boolean"}.get(tp, str(tp))  # type: ignore[arg-type]


def _field_entries(cls: type, instance: object) -> list[str]:
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        lines.append(".TP")
        if isinstance(value, dict):
            lines.append(f"\\fB{f.name}\\fP ({_type_name(hints[f.name])})")
        else:
            lines.append(f"\\fB{f.name}\\fP = {_escape(_toml_value(value))} ({_type_name(hints[f.name])})")
        help_text = f.metadata["help"]
        if f.metadata.get("flag"):
            help_text += f" Set by the {f.metadata['flag']} flag of ocid(8)."
        if f.metadata.get("choices"):
            help_text += f" One of: {', '.join(f.metadata['choices'])}."
        lines.append(_escape(help_text))
    return lines


def config_page() -> str:
    """ocid.conf(5): every key of every table with its type, default and meaning."""
    defaults = Config()  # not finalized: derived paths show as "", as documented in the help
    lines = [
        f'.TH "OCID.CONF" "5" "{RELEASE_DATE}" "{__version__}" "ocid.conf Manual"',
        ".SH NAME",
        "ocid.conf \\- configuration file of the ocid container runtime daemon",
        ".SH DESCRIPTION",
        "ocid reads a TOML file, by default \\fI/etc/ocid/ocid.conf\\fP (see the \\-\\-config "
        "flag of ocid(8)). Every key is optional; a missing key keeps the default shown here. "
        "Flags given to ocid override the file. An unknown key, a value of the wrong type or "
        "invalid TOML stops ocid with a message naming the key and line.",
        ".PP",
        "\\fBocid config\\fP prints the effective configuration in this format, with comments; "
        "\\fBocid config \\-\\-default\\fP prints the defaults.",
    ]
    for table, attr in SECTIONS:
        section = getattr(defaults, attr)
        lines.append(f'.SH "[{".".join(table)}] TABLE"')
        lines.append(_escape((type(section).__doc__ or "").strip().split(": ", 1)[-1]))
        lines.extend(_field_entries(type(section), section))
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, dict) and value:
                item_cls = type(next(iter(value.values())))
                lines.append(f'.SH "[{".".join(table)}.{f.name}.NAME] TABLES"')
                lines.append(_escape(f"Defaults: {', '.join(value)}. Each table holds:"))
                lines.extend(_field_entries(item_cls, item_cls()))
    page = "\n".join(lines) + "\n"
    return _with_extra(page, "ocid.conf", "5")


def completion_script(name: str, group: click.Group) -> str:
    """click's own bash completion script for ``name``."""
    env_var = f"_{name.upper()}_COMPLETE"
    return BashComplete(group, {}, name, env_var).source()


def generated_files() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for name, group, section in TOOLS:
        for page_name, text in command_pages(name, group, section).items():
            files[ROOT / "man" / page_name] = text
        files[ROOT / "completions" / "bash" / name] = completion_script(name, group)
    files[ROOT / "man" / "ocid.conf.5"] = config_page()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files that differ")
    args = parser.parse_args()
    files = generated_files()
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    generated_man = {p for p in files if p.parent.name == "man"}
    orphans = [p for p in (ROOT / "man").glob("*.[158]") if p not in generated_man]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}")
        for path in orphans:
            print(f"not generated by any command: {path.relative_to(ROOT)}")
        return 1 if stale or orphans else 0
    for path in orphans:
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
