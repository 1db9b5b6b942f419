"""APIS: the Autonomous Power Interchange System."""

__version__ = "0.1.0"
# The version the original apis-main reports in unit data (`apis.version`).
APIS_PROTOCOL_VERSION = "3.0.0"
