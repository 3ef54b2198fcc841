"""YAML for files and ``--set`` values from anyone: plain data only, bounded in size and depth.

:func:`safe_load` is ``yaml.safe_load`` (no Python objects) plus four refusals, each a one-line
:class:`YamlError` naming the line:

* **aliases** (``*name``, also ``<<: *name``): an alias bomb (nested aliases doubling at every
  level) expands to billions of nodes from a few hundred bytes; configs never need them;
* **duplicate keys** in a mapping (PyYAML silently keeps the later one);
* **documents over** :data:`MAX_BYTES` and **nesting deeper than** :data:`MAX_DEPTH` (a deep
  ``[[[[...]]]]`` would otherwise exhaust the recursion limit);
* more than one document in a stream.

:func:`read_text_file` reads a config file the same careful way: regular files only (a FIFO or
``/dev/zero`` would block or never end), at most :data:`MAX_BYTES`, UTF-8 text.

Example:
    >>> safe_load("a: 1\\nb: [2, 3]\\n")
    {'a': 1, 'b': [2, 3]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bnn_nested.io import first_line, read_regular_file

#: Largest YAML document accepted (bytes; parsing that much takes under a second). Shipped
#: configs are under 2 KiB.
MAX_BYTES = 1 << 17
#: Deepest nesting of mappings / sequences accepted.
MAX_DEPTH = 64


class YamlError(ValueError):
    """YAML that is refused (one line, names where)."""


def _where(node_or_event: Any) -> str:
    mark = getattr(node_or_event, "start_mark", None)
    return f"line {mark.line + 1}" if mark is not None else "somewhere"


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases, duplicate keys and deep nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: D102 (PyYAML hook)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlError(
                f"aliases (*{str(event.anchor)[:40]}) are not supported ({_where(event)}); "
                "write the value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlError(
                    f"nested deeper than {MAX_DEPTH} levels ({_where(self.peek_event())})"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: D102 (PyYAML hook)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: PyYAML reports it below
                    continue
                if duplicate:
                    raise YamlError(f"duplicate key {str(key)[:60]!r} ({_where(key_node)})")
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """Parse one YAML document of plain data (see the module doc for what is refused).

    Raises:
        YamlError: refused or invalid YAML (one line, at most a few hundred characters).
    """
    if len(text) > MAX_BYTES:
        raise YamlError(f"document of {len(text)} characters; at most {MAX_BYTES} are read")
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here
        return loader.get_single_data()
    except YamlError:
        raise
    except yaml.YAMLError as err:
        first = first_line(err, 200, "invalid YAML")
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise YamlError(f"not valid YAML: {first}{where}") from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps well below the limit
        raise YamlError(f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: str | Path, what: str = "file", limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes.

    Raises:
        FileNotFoundError: no such file.
        YamlError: not a regular file, too large, or not UTF-8 text (one line naming ``path``).
    """
    path = Path(path)
    data = read_regular_file(path, what, limit, YamlError)
    if b"\x00" in data:
        raise YamlError(f"{what} {path} is a binary file, not YAML text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise YamlError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); is it a binary file?"
        ) from None
