"""grid.json (our extension): the DC grid for the emulator.

Unit nodes (one per unit, named by unit ID) and junction nodes, joined by resistive line
segments. Example::

    {"nodes": [{"id": "E001", "kind": "unit"}, {"id": "BUS", "kind": "junction"}],
     "lines": [{"id": "E001-BUS", "from": "E001", "to": "BUS", "resistanceOhm": 0.05}]}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import Field

from apis.config.base import ConfigModel, rule

DEFAULT_LINE_RESISTANCE_OHM = 0.05  # a short run of 4 mm² copper, there and back


class GridNode(ConfigModel):
    id: str = Field(min_length=1)
    kind: Literal["unit", "junction"] = "unit"


class GridLine(ConfigModel):
    id: str = Field(min_length=1)
    from_node: str = Field(alias="from", min_length=1)
    to_node: str = Field(alias="to", min_length=1)
    resistance_ohm: float = Field(gt=0)  # ohms, both conductors


class GridConfig(ConfigModel):
    nodes: list[GridNode]
    lines: list[GridLine]

    @rule
    def _unique_nodes(self) -> list[str]:
        seen: set[str] = set()
        broken = []
        for node in self.nodes:
            if node.id in seen:
                broken.append(f"nodes: id = {node.id!r} (must be unique)")
            seen.add(node.id)
        return broken

    @rule
    def _lines_join_nodes(self) -> list[str]:
        nodes = {n.id for n in self.nodes}
        seen: set[str] = set()
        broken = []
        for line in self.lines:
            if line.id in seen:
                broken.append(f"lines: id = {line.id!r} (must be unique)")
            seen.add(line.id)
            for end in (line.from_node, line.to_node):
                if end not in nodes:
                    broken.append(f"lines.{line.id}: node = {end!r} (must be one of nodes)")
            if line.from_node == line.to_node:
                broken.append(f"lines.{line.id}: from = to = {line.from_node!r} (must differ)")
        return broken

    @property
    def unit_ids(self) -> list[str]:
        return [n.id for n in self.nodes if n.kind == "unit"]

    @classmethod
    def single_bus(
        cls, unit_ids: Iterable[str], resistance_ohm: float = DEFAULT_LINE_RESISTANCE_OHM
    ) -> GridConfig:
        """Every unit on one bus bar through its own short line (the default grid)."""
        units = list(unit_ids)
        nodes = [GridNode(id=u, kind="unit") for u in units]
        nodes.append(GridNode(id="BUS", kind="junction"))
        lines = [
            GridLine(id=f"{u}-BUS", from_node=u, to_node="BUS", resistance_ohm=resistance_ohm)
            for u in units
        ]
        return cls(nodes=nodes, lines=lines)
