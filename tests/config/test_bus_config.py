"""config.json's `bus` key (ours): the NATS servers, TLS and credentials of `apis unit`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from apis.config import UnitConfig
from apis.config.base import strip_comments
from tests.config.conftest import SAMPLE_DIR


def sample_with(bus: Any) -> dict[str, Any]:
    data: dict[str, Any] = strip_comments(json.loads((SAMPLE_DIR / "config.json").read_text()))
    data = {k: v for k, v in data.items() if not k.endswith(".encrypted")}
    if bus is not None:
        data["bus"] = bus
    return data


def test_the_original_sample_has_no_bus_and_loads() -> None:
    assert UnitConfig.model_validate(sample_with(None)).bus is None


def test_a_full_bus_section() -> None:
    config = UnitConfig.model_validate(
        sample_with(
            {
                "servers": ["tls://127.0.0.1:4222", "tls://127.0.0.1:4223"],
                "tls": {"caFile": "ca.pem", "certFile": "e001.pem", "keyFile": "e001.key"},
                "user": "apis",
                "password": "secret",
            }
        )
    )
    assert config.bus is not None
    assert config.bus.servers == ["tls://127.0.0.1:4222", "tls://127.0.0.1:4223"]
    assert config.bus.tls is not None and config.bus.tls.key_file == "e001.key"
    assert config.bus.user == "apis" and config.bus.password == "secret"
    assert config.to_json()["bus"]["tls"]["caFile"] == "ca.pem"


def test_defaults() -> None:
    config = UnitConfig.model_validate(sample_with({}))
    assert config.bus is not None
    assert config.bus.servers == ["nats://127.0.0.1:4222"]
    assert config.bus.tls is None and config.bus.creds_file is None


@pytest.mark.parametrize(
    ("bus", "message"),
    [
        ({"servers": ["nats://a:4222"], "tls": {"caFile": "ca.pem"}}, "plain but tls"),
        ({"servers": ["http://a:4222"]}, "must start with nats:// or tls://"),
        ({"servers": []}, "at least 1"),
        ({"user": "apis"}, "user and password"),
        ({"user": "a", "password": "b", "credsFile": "x.creds"}, "one way"),
        ({"servers": ["tls://a:1"], "tls": {"caFile": "ca", "certFile": "c"}}, "both or neither"),
        ({"servers": ["tls://a:1"], "tls": {"certFile": "c", "keyFile": "k"}}, "caFile"),
        ({"server": ["nats://a:1"]}, "server"),
    ],
)
def test_bad_bus_sections_are_refused(bus: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as failure:
        UnitConfig.model_validate(sample_with(bus))
    assert message in str(failure.value)
