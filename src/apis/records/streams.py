"""The records streams on the cluster's JetStream, and the receiver's one consumer on each.

Three work-queue streams hold records until the receiver has committed and acknowledged
them (a record is deleted from its stream by its acknowledgement), so whatever is published
while the receiver is down or restarting waits there:

- `LOG_STREAM` takes ``apis.*.log``: every action log line the units publish;
- `DEALS_STREAM` has no subjects of its own: the server copies into it every write of the
  deal registry's key-value stream ``KV_apis_deals`` (a stream *source*). The registry keeps
  one version per deal (history 1); the copy keeps them all, whether the receiver runs or
  not. The server copies a write within moments; a deal rewritten again before that (writes
  microseconds apart, which deals never see) would be missed: the receiver reports a gap in
  the registry's sequence when it sees one;
- `UNIT_DATA_STREAM` takes ``apis.records.unitData.<unitId>``: the samples the receiver's
  sampler publishes (with a message id, so a sample sent twice is stored once).

Each stream is bounded by age (the longest retention: a record older than that would be
purged from the store anyway) and by size (`apis records --stream-max-mb`, default 256 MB
each, reserved by JetStream against the servers' max_file_store). When full, the oldest
records waiting are dropped: a receiver that stays away that long must not fill the
storage that holds the units' shared state too. Creating the streams is idempotent; a
changed retention or size updates them. One durable pull consumer (`CONSUMER`) per stream,
reused at every start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
    StreamSource,
)

from apis.bus.security import RECORDS_STREAMS

log = logging.getLogger(__name__)

# named in the secured bus's permissions too (apis.bus.security.RECORDS_STREAMS)
LOG_STREAM, DEALS_STREAM, UNIT_DATA_STREAM = RECORDS_STREAMS
REGISTRY_STREAM = "KV_apis_deals"
CONSUMER = "apis_records"
LOG_SUBJECTS = ["apis.*.log"]
UNIT_DATA_SUBJECTS = ["apis.records.unitData.*"]
ACK_WAIT_S = 30.0
MAX_ACK_PENDING = 2_000
DUPLICATE_WINDOW_S = 120.0
_NAME_IN_USE = 10058  # "stream name already in use with a different configuration"


@dataclass(frozen=True, slots=True)
class RecordStream:
    name: str
    origin: str  # name and creation time: the store's key for this stream's sequences


def _configs(max_age_s: float, max_bytes: int, replicas: int) -> list[StreamConfig]:
    def stream(name: str, description: str, **options: Any) -> StreamConfig:
        return StreamConfig(
            name=name, description=description, retention=RetentionPolicy.WORK_QUEUE,
            max_age=max_age_s, max_bytes=max_bytes, discard=DiscardPolicy.OLD,
            storage=StorageType.FILE, num_replicas=replicas, **options,
        )

    return [
        stream(LOG_STREAM, "APIS action log lines, until the records receiver has them",
               subjects=LOG_SUBJECTS),
        stream(DEALS_STREAM, "every write of the APIS deal registry, until recorded",
               sources=[StreamSource(name=REGISTRY_STREAM)]),
        stream(UNIT_DATA_STREAM, "APIS unit data samples, until recorded",
               subjects=UNIT_DATA_SUBJECTS, duplicate_window=DUPLICATE_WINDOW_S),
    ]


async def _ensure(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    try:
        return await js.add_stream(config)
    except nats.js.errors.APIError as exc:
        if exc.err_code != _NAME_IN_USE:
            raise
    info = await js.stream_info(config.name or "")
    if info.config.retention != RetentionPolicy.WORK_QUEUE:
        raise nats.js.errors.Error(
            f"stream {config.name} exists with retention {info.config.retention} "
            "(the records streams are work queues): delete it or use another account"
        )
    log.info("records: stream %s updated (max_age %.0f s, max_bytes %d)", config.name,
             config.max_age or 0, config.max_bytes or -1)
    config.num_replicas = info.config.num_replicas  # replicas are not changed here
    return await js.update_stream(config)


async def ensure_streams(
    js: JetStreamContext, max_age_s: float, max_bytes: int, replicas: int
) -> dict[str, RecordStream]:
    """Create (or update) the three streams and the consumer on each; by stream name."""
    out = {}
    for config in _configs(max_age_s, max_bytes, replicas):
        info = await _ensure(js, config)
        created = info.created.isoformat() if info.created is not None else "?"
        name = config.name or ""
        await js.add_consumer(
            name,
            ConsumerConfig(
                name=CONSUMER,
                durable_name=CONSUMER,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S,
                max_deliver=-1,  # a record is delivered until it is committed
                max_ack_pending=MAX_ACK_PENDING,
                description="the APIS records receiver",
            ),
        )
        out[name] = RecordStream(name, f"{name}@{created}")
    return out
