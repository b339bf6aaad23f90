"""README's settings tables say what the code does: every variable and project setting, each with its default."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from freesel_backend.server.settings import ProjectSettings, Settings

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| `(?P<default>[^`]*)` \|", re.MULTILINE)


def _rows(first_name: re.Pattern[str]) -> dict[str, str]:
    rows = ROW.finditer(README.read_text(encoding="utf-8"))
    return {row["name"]: row["default"] for row in rows if first_name.fullmatch(row["name"])}


def environment_rows() -> dict[str, str]:
    return _rows(re.compile(r"[A-Z][A-Z0-9_]+"))


def project_rows() -> dict[str, str]:
    return _rows(re.compile("|".join(ProjectSettings.field_names())))


def test_readme_lists_every_environment_variable_and_no_other() -> None:
    assert sorted(environment_rows()) == sorted(Settings.environment_variables())


@pytest.mark.parametrize("variable", sorted(Settings.environment_variables()))
def test_readme_default_of_each_variable_is_the_code_default(variable: str) -> None:
    written, default = environment_rows()[variable], Settings.environment_variables()[variable]
    if written == "unset":
        assert default in (None, ""), f"README says {variable} is unset by default; the code defaults to {default!r}"
    else:
        as_typed = Settings.from_env({variable: written})
        assert as_typed == Settings(), f"README's default of {variable} is {written!r}; the code's is {default!r}"


def test_readme_mentions_the_label_studio_host_alias() -> None:
    assert "`LABEL_STUDIO_HOST`" in README.read_text(encoding="utf-8")


def test_readme_lists_every_project_setting_with_its_default() -> None:
    written = project_rows()
    defaults = json.loads(json.dumps(dataclasses.asdict(ProjectSettings())))
    assert sorted(written) == sorted(defaults)
    for name, value in written.items():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare word such as typical
        assert parsed == defaults[name], f"README's default of {name} is {value!r}; the code's is {defaults[name]!r}"
