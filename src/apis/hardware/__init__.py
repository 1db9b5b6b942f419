"""The device side: converter modes, the DeviceDriver protocol, the Web API, serial protocols."""
