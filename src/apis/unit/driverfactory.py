"""The unit's DeviceDriver from config.json (spec 1.4 step 1, 7.5).

`systemType` selects the HTTP route set; `connection.*` gives host and port; the policy's
`controller.requestTimeoutMsec` and `controller.retryLimit` bound every request.

    driver = driver_from_config(files.config, files.policy)

Only the HTTP client of `apis.hardware.webapi` is built here: a unit never imports the
emulator (it reaches an emulator over HTTP like any other driver).
"""

from __future__ import annotations

import httpx

from apis.config.policy import Policy
from apis.config.unitconfig import Endpoint, UnitConfig
from apis.hardware.webapi import DeviceDriverClient


class UnsupportedSystemType(ValueError):
    """config.json names a `systemType` this implementation cannot drive."""


def base_url(endpoint: Endpoint) -> str:
    host = endpoint.host
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{endpoint.port}"


def driver_from_config(
    config: UnitConfig,
    policy: Policy,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> DeviceDriverClient:
    """The HTTP DeviceDriver for this unit; `transport` replaces the network (tests).

    - `dcdc_v2`: the Device Driver Web API at `connection.dcdc_controller`;
    - `dcdc_emulator`: the emulator's per-unit routes at `connection.emulator`;
    - `dcdc_v1`: refused (the old dcdc_controller + EMU-Driver pair is not supported).
    """
    timeout = policy.controller.request_timeout_msec
    retries = policy.controller.retry_limit
    system_type = config.system_type
    if system_type == "dcdc_v2":
        return DeviceDriverClient(
            base_url(config.connection.dcdc_controller),
            routes="dcdc_v2",
            unit_id=config.unit_id,
            request_timeout_msec=timeout,
            retry_limit=retries,
            transport=transport,
        )
    if system_type == "dcdc_emulator":
        return DeviceDriverClient(
            base_url(config.connection.emulator),
            routes="dcdc_emulator",
            unit_id=config.unit_id,
            request_timeout_msec=timeout,
            retry_limit=retries,
            transport=transport,
        )
    raise UnsupportedSystemType(
        f"systemType = {system_type!r} (not supported: use 'dcdc_v2' for a Device Driver "
        "Web API or 'dcdc_emulator' for the emulator; 'dcdc_v1' hardware needs a dcdc_v2 "
        "driver in front of it)"
    )
