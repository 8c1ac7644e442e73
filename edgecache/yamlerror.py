"""Where and why a YAML document people edit does not parse, in one place, for the
config and the image lists alike; and a loader for which a key written twice is an
error (PyYAML keeps the last one silently)."""
from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError


def where_and_why(e: yaml.YAMLError) -> tuple[int, str]:
    """The 1-based line the parser stopped at (1 when it does not say) and its reason."""
    mark = getattr(e, "problem_mark", None)
    return (mark.line + 1 if mark else 1), str(getattr(e, "problem", None) or e)


MERGE = "tag:yaml.org,2002:merge"


def duplicate_key(node: yaml.MappingNode) -> yaml.Node | None:
    """The first key of a mapping node written twice, if any: the same tag and value
    (`1` and `"1"` are two keys); merge keys (`<<`) are not keys."""
    seen: set[tuple[str, Any]] = set()
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag != MERGE:
            if (k.tag, k.value) in seen:
                return k
            seen.add((k.tag, k.value))
    return None


class StrictLoader(yaml.SafeLoader):
    """A key written twice is an error. Checked before a mapping's merges are flattened
    into it (once per node: a merged node is flattened, in place, by whoever merges it
    first), so what `<<` brings in may be overridden."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        checked = self.__dict__.setdefault("_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            dup = duplicate_key(node)
            if dup is not None:
                raise ConstructorError(None, None, f"duplicate key {dup.value!r}", dup.start_mark)
        super().flatten_mapping(node)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)   # noqa: S506 - a SafeLoader
