"""Editing a list file in place: `pin add|rm`, `prefetch add|rm`.

Line-based, so comments, order and formatting of the rest of the file survive:
an added entry is one new line after the last entry, a removed entry loses just
its own lines. Writes are atomic (temp file, fsync, rename) and the result is
parsed again before it replaces the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection

import yaml

from edgecache.atomic import write_text_atomic
from edgecache.errors import ListError
from edgecache.sync.lists import ImageRef, ListProblem, parse_ref, parse_text
from edgecache.yamlerror import where_and_why


def _items(text: str, file: str) -> tuple[yaml.Node | None, yaml.Node | None]:
    """The `images` key node and its value node."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        line, why = where_and_why(e)
        raise ListError(ListProblem(file, line, f"does not parse: {why}")) from None
    if root is None:
        return None, None
    if not isinstance(root, yaml.MappingNode):
        raise ListError(ListProblem(file, 1, "expected a mapping with `images:`"))
    for k, v in root.value:
        if isinstance(k, yaml.ScalarNode) and k.value == "images":
            return k, v
    return None, None


def _read(path: Path) -> str:
    with open(path, newline="") as f:        # keep CRLF files CRLF
        return f.read()


def _last_line(node: yaml.Node) -> int:
    """The last line holding the node's own content (block collections end where the
    next token starts, past any blank and comment lines: look at the leaves instead)."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False):
        end = node.end_mark
        return end.line if end.column > 0 else end.line - 1
    children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
    return max((_last_line(c) for c in children), default=node.start_mark.line)


def _item_ref(item: yaml.Node, upstreams: Collection[str] | None) -> ImageRef | None:
    value = item.value if isinstance(item, yaml.ScalarNode) else next(
        (v.value for k, v in item.value if isinstance(k, yaml.ScalarNode) and k.value == "ref"
         and isinstance(v, yaml.ScalarNode)), None) if isinstance(item, yaml.MappingNode) else None
    if value is None:
        return None
    try:
        return parse_ref(value, upstreams)
    except ValueError:
        return None


def add(path: Path, reference: str, upstreams: Collection[str] | None = None) -> bool:
    """Append an entry; False (and no write) if the reference is already listed."""
    ref = parse_ref(reference, upstreams)           # refuse a bad reference before touching the file
    text = _read(path) if path.exists() else ""
    key, items = _items(text, str(path))
    if isinstance(items, yaml.SequenceNode) and any(
            _item_ref(i, upstreams) == ref for i in items.value):
        return False
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\r\n" if lines[0].endswith("\r\n") else "\n"
    new = f"{reference.strip()}"
    if key is None:
        lines.append(f"images:\n  - {new}\n")
    elif isinstance(items, yaml.SequenceNode) and items.value and not items.flow_style:
        first, last = items.value[0], items.value[-1]
        # Copy the first entry's own "  -   " prefix, whatever its spacing.
        src = lines[first.start_mark.line]
        dash = src.rfind("-", 0, first.start_mark.column)
        prefix = src[:first.start_mark.column] if dash >= 0 else "  - "
        eol = "\r\n" if src.endswith("\r\n") else "\n"
        lines.insert(_last_line(last) + 1, f"{prefix}{new}{eol}")
    elif isinstance(items, yaml.SequenceNode) and items.flow_style and items.value:
        raise ListError(ListProblem(str(path), items.start_mark.line + 1,
                                    "a flow-style list ([a, b]) is not edited; write one entry per line"))
    else:
        # `images:` with nothing (or `[]`) after it: the entry goes on the next line.
        line = key.start_mark.line
        lines[line] = lines[line][: key.start_mark.column] + "images:\n"
        lines.insert(line + 1, f"{' ' * (key.start_mark.column + 2)}- {new}\n")
    _check_and_write(path, "".join(lines), upstreams)
    return True


def remove(path: Path, reference: str, upstreams: Collection[str] | None = None) -> int:
    """Remove every entry for reference; returns how many went."""
    ref = parse_ref(reference, upstreams)
    if not path.exists():
        return 0
    text = _read(path)
    _key, items = _items(text, str(path))
    if not isinstance(items, yaml.SequenceNode):
        return 0
    doomed = [i for i in items.value if _item_ref(i, upstreams) == ref]
    if not doomed:
        return 0
    if items.flow_style:
        raise ListError(ListProblem(str(path), items.start_mark.line + 1,
                                    "a flow-style list ([a, b]) is not edited; write one entry per line"))
    lines = text.splitlines(keepends=True)
    drop: set[int] = set()
    for item in doomed:
        drop.update(range(item.start_mark.line, _last_line(item) + 1))
    kept = [ln for n, ln in enumerate(lines) if n not in drop]
    _check_and_write(path, "".join(kept), upstreams)
    return len(doomed)


def _check_and_write(path: Path, text: str, upstreams: Collection[str] | None) -> None:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError:
        raise ListError(ListProblem(str(path), 1, "the edit would not parse; file left as it was")) from None
    parse_text(text, str(path), upstreams)
    write_text_atomic(path, text)
