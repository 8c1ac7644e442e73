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


def duplicate_key(node: yaml.MappingNode) -> yaml.Node | None:
    """The first key of a mapping node written twice, if any."""
    seen: set[Any] = set()
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode):
            if k.value in seen:
                return k
            seen.add(k.value)
    return None


class StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        dup = duplicate_key(node)
        if dup is not None:
            raise ConstructorError(None, None, f"duplicate key {dup.value!r}", dup.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)   # noqa: S506 - a SafeLoader
