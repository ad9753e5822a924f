"""A structure-aware mutator for harnesses whose input is mostly JSON.

Byte-level mutation turns almost every JSON input into a syntax error, so
the typed mapping behind the parser is rarely reached. This mutator parses
the input, changes one node (a value of another type, a boundary number, a
date- or UUID-like string, a known field name added or removed, a url
swapped) and serialises it again; one time in four, or when the input is not
JSON, it leaves the work to libFuzzer's byte mutations.
"""

from __future__ import annotations

import json
import random
from typing import Any

import atheris

STRINGS = (
    "",
    "a",
    "admin",
    "user",
    "low",
    "high",
    "x" * 40,
    "é☃\U0001f600",
    "\x00",
    "2024-01-02",
    "2024-01-02T03:04:05Z",
    "2024-13-45",
    "12345678-1234-5678-1234-567812345678",
    "not-a-uuid",
    "1",
    "true",
    "null",
    "NaN",
    "Infinity",
)
NUMBERS = (0, 1, -1, 3, 2**31, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e308, 1e-308, 3.0)


def _random_value(rng: random.Random, names: tuple[str, ...], depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 2 else 4)
    if kind == 0:
        return rng.choice(NUMBERS)
    if kind == 1:
        return rng.choice(STRINGS)
    if kind == 2:
        return rng.choice((True, False))
    if kind == 3:
        return None
    if kind == 4:
        return [_random_value(rng, names, depth + 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(names): _random_value(rng, names, depth + 1) for _ in range(rng.randrange(4))
    }


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every node of a JSON value."""
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _nodes(v, path + (i,))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        copy[head] = _replace(value[head], rest, new)
        return copy
    copy = list(value)
    copy[head] = _replace(value[head], rest, new)
    return copy


def mutate_json(
    value: Any, rng: random.Random, names: tuple[str, ...], urls: tuple[str, ...]
) -> Any:
    path = rng.choice(_nodes(value))
    node = value
    for step in path:
        node = node[step]
    choice = rng.randrange(6)
    if choice == 0 and isinstance(node, dict):  # add or drop a field
        node = dict(node)
        if node and rng.randrange(2):
            node.pop(rng.choice(list(node)))
        else:
            node[rng.choice(names)] = _random_value(rng, names)
        return _replace(value, path, node)
    if choice == 1 and isinstance(node, list):  # grow or shrink a list
        node = list(node)
        if node and rng.randrange(2):
            node.pop(rng.randrange(len(node)))
        else:
            node.insert(rng.randrange(len(node) + 1), _random_value(rng, names))
        return _replace(value, path, node)
    if choice == 2 and isinstance(value, dict) and urls:  # another route
        value = dict(value)
        value["url"] = rng.choice(urls)
        return value
    return _replace(value, path, _random_value(rng, names))


def make_mutator(split, names: tuple[str, ...], urls: tuple[str, ...] = ()):
    """A libFuzzer custom mutator for inputs that are a head then JSON:
    ``split(data)`` gives (head, json bytes); the head is kept."""

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        head, body = split(data)
        if rng.randrange(4):
            try:
                value = json.loads(body)
            except (ValueError, RecursionError):
                value = None
            else:
                out = head + json.dumps(mutate_json(value, rng, names, urls)).encode()
                if len(out) <= max_size:
                    return out
        return atheris.Mutate(data, max_size)

    return mutator
