"""Fast-forward simulation of whole communities, with reports.

The real unit software of every unit (controller, user, mediator, Grid Master) runs on the
in-memory bus against the emulated world (batteries, houses, converters, DC grid), on a
virtual clock that jumps to the next timer: a day of a 20-unit community takes as long as its
computation. Nothing in the unit code is changed for it.

- `community`: what runs (cluster directory, generated units or the default cluster) and the
  sweep overrides;
- `driver`: when the world steps (exact while a converter switches, on a coarse grid while
  all wait) and the DeviceDriver each unit sees;
- `recorder`: per-minute samples; `run`: one run (sharing on, or the world-only baseline);
- `summary`: the key figures; `report`: summary.json, CSVs, plots, report.html;
- `simulate`: a run with its baseline and outputs; `sweep`: one parameter over many values
  (in worker processes), `dasksweep`: the same on a Dask cluster;
- `plan`: the planning fidelity (the same community without the control loops, for months
  and years), with `plantables` (the users' decisions tabulated as a screen) and
  `planoutput` (units.csv and deals.csv streamed, deal figures tallied);
- `validate`: both fidelities on the same communities, compared;
- `cli`: `apis sim` and `apis sim validate`.
"""
