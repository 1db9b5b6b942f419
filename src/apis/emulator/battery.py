"""Battery: capacity, state of charge, voltage and the sharing-permission flag.

The battery is only read by APIS; it is charged and discharged through the converter and the
house bus. These are vectorised helpers over arrays of units; the state itself lives in
`World`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# Share of the hwConfig `vb` range the open-circuit voltage spans from empty to full: a real
# pack stays clear of its protection limits at both ends.
_VB_EMPTY_FRACTION = 0.15
_VB_FULL_FRACTION = 0.85


def rsoc_percent(energy_wh: FloatArray, capacity_wh: FloatArray) -> FloatArray:
    """Relative state of charge in %, from stored energy and nominal capacity."""
    # minimum/maximum rather than np.clip: the same values, less overhead on small arrays.
    return np.minimum(np.maximum(100.0 * energy_wh / capacity_wh, 0.0), 100.0)


def battery_voltage(rsoc: FloatArray, vb_min: FloatArray, vb_max: FloatArray) -> FloatArray:
    """Open-circuit voltage: rises with RSOC, steeper near empty and full like a Li-ion pack.

    Stays inside [vb_min, vb_max] (the hwConfig `safety.range.dcdc.meter.vb` range).
    """
    s = np.minimum(np.maximum(rsoc / 100.0, 0.0), 1.0)
    # A flat middle plateau with knees at both ends; monotone on [0, 1], 0 at 0 and 1 at 1.
    x = 2.0 * s - 1.0
    shape = 0.5 + 0.35 * x + 0.15 * (x * x * x)
    span = vb_max - vb_min
    fraction = _VB_EMPTY_FRACTION + (_VB_FULL_FRACTION - _VB_EMPTY_FRACTION) * shape
    return vb_min + span * fraction


def auto_permission(
    permitted: NDArray[np.bool_],
    rsoc: FloatArray,
    deny_below: FloatArray,
    permit_above: FloatArray,
) -> NDArray[np.bool_]:
    """Automatic sharing permission with hysteresis; NaN thresholds leave the flag alone.

    Below `deny_below` % the battery withdraws permission (it keeps its own reserve); at or
    above `permit_above` % it grants it again.
    """
    out = permitted.copy()
    enabled = ~np.isnan(deny_below) & ~np.isnan(permit_above)
    out[enabled & (rsoc < deny_below)] = False
    out[enabled & (rsoc >= permit_above)] = True
    return out
