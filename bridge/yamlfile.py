"""Reading the user's YAML files (config, metric definitions) with located errors."""

from __future__ import annotations

from pathlib import Path

import yaml

from bridge.errors import ConfigError


def read_yaml(file_name: str, what: str) -> object:
    """Parse a YAML file; errors name the file and position, never quote its content."""
    try:
        text = Path(file_name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file_name}: cannot read the {what}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position and the problem: the offending line may hold a password.
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1} column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{file_name}:{line}: not valid YAML: {problem}") from None
