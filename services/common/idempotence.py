"""Whether a Kafka broker supports the idempotent producer, asked of the broker itself.

The idempotent producer gets a producer id from the broker (``InitProducerId``) and numbers its batches,
so a batch resent after a lost acknowledgement is written once and batches stay in order per partition.
Apache Kafka has supported it since 0.11; some Kafka-protocol brokers list the request in ``ApiVersions``
but refuse it (Tansu answers ``UnknownError``). Listing is not enough, so the probe sends the request: what
the producer would do on its first send, without a producer that would then be stuck.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    ConcurrentTransactions,
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    IncompatibleBrokerVersion,
    NoError,
    NotCoordinatorError,
    for_code,
)
from aiokafka.protocol.transaction import InitProducerIdRequest

log = logging.getLogger(__name__)

# Answers of a broker that implements InitProducerId but cannot hand out an id this very moment (its
# coordinator is still loading); the producer retries those by itself.
_NOT_YET = (CoordinatorNotAvailableError, NotCoordinatorError, CoordinatorLoadInProgressError, ConcurrentTransactions)


@dataclass(frozen=True)
class IdempotenceProbe:
    """The broker's answer: ``supported`` and, in words, why (for the start-up log line)."""

    supported: bool
    reason: str


async def probe_idempotent_producer(bootstrap_servers: str, *, request_timeout_s: float) -> IdempotenceProbe:
    """Ask a broker of ``bootstrap_servers`` for a producer id, as the idempotent producer would.

    Raises :class:`aiokafka.errors.KafkaError` (or ``OSError``) when no broker can be reached, so the
    caller's retry covers an outage; any answer of the broker, including an error code, is a result.
    """
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(request_timeout_s * 1000),
        client_id="healingwork-idempotence-probe",
    )
    await client.bootstrap()
    try:
        node_id = client.get_random_node()
        if node_id is None:
            return IdempotenceProbe(False, "the broker listed no broker in its metadata")
        try:
            response = await client.send(
                node_id, InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60000)
            )
        except (IncompatibleBrokerVersion, NotImplementedError) as error:
            return IdempotenceProbe(False, f"the broker does not offer InitProducerId in a version we speak ({error})")
        error_type = for_code(response.error_code)
        if error_type is NoError:
            return IdempotenceProbe(True, "the broker handed out a producer id")
        if error_type in _NOT_YET:
            return IdempotenceProbe(True, f"the broker implements InitProducerId (answered {error_type.__name__})")
        return IdempotenceProbe(False, f"the broker answered InitProducerId with {error_type.__name__}")
    finally:
        await client.close()
