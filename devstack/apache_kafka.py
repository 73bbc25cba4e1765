"""Apache Kafka (KRaft, no ZooKeeper) as a child process, for the ``kafka`` test suite and ``healingwork dev``.

The jars come from Maven Central via ``make tools`` (``scripts/tools/kafka.sh``) into
``.tools/kafka-<version>/libs``; this module only starts them: one combined broker + controller
(``process.roles=broker,controller``) on loopback with its own free ports, its log directory formatted
once with the storage tool (``kafka-storage format --standalone``), replication factors of 1 and no initial
rebalance delay, so a consumer group forms as soon as its members join.

:class:`ApacheKafkaBroker` has the interface of :class:`devstack.embedded.EmbeddedBroker` (``start``,
``stop``, ``kill``, ``pause``/``resume``, ``restart``, ``bootstrap_servers``). One difference is by
design: Apache Kafka keeps its log on disk, so ``restart()`` and ``kill()`` + ``start()`` keep every topic,
message and committed offset (Tansu, memory-only, loses them).
"""

from __future__ import annotations

import base64
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from devstack.embedded import ChildServer, _log_tail, _port_accepts, _port_is_bindable, find_free_port

__all__ = ["KAFKA_VERSION", "ApacheKafkaBroker", "KafkaNotInstalled", "kafka_home"]

# Keep in step with KAFKA_VERSION in scripts/tools/kafka.sh (tests/unit checks they agree).
KAFKA_VERSION = "4.1.1"

_LOOPBACK = "127.0.0.1"
_ROOT = Path(__file__).resolve().parents[1]
_NODE_ID = 1
# A small heap and a quick-starting JIT: the broker carries test and development traffic only.
_JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)
_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class KafkaNotInstalled(RuntimeError):
    """The Apache Kafka jars are not in ``.tools``: ``make tools`` installs them."""


def kafka_home(root: Path = _ROOT) -> Path:
    """``.tools/kafka-<KAFKA_VERSION>`` of the checkout at ``root`` (it may not exist yet)."""
    return root / ".tools" / f"kafka-{KAFKA_VERSION}"


def _classpath(home: Path) -> str:
    """The class path of the installed jars; raises :class:`KafkaNotInstalled` naming ``make tools``."""
    stamp = home / ".installed"
    libs = home / "libs"
    if not stamp.is_file() or stamp.read_text().strip() != KAFKA_VERSION or not any(libs.glob("kafka_2.13-*.jar")):
        raise KafkaNotInstalled(f"Apache Kafka {KAFKA_VERSION} is not installed in {home}: run `make tools`")
    return f"{libs}/*"


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaNotInstalled("Apache Kafka needs Java 17 or newer and `java` is not on PATH")
    return java


class ApacheKafkaBroker(ChildServer):
    """One Apache Kafka node, broker and KRaft controller in one JVM, listening on 127.0.0.1 only.

    ``port`` (clients) and the controller port are picked free at construction unless given, and kept
    across restarts, so :attr:`bootstrap_servers` stays valid. The log directory is ``data_dir`` (a temp
    directory removed by ``stop()`` if not given); it is formatted on the first start only. Output goes to
    ``log_path`` (default ``<data_dir>/kafka.log``). Usable as a context manager.
    """

    _WHAT = "Apache Kafka"
    _STOP_GRACE_S = 15.0

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        data_dir: Path | None = None,
        home: Path | None = None,
    ) -> None:
        """Configure (but do not start) a node; ``home`` defaults to this checkout's ``.tools/kafka-<version>``."""
        super().__init__(port)
        self._controller_port = find_free_port()
        while self._controller_port == self._port:
            self._controller_port = find_free_port()
        self._home = home if home is not None else kafka_home()
        self._data_dir_arg = data_dir
        self._data_dir: Path | None = data_dir
        self._log_path_arg = log_path
        self.last_start_s: float | None = None

    # -- properties -------------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers=`` of Kafka clients."""
        return f"{_LOOPBACK}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes (``None`` before the first start)."""
        if self._log_path_arg is not None:
            return self._log_path_arg
        return None if self._data_dir is None else self._data_dir / "kafka.log"

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Format the log directory if new, spawn the JVM and wait until the broker answers Kafka requests.

        Idempotent while running. Raises :class:`KafkaNotInstalled` when ``make tools`` has not run, and
        :class:`RuntimeError` (with the log tail) if a port is taken, the JVM exits, or the broker is not
        ready within ``timeout`` seconds. :attr:`last_start_s` holds how long the start took.
        """
        if self.running:
            return
        began = time.monotonic()
        classpath = _classpath(self._home)
        java = _java()
        for port in (self._port, self._controller_port):
            if not _port_is_bindable(port):
                raise RuntimeError(f"cannot start Apache Kafka: 127.0.0.1:{port} is already in use")
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="apache-kafka-"))
        data_dir = self._data_dir
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        config = data_dir / "server.properties"
        config.write_text(self._server_properties(logs))
        log4j = data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        log_path = self.log_path
        assert log_path is not None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab")  # noqa: SIM115 - lives as long as the child
        base = [java, *_JVM_OPTIONS, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
        if not (logs / "meta.properties").exists():
            self._format(base, config, logs)
        self._launch(
            [*base, f"-Dkafka.logs.dir={data_dir}", "kafka.Kafka", str(config)],
            timeout,
            death_signal=signal.SIGKILL,
        )
        self.last_start_s = time.monotonic() - began

    def _release(self) -> None:
        """Remove the data directory if it was a temp one (``kill()`` and ``restart()`` keep it)."""
        if self._data_dir_arg is None and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __repr__(self) -> str:
        return f"ApacheKafkaBroker(bootstrap_servers={self.bootstrap_servers!r}, pid={self.pid})"

    # -- internals --------------------------------------------------------------------------------

    def _server_properties(self, logs: Path) -> str:
        controller = f"{_LOOPBACK}:{self._controller_port}"
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{self.bootstrap_servers},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(logs),
            # One node: every internal topic with one replica, and no waiting for more members to join.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Consumers may ask for sessions as short as a second (the tests and `healingwork dev` do).
            "group.min.session.timeout.ms": "1000",
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _format(self, base: list[str], config: Path, logs: Path) -> None:
        """``kafka-storage format --standalone``: a fresh cluster id and this node as the only voter."""
        assert self._log_file is not None
        cluster_id = _kafka_cluster_id()
        result = subprocess.run(  # noqa: S603 - the installed Kafka jars, arguments built here
            [*base, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
        if result.returncode != 0 or not (logs / "meta.properties").exists():
            raise RuntimeError(
                f"formatting the Kafka log directory {logs} failed (exit code {result.returncode}); "
                f"log tail of {self.log_path}:\n{_log_tail(self.log_path)}"
            )

    def _probe(self) -> str | None:
        """Ready once the broker answers a metadata request naming itself (the port opens a little earlier)."""
        if _port_accepts(self._port) and _broker_registered(self._port):
            return None
        return f"no broker registered on {_LOOPBACK}:{self._port} yet"


def _kafka_cluster_id() -> str:
    """A random cluster id in Kafka's form: 16 random bytes, URL-safe base64 without padding (22 characters).

    Never one starting with ``-``: ``kafka-storage`` would read it as an option and fail (one id in 64 did,
    which once failed CI). Kafka's own ``Uuid.randomUuid`` draws again for the same reason.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _broker_registered(port: int) -> bool:
    """Whether the broker on ``port`` answers a Metadata request (v4) listing at least one broker.

    Raw Kafka protocol, so the launcher needs no client library: a KRaft broker may accept connections
    before it has registered with its controller, and answers with an empty broker list until then.
    """
    client_id = b"healingwork-devstack"
    # Request header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id;
    # body: topics = [] (empty, not null: no topics wanted, brokers still listed), allow_auto_topic_creation.
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id + struct.pack(">ib", 0, 0)
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=2.0) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
            response = _recv_exactly(sock, size)
    except (OSError, struct.error):
        return False
    # Response header v0: correlation_id (int32); body v4: throttle_time_ms (int32), brokers (array), ...
    if len(response) < 12:
        return False
    correlation_id, _throttle_ms, broker_count = struct.unpack(">iii", response[:12])
    return bool(correlation_id == 7 and broker_count > 0)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks.extend(chunk)
    return bytes(chunks)
