"""Rewriting manifest.yaml on purpose while keeping what the admin wrote.

`model quantize`, `model profile` and `model validate --write` each change one section of a
manifest. A plain YAML load and dump would drop every comment (the admin's notes on why a
threshold is what it is) and could reorder keys; ruamel.yaml's round-trip mode keeps comments,
key order and quoting, so only the changed section differs. The result is validated as a
manifest before it is written, atomically: a failure leaves the file as it was.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from appliance.paths import write_atomically
from appliance.runtime.errors import PackageError
from appliance.runtime.manifest import parse_manifest

_KEY_LINE = re.compile(r"^( *)[^\s#-][^#]*:\s*(#.*)?$")
_DASH_LINE = re.compile(r"^( *)- ")


def _yaml(text: str) -> YAML:
    """A round-trip handler that writes lists indented as `text` writes them, and never
    re-wraps a long line (a reference row, a long dataset description)."""
    handler = YAML(typ="rt")
    handler.preserve_quotes = True
    handler.width = 4096
    if _indents_lists(text):
        handler.indent(mapping=2, sequence=4, offset=2)
    else:
        handler.indent(mapping=2, sequence=2, offset=0)
    return handler


def _indents_lists(text: str) -> bool:
    """True when the first block list under a key is indented beyond that key (`key:` then
    `  - item`), as hand-written manifests often are; False for `- item` under the key."""
    lines = text.splitlines()
    for above, line in itertools.pairwise(lines):
        key, dash = _KEY_LINE.match(above), _DASH_LINE.match(line)
        if key and dash:
            return len(dash.group(1)) > len(key.group(1))
    return False


def edit_manifest(path: Path, change: Callable[[CommentedMap], None]) -> None:
    """Load `path` round-trip, let `change` edit the mapping in place, validate, write."""
    try:
        original = path.read_text(encoding="utf-8")
        data = _yaml(original).load(original)
    except (OSError, UnicodeDecodeError, YAMLError) as exc:
        raise PackageError(f"{path}: cannot read the manifest: {exc}") from exc
    if not isinstance(data, CommentedMap):
        raise PackageError(f"{path}: the manifest must be a mapping of fields")
    change(data)
    buffer = io.StringIO()
    _yaml(original).dump(data, buffer)
    text = buffer.getvalue()
    parse_manifest(text, str(path))
    write_atomically(path, text.encode("utf-8"), durable=True)


def section(data: CommentedMap, key: str) -> CommentedMap:
    """The mapping under `key`, made (at the end) when there is none."""
    value = data.get(key)
    if not isinstance(value, CommentedMap):
        value = CommentedMap()
        data[key] = value
    return value


def set_last(data: CommentedMap, key: str, value: Any) -> None:
    """Set `key` to `value` as the last key of `data` (moved there if it was elsewhere)."""
    if key in data:
        del data[key]
    data[key] = value


def plain(value: Any) -> Any:
    """Plain JSON-like data as round-trip nodes (mappings in block style)."""
    if isinstance(value, Mapping):
        node = CommentedMap()
        for key, item in value.items():
            node[key] = plain(item)
        return node
    if isinstance(value, (list, tuple)):
        return CommentedSeq([plain(item) for item in value])
    return value


def flow_rows(rows: Sequence[Sequence[float]]) -> CommentedSeq:
    """A list of rows written one flow-style row per line: `- [0.1, 0.2, ...]`."""
    out = CommentedSeq()
    for row in rows:
        line = CommentedSeq(row)
        line.fa.set_flow_style()
        out.append(line)
    return out
