"""`apis config init`: write a working cluster, with diverse units so that sharing has a reason.

The default 4-unit cluster written by `write_cluster(dir, 4)` ships inside the package
(`apis/config/defaults/cluster4`): it is what `apis demo`, `apis sim` and friends use when
given no configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from apis.config.grid import GridConfig

DEFAULT_UNITS = 4
DEFAULT_CLUSTER = "cluster4"


@dataclass(frozen=True, slots=True)
class Temperament:
    """A household's attitude: where its status bands lie, as shares of capacity."""

    name: str
    excess_from: float  # above: excess, offers to discharge
    sufficient_from: float
    scarce_from: float  # below: short, asks to charge
    price: float  # points per Wh it asks or offers


TEMPERAMENTS = (
    Temperament("balanced", 0.80, 0.60, 0.40, 10),
    Temperament("generous", 0.70, 0.50, 0.30, 9),
    Temperament("cautious", 0.90, 0.70, 0.50, 11),
    Temperament("saver", 0.85, 0.55, 0.35, 10),
)


def unit_ids(count: int) -> list[str]:
    if count < 1:
        raise ValueError(f"--units = {count} (must be >= 1)")
    width = max(3, len(str(count)))
    return [f"E{i:0{width}d}" for i in range(1, count + 1)]


def battery_capacity_wh(index: int) -> float:
    # Every fourth house has a larger battery: it makes a good voltage reference.
    return 9600.0 if index % 4 == 2 else 4800.0


def policy_json(ids: list[str]) -> dict[str, Any]:
    large = [u for i, u in enumerate(ids) if battery_capacity_wh(i) > 4800.0]
    return {
        "refreshingPeriodMsec": 5000,
        "operationMode": "autonomous",
        "memberUnitIds": ids,
        "largeCapacityUnitIds": large,
        "operationGridVoltageV": 350,
        "operationGridVoltageVRange": {"min": 300, "max": 380},
        "gridVoltageSeparationV": 10,
        "gridVoltageAllowanceV": 4,
        "gridVoltageDropAllowanceV": 20,
        "gridCurrentStepA": 1,
        "gridUvloMaskV": 10,
        "safety": {
            "sumOfDealingUnitGridCurrentAllowancePerUnitA": 0.125,
            "sumOfDealGridCurrentMaxA": max(10, len(ids) * 2),
            "gridTopologyBasedEvaluation": {"enabled": False, "branchIds": [],
                                            "branchAssociation": {}, "branchCurrentCapacityA": {}},
        },
        "heloPeriodMsec": 5000,
        "controller": {
            "dcdc": {
                "checkpoint": {"retryLimit": 3, "retryWaitMsec": 100},
                "voltageReference": {"rampUp": {"first": {"timeoutMsec": 180000}},
                                     "authorization": {"numberOfTrials": 3}},
            },
            "scramVoltageReferenceDelayMsec": 5000,
            "stopMeTimeoutMsec": 60000,
            "stopMeCheckPeriodMsec": 1000,
            "dataAcquisitionPeriodMsec": 5000,
            "requestTimeoutMsec": 5000,
            "retryLimit": 3,
        },
        "user": {"errorHandlingPeriodMsec": 1000, "errorSustainingMsec": 30000,
                 "houseKeepingPeriodMsec": 30000},
        "mediator": {
            # 100 Wh minimum keeps the control-loss share of a deal under 5 %.
            "deal": {"gridCurrentA": 1, "amountMinWh": 100, "amountMaxWh": 500,
                     "amountUnitWh": 50},
            "negotiationTimeoutMsec": 2000,
            "dealLoggingPeriodMsec": 5000,
        },
        "gridMaster": {
            "voltageReferenceSide": "chargeUnit",
            "voltageReferenceTakeOverDvg": "theoretical",
            "masterDealSelection": {"strategy": "newestDeal"},
            "gridMasterSelection": {"strategy": "voltageReferenceUnit"},
            "gridMasterEnsuring": {"interlockInconsistency": {"retryWaitMsec": 2000}},
            "gridMasterWatching": {"absence": {"ensureWaitMsec": 5000}},
            "deal": {"forceStopCondition": {"dischargeUnitLowerLimitRsoc": 20,
                                            "chargeUnitUpperLimitRsoc": 95},
                     "referenceSide": "chargeUnit", "resetLimit": 3},
            "currentCompensation": {"limitOfTrials": 3, "driftAllowanceA": 0.03},
            "gridVoltageOptimization": {"enabled": False},
            "heloPeriodMsec": 5000,
            "dataCollectionPeriodMsec": 5000,
            "dataCollectionTimeoutMsec": 2000,
            "mainLoopPeriodMsec": 5000,
            "errorSustainingMsec": 30000,
        },
    }


def hw_config_json(capacity_wh: float) -> dict[str, Any]:
    return {
        "refreshingPeriodMsec": 5000,
        "batteryNominalCapacityWh": capacity_wh,
        "gridCurrentCapacityA": 2.3,
        "gridCurrentAllowanceA": 0.125,
        "droopRatio": 0.039,
        "efficientBatteryGridVoltageRatio": 6.5,
        "safety": {"range": {"dcdc": {"meter": {
            "tmp": {"min": 0, "max": 60},
            "vg": {"min": -4, "max": 390},
            "vb": {"min": 32, "max": 58.4},
            "ig": {"min": -2.5, "max": 2.5},
            "ib": {"min": -50, "max": 50},
        }}}},
    }


def scenario_json(capacity_wh: float, t: Temperament) -> dict[str, Any]:
    def wh(share: float) -> int:
        return round(capacity_wh * share)

    excess, sufficient, scarce = wh(t.excess_from), wh(t.sufficient_from), wh(t.scarce_from)
    day = {
        "batteryStatus": {
            f"{excess}-": "excess",
            f"{sufficient}-{excess}": "sufficient",
            f"{scarce}-{sufficient}": "scarce",
            f"-{scarce}": "short",
        },
        "request": {
            "excess": {"discharge": {"limitWh": excess, "pointPerWh": t.price}},
            "sufficient": {},
            "scarce": {},
            "short": {"charge": {"limitWh": scarce, "pointPerWh": t.price}},
        },
        "accept": {
            "excess": {"discharge": {"limitWh": sufficient, "pointPerWh": t.price}},
            "sufficient": {"discharge": {"limitWh": sufficient, "pointPerWh": t.price}},
            "scarce": {"charge": {"limitWh": sufficient, "pointPerWh": t.price}},
            "short": {"charge": {"limitWh": sufficient, "pointPerWh": t.price}},
        },
    }
    # At night a house keeps more for itself: it only gives when it has excess.
    night = json.loads(json.dumps(day))
    night["accept"]["sufficient"] = {}
    return {
        "refreshingPeriodMsec": 5000,
        "acceptSelection": {"strategy": "amount"},
        "00:00:00-06:00:00": night,
        "06:00:00-22:00:00": day,
        "22:00:00-24:00:00": night,
    }


def config_json(unit_id: str, index: int) -> dict[str, Any]:
    return {
        "programId": "apis-main",
        "communityId": "apis_community",
        "clusterId": "apis_cluster",
        "security": {"enabled": False},
        "unitId": unit_id,
        "unitName": f"House {index + 1}",
        "serialNumber": str(index + 1),
        "systemType": "dcdc_emulator",
        "hwConfigFile": "./hwConfig.json",
        "policyFile": "../policy.json",
        "scenarioFile": "./scenario.json",
        "stateFileFormat": "{tmpdir}/apis/" + unit_id + "/state/%s",
        "dealLogDirFormat": "'{tmpdir}/apis/" + unit_id + "/dealLog/'uuuu'/'MM'/'dd",
        "fileSystemExclusiveLockFileFormat": "{tmpdir}/.apis." + unit_id + ".%s.lock",
        "policyFileReadTimeoutMsec": 60000,
        "connection": {
            "emulator": {"host": "127.0.0.1", "port": 4390},
            "dcdc_controller": {"host": "127.0.0.1", "port": 4380},
            "emu_driver": {"host": "127.0.0.1", "port": 8080},
        },
        "controlCenter": {"enabled": False},
        "watchdog": {"enabled": False},
        "batteryCapacityManagement": {"enabled": False},
    }


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_cluster(directory: Path | str, units: int = DEFAULT_UNITS) -> list[Path]:
    """Write policy.json, grid.json and one folder per unit; return the files written."""
    root = Path(directory)
    ids = unit_ids(units)
    written = []
    for path, data in [
        (root / "policy.json", policy_json(ids)),
        (root / "grid.json", GridConfig.single_bus(ids).to_json()),
    ]:
        _write(path, data)
        written.append(path)
    for i, unit_id in enumerate(ids):
        capacity = battery_capacity_wh(i)
        temperament = TEMPERAMENTS[i % len(TEMPERAMENTS)]
        for name, data in [
            ("config.json", config_json(unit_id, i)),
            ("hwConfig.json", hw_config_json(capacity)),
            ("scenario.json", scenario_json(capacity, temperament)),
        ]:
            _write(root / unit_id / name, data)
            written.append(root / unit_id / name)
    return written


def default_cluster_dir() -> Path:
    """The embedded default 4-unit cluster inside the installed package."""
    return Path(str(resources.files("apis.config") / "defaults" / DEFAULT_CLUSTER))
