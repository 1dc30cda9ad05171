"""MkDocs hook: `::: escnet.NAME` in the docs means the object escnet exports as NAME.

escnet's top-level names are imported lazily (`escnet._EXPORTS` maps each to its module), which a
static reader such as mkdocstrings' griffe cannot follow. This hook rewrites each such directive to
the module that defines the object today, read from `escnet._EXPORTS`, so the API reference
follows the package when a module moves. Importing `escnet` loads no torch.
"""
from __future__ import annotations

import re

_DIRECTIVE = re.compile(r"^::: escnet\.(\w+)\s*$", re.M)


def on_page_markdown(markdown, page, config, files):
    from escnet import _EXPORTS

    def resolve(match: re.Match) -> str:
        name = match.group(1)
        if name not in _EXPORTS:
            raise KeyError(f"{page.file.src_path}: escnet exports no {name!r} (escnet._EXPORTS)")
        return f"::: {_EXPORTS[name]}.{name}"

    return _DIRECTIVE.sub(resolve, markdown)
