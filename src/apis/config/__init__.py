"""Configuration: the original apis-main files (config.json, hwConfig.json, policy.json,
scenario.json) as pydantic models, our grid.json, loading with every problem reported, the
cross-file rules and the hardware-design figures."""

from apis.config.errors import ConfigError, Problem
from apis.config.grid import GridConfig
from apis.config.hwconfig import HwConfig
from apis.config.loader import Cluster, UnitFiles, load_cluster
from apis.config.policy import Policy
from apis.config.scenario import Scenario
from apis.config.unitconfig import UnitConfig

__all__ = [
    "Cluster",
    "ConfigError",
    "GridConfig",
    "HwConfig",
    "Policy",
    "Problem",
    "Scenario",
    "UnitConfig",
    "UnitFiles",
    "load_cluster",
]
