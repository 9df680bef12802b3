"""Reading an operator's YAML file: every way it can go wrong is one line that names the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from klpfleet.errors import UsageError


def load_yaml(path: str | Path) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
