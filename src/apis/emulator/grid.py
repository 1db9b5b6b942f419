"""The DC grid network: nodes joined by resistive lines, solved by nodal analysis.

Every voltage reference (CV converter) is a Norton source: conductance ``g = 1 / r_source``
to ground and a current ``g * v_ref`` into its node. CC converters are plain current
injections. Node voltages solve ``(L + diag(g)) v = i`` where L is the Laplacian of the intact
lines. A connected part of the grid without a voltage reference is dead: its nodes are held at
0 V and take no part in the solve. The matrix is LU-factored (scipy SuperLU) only when the
topology or the set of sources (nodes, conductances) changes; each step is then one
forward/back substitution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
from numpy.typing import NDArray

from apis.config.grid import GridConfig

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class GridSolution:
    node_v: FloatArray  # V, per node (0 on dead parts)
    source_i: FloatArray  # A, current each source pushes into its node (per source)
    line_i: FloatArray  # A, per line, positive from `from` to `to` (0 when broken)
    line_loss_w: FloatArray  # W, per line
    live: NDArray[np.bool_]  # per node: part of the grid holds a voltage reference
    component: IntArray  # per node: connected-part label


class GridNetwork:
    """Topology of grid.json plus the state of each line (intact or broken)."""

    def __init__(self, config: GridConfig) -> None:
        self.node_ids: list[str] = [n.id for n in config.nodes]
        self.node_index: dict[str, int] = {n: i for i, n in enumerate(self.node_ids)}
        self.line_ids: list[str] = [line.id for line in config.lines]
        self.line_index: dict[str, int] = {n: i for i, n in enumerate(self.line_ids)}
        self.line_from: IntArray = np.array(
            [self.node_index[line.from_node] for line in config.lines], dtype=np.intp
        )
        self.line_to: IntArray = np.array(
            [self.node_index[line.to_node] for line in config.lines], dtype=np.intp
        )
        self.line_r: FloatArray = np.array(
            [line.resistance_ohm for line in config.lines], dtype=np.float64
        )
        self.broken: NDArray[np.bool_] = np.zeros(len(self.line_ids), dtype=bool)
        self.config = config
        self._topology_version = 0
        self._components: tuple[int, IntArray] | None = None
        self._factor_key: tuple[object, ...] | None = None
        self._factor: object = None
        self._live_index: IntArray = np.zeros(0, dtype=np.intp)
        self.factorizations = 0  # how many LU factorizations so far (tests and benchmarks)

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    def node_of(self, node_id: str) -> int:
        try:
            return self.node_index[node_id]
        except KeyError:
            raise KeyError(f"node = {node_id!r} (not in grid.json nodes)") from None

    def set_line_broken(self, line_id: str, broken: bool) -> None:
        try:
            index = self.line_index[line_id]
        except KeyError:
            raise KeyError(f"line = {line_id!r} (not in grid.json lines)") from None
        if bool(self.broken[index]) != broken:
            self.broken[index] = broken
            self._topology_version += 1
            self._components = None

    def components(self) -> tuple[int, IntArray]:
        """Connected parts over the intact lines: (count, label per node)."""
        if self._components is None:
            intact = ~self.broken
            n = self.n_nodes
            adjacency = sp.coo_matrix(
                (np.ones(int(intact.sum())), (self.line_from[intact], self.line_to[intact])),
                shape=(n, n),
            )
            count, labels = csgraph.connected_components(adjacency, directed=False)
            self._components = (int(count), labels.astype(np.intp))
        return self._components

    def live_nodes(self, source_nodes: IntArray) -> NDArray[np.bool_]:
        """Nodes whose connected part holds at least one voltage source."""
        count, labels = self.components()
        has_source = np.zeros(count, dtype=bool)
        has_source[labels[source_nodes]] = True
        result: NDArray[np.bool_] = has_source[labels]
        return result

    def _factorize(
        self, live: NDArray[np.bool_], source_nodes: IntArray, source_g: FloatArray
    ) -> None:
        key = (self._topology_version, source_nodes.tobytes(), source_g.tobytes())
        if key == self._factor_key:
            return
        live_index = np.flatnonzero(live)
        reduced = np.full(self.n_nodes, -1, dtype=np.intp)
        reduced[live_index] = np.arange(len(live_index))
        intact = ~self.broken & live[self.line_from]
        a = reduced[self.line_from[intact]]
        b = reduced[self.line_to[intact]]
        g_line = 1.0 / self.line_r[intact]
        rows = np.concatenate([a, b, a, b, reduced[source_nodes]])
        cols = np.concatenate([a, b, b, a, reduced[source_nodes]])
        vals = np.concatenate([g_line, g_line, -g_line, -g_line, source_g])
        m = len(live_index)
        matrix = sp.csc_matrix((vals, (rows, cols)), shape=(m, m))
        self._factor = spla.splu(matrix) if m else None
        self._live_index = live_index
        self._factor_key = key
        self.factorizations += 1

    def solve(
        self,
        source_nodes: IntArray,
        source_g: FloatArray,
        source_v: FloatArray,
        injection_a: FloatArray,
    ) -> GridSolution:
        """Node voltages for Norton sources (node, conductance, voltage) and node injections.

        `injection_a` is the current (A) each node's CC converters push into the grid; it is
        ignored on dead parts (callers zero it there, since no current can flow).
        """
        n = self.n_nodes
        _, labels = self.components()
        live = self.live_nodes(source_nodes)
        self._factorize(live, source_nodes, source_g)
        node_v = np.zeros(n)
        if len(self._live_index):
            rhs_full = np.where(live, injection_a, 0.0)
            np.add.at(rhs_full, source_nodes, source_g * source_v)
            solution = self._factor.solve(rhs_full[self._live_index])  # type: ignore[attr-defined]
            node_v[self._live_index] = solution
        source_i = source_g * (source_v - node_v[source_nodes])
        line_i = np.where(
            self.broken, 0.0, (node_v[self.line_from] - node_v[self.line_to]) / self.line_r
        )
        line_loss_w = line_i * line_i * self.line_r
        return GridSolution(node_v, source_i, line_i, line_loss_w, live, labels)

    def unit_nodes(self, unit_ids: Sequence[str]) -> IntArray:
        """Node index of each unit (a unit's node is named by its unit ID)."""
        return np.array([self.node_of(u) for u in unit_ids], dtype=np.intp)
