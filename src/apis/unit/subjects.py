"""Bus subjects (spec 1.5) and header names, in one place.

Operations interface (for the web UI and other tools; payloads are JSON):

- `apis.operationMode` (any unit answers one request): header ``command=set``, body = the
  global mode (``"autonomous"`` | ``"heteronomous"`` | ``"stop"`` | ``"manual"``, or null to
  fall back to the policy's mode) -> reply = the handling unit's ID; an invalid value fails
  (RemoteFailure naming the value). Any other ``command`` -> reply = the global mode. Optional
  header ``operator`` names who changed it. Stored as the plain string at key
  ``operationMode`` of bucket ``apis_state`` (watched by every unit), with an audit record at
  key ``operationMode.audit``: ``{"mode", "previous", "by", "at" (ISO 8601), "unitId"}``.
  Run / Soft Stop / Force Stop / Manual = autonomous / heteronomous / stop / manual; see
  `apis.unit.modes` for what each does to running deals and converters.
- `apis.<id>.operationMode`: header ``command=set``, body null | ``"heteronomous"`` |
  ``"stop"`` -> reply = ``<id>``; persisted to ``stateFileFormat % "operationMode"``.
  Otherwise -> reply = the local mode (null or a string). The unit data reports
  ``apis.operation_mode.{global,local,effective}``.
- `apis.<id>.Controller.control.manual`: header ``operator``; body ``{"command": "WAIT" |
  "VOLTAGE_REFERENCE" | "CHARGE" | "DISCHARGE", "params": {"gridVoltageV"?, "gridCurrentA"?}}``
  -> reply = the unit's ``dcdc`` object. Refused unless the unit's effective mode is
  ``manual``; limits are checked as for every command; VOLTAGE_REFERENCE is refused while
  another unit holds the voltage reference claim (`apis.unit.vrclaim`; the failure names
  it) and while the grid already carries a voltage (another source may hold it).
- `apis.<id>.Controller.control.device.from.<gm>` (units only): a converter command of the
  Grid Master `<gm>` (signed: the bus vouches that `<gm>` sent it; headers
  ``gridMasterUnitId`` = `<gm>` and ``gridMasterEpoch``). The Controller obeys only the
  holder of the Grid Master lease at that epoch.
- `apis.<id>.shutdown` (request -> ``"ok"``) and `apis.shutdown.all` (publish): the orderly
  shutdown of spec 1.4 (ask the Grid Master to stop this unit's deals, converter to Waiting,
  Grid Master deactivated, process ends).
- `apis.error` (publish): an error object ``{unitId, category, extent, level, message}``; the
  named unit handles LOCAL errors, the Grid Master the others.
- `apis.reset.all` (publish): every unit forgets its coordination state (spec 11.5).
- `apis.Controller.scram` (publish, header ``excludeVoltageReference``): converters to
  Waiting.

Among units and the lease service (ours, a secured bus only):

- `apis.lease.<op>.from.<unit>` (request, signed: the bus vouches that `<unit>` asks): a
  write of the Grid Master lease or the voltage reference claim for `<unit>`, answered by
  one copy of the lease service (queue group ``apis-lease``); see `apis.unit.leaseservice`.
"""

from __future__ import annotations

from apis.bus.base import signed

# headers
GRID_MASTER_UNIT_ID = "gridMasterUnitId"
GRID_MASTER_EPOCH = "gridMasterEpoch"  # ours: the fencing token
REPLY_ADDRESS = "replyAddress"
URGENT = "urgent"
COMMAND = "command"
UNIT_ID = "unitId"
EXCLUDE_VOLTAGE_REFERENCE = "excludeVoltageReference"
OPERATOR = "operator"
ORIGIN = "apisOrigin"  # ours: the instance that published an error (it cached it already)

OPERATION_MODE = "apis.operationMode"
SHUTDOWN_ALL = "apis.shutdown.all"
RESET_ALL = "apis.reset.all"

CONTROLLER_DATA_ALL = "apis.Controller.data.all"
CONTROLLER_SCRAM = "apis.Controller.scram"
MEDIATOR_EXTERNAL_REQUEST = "apis.Mediator.externalRequest"
MEDIATOR_DEAL_CREATE = "apis.Mediator.deal.create"
MEDIATOR_DEAL_LOG = "apis.Mediator.deal.log"  # signed: see deal_log()
MEDIATOR_DEAL_NEED_TO_STOP = "apis.Mediator.deal.needToStop"
MEDIATOR_DEALS = "apis.Mediator.deals"
GRID_MASTER_HELO = "apis.GridMaster.helo"
GRID_MASTER_ERROR_TEST = "apis.GridMaster.error.test"
GRID_MASTER_DATA_ALL = "apis.GridMaster.data.all"
GRID_MASTER_UNIT_ID_ALL = "apis.GridMaster.unitId.all"
ERROR = "apis.error"
LEASE_QUEUE = "apis-lease"
LEASE_PREFIX = "apis.lease"


def helo(unit_id: str) -> str:
    return f"apis.{unit_id}.helo"


def controller_data(unit_id: str) -> str:
    return f"apis.{unit_id}.Controller.data"


def controller_control(unit_id: str, sender: str) -> str:
    """Converter commands to `unit_id`, signed by the Grid Master `sender` (``"*"``: the
    Controller's subscription): the bus vouches for the sender, the Controller checks it
    against the lease."""
    return signed(f"apis.{unit_id}.Controller.control.device", sender)


def user_error_test(unit_id: str) -> str:
    return f"apis.{unit_id}.User.error.test"


def interlock_deal(unit_id: str) -> str:
    return f"apis.{unit_id}.Mediator.interlock.deal"


def deal_record(unit_id: str) -> str:
    """Request ``{"dealId"}`` -> the unit's deal-log record of it, or null (ours)."""
    return f"apis.{unit_id}.Mediator.deal.record"


def grid_master_activate(unit_id: str) -> str:
    return f"apis.{unit_id}.Mediator.gridMaster.activate"


def grid_master_deactivate(unit_id: str) -> str:
    return f"apis.{unit_id}.Mediator.gridMaster.deactivate"


def operation_mode(unit_id: str) -> str:
    return f"apis.{unit_id}.operationMode"


def shutdown(unit_id: str) -> str:
    return f"apis.{unit_id}.shutdown"


def controller_control_manual(unit_id: str) -> str:
    return f"apis.{unit_id}.Controller.control.manual"


def deal_log(sender: str) -> str:
    """A deal record published by `sender` (signed: the bus vouches for who sent it);
    ``sender="*"``: what the units and the web subscribe to."""
    return signed(MEDIATOR_DEAL_LOG, sender)


def lease_request(op: str, sender: str) -> str:
    """A request of `sender` to the lease service (signed); ``op="*"``, ``sender="*"``: the
    service's subscription."""
    return signed(f"{LEASE_PREFIX}.{op}", sender)
