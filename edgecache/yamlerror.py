"""Where and why a YAML document people edit does not parse, in one place, for the
config and the image lists alike."""
from __future__ import annotations

import yaml


def where_and_why(e: yaml.YAMLError) -> tuple[int, str]:
    """The 1-based line the parser stopped at (1 when it does not say) and its reason."""
    mark = getattr(e, "problem_mark", None)
    return (mark.line + 1 if mark else 1), str(getattr(e, "problem", None) or e)
