"""Genotypes: the discrete architecture as JSON data and its validation (derivation: ``cell.py``).

JSON contract (DESIGN.md): ``{"normal": [[op, input], ...], "normal_concat": [...],
"reduce": [...], "reduce_concat": [...]}`` with two entries per intermediate
node; nodes 0 and 1 are the two cell inputs, intermediate node ``i`` (0-based)
is node ``2 + i`` and may take any node ``< 2 + i`` as input.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GenotypeError
from .primitives import OPS, candidate_ops

Edge = tuple[str, int]
KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")
# The ops a derived architecture may contain ("none" is a search-only candidate).
FINAL_OPS = candidate_ops(OPS)


@dataclass(frozen=True)
class Genotype:
    """A discrete DARTS cell pair. Immutable; ``to_dict``/``from_dict``/``load``/``save``."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    @property
    def steps(self) -> int:
        """Intermediate nodes per cell."""
        return len(self.normal) // 2

    def to_dict(self) -> dict[str, list]:
        return {
            "normal": [[op, j] for op, j in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, j] for op, j in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, obj: Any, source: str = "genotype") -> Genotype:
        """Validate ``obj`` and build a Genotype; the first problem is named by its JSON path."""
        return _validate(obj, source)

    @classmethod
    def load(cls, path_or_name: str | os.PathLike) -> Genotype:
        """Load from a JSON file, or by published name (``"DARTS_V2"``)."""
        if isinstance(path_or_name, str) and path_or_name in GENOTYPES:
            return GENOTYPES[path_or_name]
        p = Path(path_or_name)
        if not p.is_file():
            names = ", ".join(GENOTYPES)
            raise GenotypeError(
                f"genotype {str(path_or_name)!r} is neither a file nor a published name",
                f"pass a genotype.json path or one of {names}",
            )
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GenotypeError(f"{p} is not valid JSON ({e})", "fix the file or re-run search") from None
        return _validate(obj, str(p))

    def save(self, path: str | os.PathLike) -> Path:
        from ..artifacts import atomic_write

        return atomic_write(path, self.to_json())

    def cell(self, reduction: bool) -> tuple[tuple[Edge, ...], tuple[int, ...]]:
        return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)


def _validate(obj: Any, source: str) -> Genotype:
    def fail(path: str, problem: str, fix: str) -> GenotypeError:
        return GenotypeError(f"{source}: {path}: {problem}", fix)

    if not isinstance(obj, dict):
        raise fail("$", f"expected a JSON object, got {type(obj).__name__}", f"give an object with keys {list(KEYS)}")
    missing = [k for k in KEYS if k not in obj]
    if missing:
        raise fail("$", f"missing key {missing[0]!r}", f"a genotype has keys {list(KEYS)}")
    extra = [k for k in obj if k not in KEYS]
    if extra:
        raise fail(f"$.{extra[0]}", "unknown key", f"a genotype has only keys {list(KEYS)}")
    cells = {}
    for kind in ("normal", "reduce"):
        edges = obj[kind]
        if not isinstance(edges, list) or not edges:
            raise fail(f"$.{kind}", "expected a non-empty list of [op, input] pairs", "two pairs per intermediate node")
        if len(edges) % 2:
            raise fail(
                f"$.{kind}",
                f"{len(edges)} edges: every intermediate node needs exactly 2 inputs",
                "give an even number of [op, input] pairs",
            )
        parsed = []
        for e, edge in enumerate(edges):
            path = f"$.{kind}[{e}]"
            if not isinstance(edge, (list, tuple)) or len(edge) != 2:
                raise fail(path, f"expected [op, input], got {edge!r}", "write each edge as [\"sep_conv_3x3\", 0]")
            op, j = edge
            if not isinstance(op, str) or op not in FINAL_OPS:
                hint = "'none' is a search-only candidate" if op == "none" else f"known ops: {', '.join(FINAL_OPS)}"
                raise fail(f"{path}[0]", f"unknown op {op!r}", hint)
            node = 2 + e // 2
            if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < node:
                raise fail(
                    f"{path}[1]",
                    f"input {j!r} out of range for node {node}",
                    f"node {node} takes inputs 0..{node - 1} (0, 1 are the cell inputs)",
                )
            parsed.append((op, j))
        cells[kind] = tuple(parsed)
    if len(cells["normal"]) != len(cells["reduce"]):
        raise fail("$.reduce", "normal and reduce cells have different node counts", "derive both from one search")
    steps = len(cells["normal"]) // 2
    concats = {}
    for kind in ("normal_concat", "reduce_concat"):
        c = obj[kind]
        if not isinstance(c, list) or not c:
            raise fail(f"$.{kind}", "expected a non-empty list of node indices", f"e.g. {list(range(2, 2 + steps))}")
        for i, n in enumerate(c):
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2 + steps:
                raise fail(f"$.{kind}[{i}]", f"node {n!r} out of range", f"nodes are 0..{1 + steps}")
        if len(set(c)) != len(c):
            raise fail(f"$.{kind}", "repeated node index", "list each node once")
        concats[kind] = tuple(c)
    return Genotype(cells["normal"], concats["normal_concat"], cells["reduce"], concats["reduce_concat"])


def _g(normal, reduce) -> Genotype:
    return Genotype(tuple(normal), (2, 3, 4, 5), tuple(reduce), (2, 3, 4, 5))


# The published DARTS cells (Liu et al., 2019; CIFAR-10, first and second order).
GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": _g(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    ),
    "DARTS_V2": _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    ),
}
GENOTYPES["DARTS"] = GENOTYPES["DARTS_V2"]
