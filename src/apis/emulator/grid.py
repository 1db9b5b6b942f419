"""The DC grid network: nodes joined by resistive lines, solved by nodal analysis.

Every voltage reference (CV converter) is a Norton source: conductance ``g = 1 / r_source``
to ground and a current ``g * v_ref`` into its node. CC converters are plain current
injections. Node voltages solve ``(L + diag(g)) v = i`` where L is the Laplacian of the intact
lines. A connected part of the grid without a voltage reference is dead: its nodes are held at
0 V and take no part in the solve.

Limited sources (`solve_limited`): a real converter's output is bounded, so each source is a
*saturating* Norton source, ``i = clip(g * (u - v), lo, hi)``: linear (a voltage source behind
g) between the bounds, a constant-current injection at a bound. The network is piecewise
linear; its operating point is found by the active-set iteration: solve with each source in
its present state (linear or at a bound), move every source whose state the solution
contradicts (a linear one beyond a bound goes to it; one at a bound whose unclipped current
has come back inside goes back to linear), and repeat until nothing moves. All source
characteristics are monotone, so this settles in a few solves; a repeated state switches only
the worst source, and the iterations are bounded. Whatever state it ends in, the currents
satisfy Kirchhoff's current law exactly, so energy balances even then.

Factorization: the matrix depends on the topology and on which sources are linear (their nodes
and conductances). LU factors (scipy SuperLU) are cached by that key (a few recent ones), so a
source that limits and recovers, or a steady step, costs one forward/back substitution.
"""

from __future__ import annotations

from collections import OrderedDict
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
StateArray = NDArray[np.int8]

# States of a limited source.
AT_LOW: int = -1  # constant current `lo`
LINEAR: int = 0  # Norton source g, u
AT_HIGH: int = 1  # constant current `hi`

LIMIT_TOLERANCE_A = 1e-9  # a source this close to a bound is consistent in either state
_FACTOR_CACHE_SIZE = 8


@dataclass(frozen=True, slots=True)
class GridSolution:
    node_v: FloatArray  # V, per node (0 on dead parts)
    source_i: FloatArray  # A, current each source pushes into its node (per source)
    line_i: FloatArray  # A, per line, positive from `from` to `to` (0 when broken)
    line_loss_w: FloatArray  # W, per line
    live: NDArray[np.bool_]  # per node: part of the grid holds a voltage reference
    component: IntArray  # per node: connected-part label


@dataclass(frozen=True, slots=True)
class LimitedSolution:
    grid: GridSolution  # `source_i` holds the limited sources' currents
    state: StateArray  # per source: AT_LOW, LINEAR or AT_HIGH (LINEAR on dead parts)
    iterations: int  # solves it took
    converged: bool  # False: stopped at the iteration bound (KCL still holds)


@dataclass(frozen=True, slots=True)
class _Factor:
    lu: object  # scipy SuperLU, or None for an empty live part
    live_index: IntArray  # nodes of the reduced system


@dataclass(frozen=True, slots=True)
class VoltageSources:
    """Voltage references (Norton sources) made ready for repeated solves (`prepare`): the
    live parts they hold up and the factorization for their nodes and conductances. Valid
    until a line breaks or is repaired (`GridNetwork.topology_version`)."""

    nodes: IntArray
    g: FloatArray
    live: NDArray[np.bool_]
    labels: IntArray
    factor: _Factor
    distinct_nodes: bool  # no two sources share a node


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
        self._any_broken = False
        self.config = config
        self._topology_version = 0
        self._components: tuple[int, IntArray] | None = None
        self._factors: OrderedDict[tuple[object, ...], _Factor] = OrderedDict()
        self.factorizations = 0  # how many LU factorizations so far (tests and benchmarks)
        self.unconverged_solves = 0  # limited solves that hit the iteration bound

    @property
    def topology_version(self) -> int:
        """Bumped whenever a line breaks or is repaired."""
        return self._topology_version

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
            self._any_broken = bool(self.broken.any())
            self._topology_version += 1
            self._components = None
            self._factors.clear()

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
    ) -> _Factor:
        key = (self._topology_version, live.tobytes(), source_nodes.tobytes(), source_g.tobytes())
        cached = self._factors.get(key)
        if cached is not None:
            self._factors.move_to_end(key)
            return cached
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
        factor = _Factor(spla.splu(matrix) if m else None, live_index)
        self.factorizations += 1
        self._factors[key] = factor
        if len(self._factors) > _FACTOR_CACHE_SIZE:
            self._factors.popitem(last=False)
        return factor

    def _node_voltages(
        self,
        live: NDArray[np.bool_],
        linear_nodes: IntArray,
        linear_g: FloatArray,
        rhs_full: FloatArray,
    ) -> FloatArray:
        return self._substitute(self._factorize(live, linear_nodes, linear_g), rhs_full)

    def _substitute(self, factor: _Factor, rhs_full: FloatArray) -> FloatArray:
        node_v = np.zeros(self.n_nodes)
        if len(factor.live_index):
            solution = factor.lu.solve(rhs_full[factor.live_index])  # type: ignore[attr-defined]
            node_v[factor.live_index] = solution
        return node_v

    def _solution(
        self,
        node_v: FloatArray,
        source_i: FloatArray,
        live: NDArray[np.bool_],
        labels: IntArray,
    ) -> GridSolution:
        line_i = (node_v[self.line_from] - node_v[self.line_to]) / self.line_r
        if self._any_broken:
            line_i = np.where(self.broken, 0.0, line_i)
        line_loss_w = line_i * line_i * self.line_r
        return GridSolution(node_v, source_i, line_i, line_loss_w, live, labels)

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
        return self.solve_prepared(self.prepare(source_nodes, source_g), source_v, injection_a)

    def prepare(self, source_nodes: IntArray, source_g: FloatArray) -> VoltageSources:
        """Norton sources at `source_nodes` with conductances `source_g`, ready to solve."""
        _, labels = self.components()
        live = self.live_nodes(source_nodes)
        factor = self._factorize(live, source_nodes, source_g)
        distinct = len(np.unique(source_nodes)) == len(source_nodes)
        return VoltageSources(source_nodes, source_g, live, labels, factor, distinct)

    def solve_prepared(
        self, sources: VoltageSources, source_v: FloatArray, injection_a: FloatArray
    ) -> GridSolution:
        """`solve` for prepared sources at voltages `source_v`."""
        rhs_full = np.where(sources.live, injection_a, 0.0)
        if sources.distinct_nodes:
            rhs_full[sources.nodes] += sources.g * source_v  # cheaper than np.add.at
        else:
            np.add.at(rhs_full, sources.nodes, sources.g * source_v)
        node_v = self._substitute(sources.factor, rhs_full)
        source_i = sources.g * (source_v - node_v[sources.nodes])
        return self._solution(node_v, source_i, sources.live, sources.labels)

    def solve_limited(
        self,
        anchor_nodes: IntArray,
        source_nodes: IntArray,
        source_g: FloatArray,
        source_u: FloatArray,
        source_lo: FloatArray,
        source_hi: FloatArray,
        injection_a: FloatArray,
        state: StateArray | None = None,
        max_iterations: int | None = None,
    ) -> LimitedSolution:
        """Operating point with saturating sources ``i = clip(g * (u - v), lo, hi)``.

        `anchor_nodes` make their connected parts live (the voltage references, limited or
        not); sources on dead parts give no current. `state` is a warm start (the previous
        step's states); the default starts every source linear.
        """
        _, labels = self.components()
        live = self.live_nodes(anchor_nodes)
        n_src = len(source_nodes)
        on = live[source_nodes]
        if state is None:
            state = np.zeros(n_src, dtype=np.int8)
        state = np.where(on, state, LINEAR).astype(np.int8)
        if max_iterations is None:
            max_iterations = 2 * n_src + 10
        base = np.where(live, injection_a, 0.0)
        # A source whose bounds coincide gives that current in either bound state.
        movable = source_hi - source_lo > LIMIT_TOLERANCE_A
        state = self._keep_one_linear(
            state, on, movable, source_nodes, labels, np.zeros(n_src),
            source_g, source_u, source_lo, source_hi,
        )
        seen: set[bytes] = set()
        iterations = 0
        converged = False
        while True:
            iterations += 1
            linear = on & (state == LINEAR)
            bound = on & ~linear
            rhs_full = base.copy()
            fixed = np.where(state == AT_HIGH, source_hi, source_lo)
            np.add.at(rhs_full, source_nodes[bound], fixed[bound])
            np.add.at(rhs_full, source_nodes[linear], source_g[linear] * source_u[linear])
            node_v = self._node_voltages(
                live, source_nodes[linear], source_g[linear], rhs_full
            )
            x = source_g * (source_u - node_v[source_nodes])  # unclipped current
            tol = LIMIT_TOLERANCE_A
            wrong = on & (
                (linear & ((x > source_hi + tol) | (x < source_lo - tol)))
                | (movable & (state == AT_HIGH) & (x < source_hi - tol))
                | (movable & (state == AT_LOW) & (x > source_lo + tol))
            )
            if not wrong.any():
                converged = True
                break
            if iterations >= max_iterations:
                break
            # A linear source beyond a bound goes to it; one at a bound whose current has
            # come back goes linear first (straight to the other bound would overshoot).
            beyond = np.where(x > source_hi, AT_HIGH, np.where(x < source_lo, AT_LOW, LINEAR))
            proposed = np.where(linear, beyond, LINEAR).astype(np.int8)
            excess = np.maximum(np.maximum(x - source_hi, source_lo - x), 0.0)
            new_state = np.where(wrong, proposed, state).astype(np.int8)
            new_state = self._keep_one_linear(
                new_state, on, movable, source_nodes, labels, excess,
                source_g, source_u, source_lo, source_hi,
            )
            seen.add(state.tobytes())
            if new_state.tobytes() in seen:
                # Cycling: move only the source furthest from consistency.
                worst = int(np.argmax(np.where(wrong, excess + 1.0, 0.0)))
                new_state = state.copy()
                new_state[worst] = proposed[worst]
                new_state = self._keep_one_linear(
                    new_state, on, movable, source_nodes, labels, excess,
                    source_g, source_u, source_lo, source_hi,
                )
                if new_state.tobytes() in seen:
                    break  # no new state to try: give up (still a KCL solution)
            state = new_state
        if not converged:
            self.unconverged_solves += 1
        source_i = np.where(
            state == LINEAR, x, np.where(state == AT_HIGH, source_hi, source_lo)
        )
        source_i = np.where(on, source_i, 0.0)
        grid = self._solution(node_v, source_i, live, labels)
        return LimitedSolution(grid, state, iterations, converged)

    @staticmethod
    def _keep_one_linear(
        state: StateArray,
        on: NDArray[np.bool_],
        movable: NDArray[np.bool_],
        source_nodes: IntArray,
        labels: IntArray,
        excess: FloatArray,
        source_g: FloatArray,
        source_u: FloatArray,
        source_lo: FloatArray,
        source_hi: FloatArray,
    ) -> StateArray:
        """Every live part keeps one linear source, else its matrix is singular.

        With all of a part's sources at bounds their currents rarely balance: a surplus
        raises the voltage until the first source at its upper bound comes off it (the
        lowest ``u - hi / g``), a deficit lowers it until the first source at its lower
        bound does (the highest ``u - lo / g``); that source is taken linear. Balanced
        currents fit any voltage: the source nearest its bound (first on a tie) fixes it.
        Sources with a real range are preferred: one whose bounds coincide would pin the
        voltage while carrying no current.
        """
        component = labels[source_nodes]
        linear = on & (state == LINEAR)
        count = int(labels.max()) + 1 if len(labels) else 0
        has_linear = np.zeros(count, dtype=bool)
        has_linear[component[linear]] = True
        lacking = on & ~has_linear[component]
        if not lacking.any():
            return state
        state = state.copy()
        fixed = np.where(state == AT_HIGH, source_hi, source_lo)
        for part in np.unique(component[lacking]):
            members = np.flatnonzero(on & (component == part))
            if movable[members].any():
                members = members[movable[members]]
            surplus = float(fixed[members].sum())
            high = members[state[members] == AT_HIGH]
            low = members[state[members] == AT_LOW]
            if surplus > LIMIT_TOLERANCE_A and len(high):
                unlock = source_u[high] - source_hi[high] / source_g[high]
                chosen = int(high[int(np.argmin(unlock))])
            elif surplus < -LIMIT_TOLERANCE_A and len(low):
                unlock = source_u[low] - source_lo[low] / source_g[low]
                chosen = int(low[int(np.argmax(unlock))])
            else:
                chosen = int(members[int(np.argmin(excess[members]))])
            state[chosen] = LINEAR
        return state

    def unit_nodes(self, unit_ids: Sequence[str]) -> IntArray:
        """Node index of each unit (a unit's node is named by its unit ID)."""
        return np.array([self.node_of(u) for u in unit_ids], dtype=np.intp)
