"""The cluster bus: messages between units and the shared key-value store.

`apis.bus.base` holds the protocol; `apis.bus.memory` the in-process implementation (tests,
demo, simulation); `apis.bus.nats` the NATS one (real clusters); `apis.bus.natsserver` starts
nats-server processes (tests, ``apis cluster up``).
"""
