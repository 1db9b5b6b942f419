"""Bus subjects (spec 1.5) and header names, in one place."""

from __future__ import annotations

# headers
GRID_MASTER_UNIT_ID = "gridMasterUnitId"
GRID_MASTER_EPOCH = "gridMasterEpoch"  # ours: the fencing token
REPLY_ADDRESS = "replyAddress"
URGENT = "urgent"
COMMAND = "command"
UNIT_ID = "unitId"
EXCLUDE_VOLTAGE_REFERENCE = "excludeVoltageReference"

CONTROLLER_DATA_ALL = "apis.Controller.data.all"
CONTROLLER_SCRAM = "apis.Controller.scram"
MEDIATOR_EXTERNAL_REQUEST = "apis.Mediator.externalRequest"
MEDIATOR_DEAL_CREATE = "apis.Mediator.deal.create"
MEDIATOR_DEAL_LOG = "apis.Mediator.deal.log"
MEDIATOR_DEAL_NEED_TO_STOP = "apis.Mediator.deal.needToStop"
MEDIATOR_DEALS = "apis.Mediator.deals"
GRID_MASTER_HELO = "apis.GridMaster.helo"
GRID_MASTER_ERROR_TEST = "apis.GridMaster.error.test"
GRID_MASTER_DATA_ALL = "apis.GridMaster.data.all"
GRID_MASTER_UNIT_ID_ALL = "apis.GridMaster.unitId.all"
ERROR = "apis.error"


def helo(unit_id: str) -> str:
    return f"apis.{unit_id}.helo"


def controller_data(unit_id: str) -> str:
    return f"apis.{unit_id}.Controller.data"


def controller_control(unit_id: str) -> str:
    return f"apis.{unit_id}.Controller.control.device"


def user_error_test(unit_id: str) -> str:
    return f"apis.{unit_id}.User.error.test"


def interlock_deal(unit_id: str) -> str:
    return f"apis.{unit_id}.Mediator.interlock.deal"


def grid_master_activate(unit_id: str) -> str:
    return f"apis.{unit_id}.Mediator.gridMaster.activate"


def grid_master_deactivate(unit_id: str) -> str:
    return f"apis.{unit_id}.Mediator.gridMaster.deactivate"
