"""Reading YAML files the admin edits (the configuration, model manifests): UTF-8 text, no
key written twice, and errors that name the file, the line and the dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from appliance.errors import ApplianceError


def read_text(path: Path, what: str, error: type[ApplianceError]) -> str:
    """The UTF-8 text of a YAML file, or `error` saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text") from exc


def parse_yaml(text: str, source: str, error: type[ApplianceError]) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers) and the plain data of YAML `text`."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader), yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        detail = getattr(exc, "problem", None) or str(exc)  # without YAML's source excerpt
        raise error(f"{source}{line}: not valid YAML: {detail}") from exc
    except RecursionError as exc:
        raise error(f"{source}: not valid YAML: nested too deeply") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a date like 2026-13-45
        raise error(f"{source}: not valid YAML: {exc}") from exc


class _UniqueKeys(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (YAML would silently keep
    the last one, so a site's edit could be overridden by a forgotten line further down)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain word or number", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is written twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def describe_errors(exc: ValidationError, root: yaml.Node | None, source: str) -> str:
    """One line per validation error: `source:line: dotted.key: message`."""
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-")]
        key = ".".join(str(p) for p in loc) or "(top level)"
        unknown = err["type"] == "extra_forbidden"
        line = line_of(root, loc, at_key=unknown)
        message = "unknown key" if unknown else err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}:{line}: {key}: {message}")
    return "\n".join(lines)


def line_of(node: yaml.Node | None, loc: list[Any], at_key: bool = False) -> int:
    """The 1-based line of the deepest node along `loc` that exists in the file.

    With `at_key`, the line of the last key itself (an unknown key is reported where it is
    written, not where its value starts).
    """
    line = 1
    for index, part in enumerate(loc):
        if node is None:
            break
        line = node.start_mark.line + 1
        key, value = _child(node, part)
        last = index == len(loc) - 1
        node = key if (last and at_key and key is not None) else value
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: Any) -> tuple[yaml.Node | None, yaml.Node | None]:
    """(key node, value node) of `part` inside a mapping or sequence node."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key, value
        return None, None
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None, None
