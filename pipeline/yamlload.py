"""Reading YAML for configs: strict about what PyYAML lets slip.

Plain ``yaml.safe_load`` silently keeps the last of two equal keys, reads ``1e-3`` as
the *string* ``"1e-3"`` (YAML 1.1 wants ``1.0e-3``) and raises a bare traceback for a
binary file. :func:`load_text` refuses duplicate keys (naming the key path and both
lines), reads ``1e-3`` as a float, and turns every failure into one
:class:`~pipeline.errors.ConfigError` line ``SOURCE: PATH: problem``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import ConfigError

_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (``1e-3``, ``5E+2``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def join_path(path: list) -> str:
    """``["model", "depth", 1]`` → ``"model.depth[1]"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _check_duplicates(node, source: str, path: list, seen_nodes: set) -> None:
    """Walk the composed node tree; a key given twice in one mapping is an error."""
    if id(node) in seen_nodes:  # an alias of a node already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                _check_duplicates(value_node, source, path, seen_nodes)
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                where = join_path([*path, key])
                raise ConfigError(f"{source}: {where}: duplicate key at line {line} "
                                  f"(first given at line {first[key]}); give each key once")
            first[key] = line
            _check_duplicates(value_node, source, [*path, key], seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, source, [*path, i], seen_nodes)


# the most nodes a document may expand to, aliases followed (a config has a few hundred):
# an "alias bomb" (9 levels of 9 aliases of the level below) expands to 9**9 nodes from a
# few hundred bytes, and every later walk over the loaded value pays for each
MAX_NODES = 100_000


def _check_expansion(node, source: str) -> None:
    """Count the nodes ``node`` expands to (each alias counts its whole target again), in
    time linear in the distinct nodes; refuse more than :data:`MAX_NODES`."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack = [(node, False)]
    while stack:
        n, done = stack.pop()
        if id(n) in sizes:
            continue
        if not done and id(n) in entered:   # reached again from inside itself
            raise ConfigError(f"{source}: a recursive alias (a value that contains itself); "
                              "write the values out")
        entered.add(id(n))
        kids = ([k for pair in n.value for k in pair] if isinstance(n, yaml.MappingNode)
                else list(n.value) if isinstance(n, yaml.SequenceNode) else [])
        if done:
            sizes[id(n)] = min(1 + sum(sizes.get(id(k), 0) for k in kids), MAX_NODES + 1)
            continue
        stack.append((n, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    if sizes[id(node)] > MAX_NODES:
        raise ConfigError(f"{source}: its aliases (*name) expand to more than {MAX_NODES:,} values "
                          "(an alias bomb?); write the values out or use fewer aliases")


def load_text(text: str, source: str, what: str = "not valid YAML") -> Any:
    """Parse one YAML document strictly; ``ConfigError`` (one line) if it is not valid."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)   # before any walk over the expanded value
        _check_duplicates(node, source, [], set())
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or ""
        raise ConfigError(f"{source}: {what}{where}{': ' + problem if problem else ''}") from None
    finally:
        loader.dispose()


def load_file(path) -> Any:
    """Read a config file as UTF-8 text and parse it strictly."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a YAML text file (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start} is not UTF-8)") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a YAML text file (it holds NUL bytes)")
    return load_text(text, str(path))
