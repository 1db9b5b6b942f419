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
characteristics are monotone, so this usually settles in a few solves; a repeated state
switches only the worst source, and the iterations are bounded. Should it still cycle (several
bounded sources on one node can make it), the node voltages are relaxed to the operating point
by nonlinear Gauss-Seidel (slow but certain: the network is the gradient of a convex function)
and the iteration starts again from the states they show. Whatever state it ends in, the
currents satisfy Kirchhoff's current law exactly, so energy balances even then.

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


@dataclass(frozen=True, slots=True)
class _Saturating:
    """The saturating sources of one limited solve, ``i = clip(g * (u - v), lo, hi)``."""

    nodes: IntArray
    g: FloatArray
    u: FloatArray
    lo: FloatArray
    hi: FloatArray
    on: NDArray[np.bool_]  # on a live part of the grid
    movable: NDArray[np.bool_]  # bounds apart (a real range between them)


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
        src = _Saturating(
            source_nodes, source_g, source_u, source_lo, source_hi,
            on=live[source_nodes],
            # A source whose bounds coincide gives that current in either bound state. Any
            # range counts, even one within the tolerance: such a source, taken linear, can
            # still settle the voltage at its own point, where one with coinciding bounds
            # would have to absorb the others' currents.
            movable=source_hi > source_lo,
        )
        n_src = len(source_nodes)
        if state is None:
            state = np.zeros(n_src, dtype=np.int8)
        state = np.where(src.on, state, LINEAR).astype(np.int8)
        if max_iterations is None:
            max_iterations = 2 * n_src + 10
        base = np.where(live, injection_a, 0.0)
        state = self._keep_one_linear(state, src, labels, np.zeros(n_src))
        state, node_v, x, iterations, converged = self._active_set(
            state, src, live, labels, base, max_iterations
        )
        if not converged:
            # The active-set iteration cycled: relax the node voltages to the operating
            # point instead, and start it again from the states they show.
            node_v = self._relaxed_voltages(node_v, src, live, base)
            x = source_g * (source_u - node_v[source_nodes])
            tol = LIMIT_TOLERANCE_A
            # Every source beyond a bound starts at it, also one whose bounds coincide.
            state = np.where(
                x > source_hi + tol, AT_HIGH, np.where(x < source_lo - tol, AT_LOW, LINEAR)
            )
            state = np.where(src.on, state, LINEAR).astype(np.int8)
            state = self._keep_one_linear(state, src, labels, np.zeros(n_src))
            state, node_v, x, more, converged = self._active_set(
                state, src, live, labels, base, max_iterations
            )
            iterations += more
        if not converged:
            self.unconverged_solves += 1
        source_i = np.where(
            state == LINEAR, x, np.where(state == AT_HIGH, source_hi, source_lo)
        )
        source_i = np.where(src.on, source_i, 0.0)
        grid = self._solution(node_v, source_i, live, labels)
        return LimitedSolution(grid, state, iterations, converged)

    def _active_set(
        self,
        state: StateArray,
        src: _Saturating,
        live: NDArray[np.bool_],
        labels: IntArray,
        base: FloatArray,
        max_iterations: int,
    ) -> tuple[StateArray, FloatArray, FloatArray, int, bool]:
        """The active-set iteration from `state`: (state, node voltages, unclipped source
        currents, solves, converged)."""
        on, movable, lo, hi = src.on, src.movable, src.lo, src.hi
        seen: set[bytes] = set()
        iterations = 0
        converged = False
        while True:
            iterations += 1
            linear = on & (state == LINEAR)
            bound = on & ~linear
            rhs_full = base.copy()
            fixed = np.where(state == AT_HIGH, hi, lo)
            np.add.at(rhs_full, src.nodes[bound], fixed[bound])
            np.add.at(rhs_full, src.nodes[linear], src.g[linear] * src.u[linear])
            node_v = self._node_voltages(live, src.nodes[linear], src.g[linear], rhs_full)
            x = src.g * (src.u - node_v[src.nodes])  # unclipped current
            tol = LIMIT_TOLERANCE_A
            wrong = on & (
                (linear & ((x > hi + tol) | (x < lo - tol)))
                | (movable & (state == AT_HIGH) & (x < hi - tol))
                | (movable & (state == AT_LOW) & (x > lo + tol))
            )
            if not wrong.any():
                converged = True
                break
            if iterations >= max_iterations:
                break
            # A linear source beyond a bound goes to it; one at a bound whose current has
            # come back goes linear first (straight to the other bound would overshoot).
            beyond = np.where(x > hi, AT_HIGH, np.where(x < lo, AT_LOW, LINEAR))
            proposed = np.where(linear, beyond, LINEAR).astype(np.int8)
            excess = np.maximum(np.maximum(x - hi, lo - x), 0.0)
            new_state = np.where(wrong, proposed, state).astype(np.int8)
            new_state = self._keep_one_linear(new_state, src, labels, excess)
            seen.add(state.tobytes())
            if new_state.tobytes() in seen:
                # Cycling: move only the source furthest from consistency.
                worst = int(np.argmax(np.where(wrong, excess + 1.0, 0.0)))
                new_state = state.copy()
                new_state[worst] = proposed[worst]
                new_state = self._keep_one_linear(new_state, src, labels, excess)
                if new_state.tobytes() in seen:
                    break  # no new state to try: give up (still a KCL solution)
            state = new_state
        return state, node_v, x, iterations, converged

    def _relaxed_voltages(
        self,
        start_v: FloatArray,
        src: _Saturating,
        live: NDArray[np.bool_],
        base: FloatArray,
        sweeps: int = 10_000,
    ) -> FloatArray:
        """Node voltages of the limited network by nonlinear Gauss-Seidel (the fallback
        when the active-set iteration cycles).

        Each node's net outflow ``sum(g_line * (v - v_neighbour)) - sum(i_source(v)) - base``
        is piecewise linear and non-decreasing in its own voltage (every source current
        ``clip(g * (u - v), lo, hi)`` falls as v rises), so the node's equation is solved
        exactly between the sources' breakpoints, node after node, until the voltages stop
        moving. The network is the gradient of a convex function of the voltages, which is
        why these sweeps converge; they are slower than the active-set iteration, hence
        only its fallback.
        """
        v = np.where(live, start_v, 0.0).astype(np.float64)
        intact = ~self.broken
        neighbours: list[list[tuple[int, float]]] = [[] for _ in range(self.n_nodes)]
        for a, b, r in zip(
            self.line_from[intact].tolist(), self.line_to[intact].tolist(),
            self.line_r[intact].tolist(), strict=True,
        ):
            neighbours[a].append((b, 1.0 / r))
            neighbours[b].append((a, 1.0 / r))
        sources: list[list[tuple[float, float, float, float]]] = [
            [] for _ in range(self.n_nodes)
        ]
        for k in np.flatnonzero(src.on).tolist():
            sources[int(src.nodes[k])].append(
                (float(src.g[k]), float(src.u[k]), float(src.lo[k]), float(src.hi[k]))
            )
        nodes = np.flatnonzero(live).tolist()
        injection = base.tolist()
        for _ in range(sweeps):
            moved = 0.0
            for n in nodes:
                new = _node_voltage(neighbours[n], sources[n], injection[n], v)
                moved = max(moved, abs(new - v[n]))
                v[n] = new
            if moved < 1e-13 * (1.0 + float(np.abs(v).max())):
                break
        return v

    @staticmethod
    def _keep_one_linear(
        state: StateArray, src: _Saturating, labels: IntArray, excess: FloatArray
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
        on = src.on
        component = labels[src.nodes]
        linear = on & (state == LINEAR)
        count = int(labels.max()) + 1 if len(labels) else 0
        has_linear = np.zeros(count, dtype=bool)
        has_linear[component[linear]] = True
        lacking = on & ~has_linear[component]
        if not lacking.any():
            return state
        state = state.copy()
        fixed = np.where(state == AT_HIGH, src.hi, src.lo)
        for part in np.unique(component[lacking]):
            members = np.flatnonzero(on & (component == part))
            if src.movable[members].any():
                members = members[src.movable[members]]
            surplus = float(fixed[members].sum())
            high = members[state[members] == AT_HIGH]
            low = members[state[members] == AT_LOW]
            # Half the tolerance: then a source picked for balanced currents absorbs at most
            # half of it, so float error cannot put it beyond its bound by more than that.
            if surplus > LIMIT_TOLERANCE_A / 2 and len(high):
                unlock = src.u[high] - src.hi[high] / src.g[high]
                chosen = int(high[int(np.argmin(unlock))])
            elif surplus < -LIMIT_TOLERANCE_A / 2 and len(low):
                unlock = src.u[low] - src.lo[low] / src.g[low]
                chosen = int(low[int(np.argmax(unlock))])
            else:
                chosen = int(members[int(np.argmin(excess[members]))])
            state[chosen] = LINEAR
        return state

    def unit_nodes(self, unit_ids: Sequence[str]) -> IntArray:
        """Node index of each unit (a unit's node is named by its unit ID)."""
        return np.array([self.node_of(u) for u in unit_ids], dtype=np.intp)


def _node_voltage(
    neighbours: list[tuple[int, float]],
    sources: list[tuple[float, float, float, float]],
    injection: float,
    v: FloatArray,
) -> float:
    """The voltage at which a node's net outflow is zero, its neighbours' voltages fixed.

    Outflow ``f(x) = G * x - pull - sum(clip(g * (u - x), lo, hi)) - injection`` with
    ``G`` the node's line conductance and ``pull`` what the neighbours drive into it; f is
    piecewise linear and non-decreasing, with a kink where a source reaches a bound (at
    ``u - hi / g`` and ``u - lo / g``). Where f has no zero (a node whose sources cannot
    carry its injection), the end of the flat part nearest to one.
    """
    conductance = sum(g for _, g in neighbours)
    pull = sum(g * float(v[m]) for m, g in neighbours)

    def outflow(x: float) -> float:
        given = sum(min(max(g * (u - x), lo), hi) for g, u, lo, hi in sources)
        return conductance * x - pull - given - injection

    kinks = sorted({u - b / g for g, u, lo, hi in sources for b in (lo, hi)})
    if not kinks:  # a plain junction (live, so it has lines)
        return (pull + injection) / conductance
    values = [outflow(x) for x in kinks]
    for k, value in enumerate(values):
        if value >= 0.0:
            if k == 0:  # left of every kink all sources give `hi`: slope G
                return kinks[0] - value / conductance if conductance > 0 else kinks[0]
            x0, x1, f0 = kinks[k - 1], kinks[k], values[k - 1]
            if value == f0:
                return x0
            return x0 - f0 * (x1 - x0) / (value - f0)
    last = values[-1]  # right of every kink all sources take `lo`: slope G
    return kinks[-1] - last / conductance if conductance > 0 else kinks[-1]
