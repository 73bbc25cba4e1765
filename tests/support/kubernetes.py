"""A real Kubernetes API server for the ``kubernetes`` tests: etcd and kube-apiserver on loopback.

``make tools`` (scripts/tools/kubernetes.sh) builds both into ``.tools/bin``; kubectl and helm come from
scripts/ensure-tools.sh too. A missing binary FAILS the test, naming ``make tools``: the suite is never
skipped where the tools can be built.

The control plane is the API server alone, as a test needs it: its own CA and serving certificate, client
certificates (the admin is in ``system:masters``), the RBAC authorizer, service-account tokens signed by
its own key (so the TokenRequest API works), every default admission plugin. There is no
controller-manager, scheduler or kubelet: nothing creates Pods from Deployments or Jobs, nothing runs
them, nothing creates a namespace's ``default`` ServiceAccount or garbage-collects. Tests do by hand, and
say so, the little of that they need.

Load with ``pytest_plugins = ["tests.support.kubernetes"]``; ``kubernetes_cluster`` is session-scoped
(one API server per session, a namespace per test from ``cluster.create_namespace``).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KubernetesCluster", "kubernetes_cluster"]

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kubectl", "helm")
# The issuer of service-account tokens, as a cluster's API server would name itself.
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


def tool(name: str) -> Path:
    """The path of a tool in ``.tools/bin``; fails the test (never skips) when it is missing."""
    path = TOOLS_BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{os.path.relpath(path, ROOT)} is missing: run `make tools` (builds kube-apiserver and etcd, "
            "installs kubectl and helm) before the kubernetes tests",
            pytrace=False,
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- certificates -------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server_names: Sequence[str] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        names: list[x509.GeneralName] = []
        for name in server_names:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class _Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_public_key: Path


def _write_pki(directory: Path) -> _Pki:
    """A CA, the API server's serving certificate, the admin's client certificate (``system:masters``)
    and the service-account signing key pair, as PEM files in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("healingwork-test-ca")
    ca = _certificate(ca_name, ca_key, None, ca=True)
    server_key = _key()
    server = _certificate(
        _name("kube-apiserver"),
        server_key,
        (ca_name, ca_key),
        server_names=["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
    )
    admin_key = _key()
    admin = _certificate(_name("healingwork-test-admin", "system:masters"), admin_key, (ca_name, ca_key), client=True)
    account_key = _key()
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "apiserver.crt": server.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(server_key),
        "admin.crt": admin.public_bytes(serialization.Encoding.PEM),
        "admin.key": _pem_key(admin_key),
        "service-account.key": _pem_key(account_key),
        "service-account.pub": account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
        (directory / name).chmod(0o600)
    return _Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "apiserver.crt",
        server_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        service_account_key=directory / "service-account.key",
        service_account_public_key=directory / "service-account.pub",
    )


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str], namespace: str = "default") -> Path:
    """A kubeconfig of one context: ``server`` trusted through ``ca``, authenticated as ``user`` (the
    kubeconfig's user fields: ``client-certificate``/``client-key`` or ``token``)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# -- processes ----------------------------------------------------------------------------------------


def die_with_parent() -> None:
    """In the child: receive SIGKILL when the test process dies, so no server outlives a killed run."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Process:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()


# -- the cluster --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubernetesCluster:
    """A running API server: its URL, the admin kubeconfig, and the CLIs bound to it."""

    server: str
    kubeconfig: Path
    ca: Path
    workdir: Path

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """The environment of a kubectl/helm/operator process talking to this API server only."""
        home = self.workdir / "home"
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "HELM_CACHE_HOME": str(home / "helm-cache"),
            "HELM_CONFIG_HOME": str(home / "helm-config"),
            "HELM_DATA_HOME": str(home / "helm-data"),
            "KUBECACHEDIR": str(home / "kube-cache"),
        }

    def run(
        self,
        binary: str,
        *args: str | Path,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl`` or ``helm`` against this cluster; with ``check`` a failure fails the test."""
        argv = [str(tool(binary)), *map(str, args)]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env(kubeconfig),
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"`{binary} {' '.join(map(str, args))}` exited {result.returncode}:\n"
                f"{result.stderr}{result.stdout[:2000]}",
                pytrace=False,
            )
        return result

    def kubectl(self, *args: str | Path, **options: Any) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS`` as the admin (or ``kubeconfig=``)."""
        return self.run("kubectl", *args, **options)

    def helm(self, *args: str | Path, **options: Any) -> subprocess.CompletedProcess[str]:
        """``helm ARGS`` as the admin."""
        return self.run("helm", *args, **options)

    def get(self, *args: str, namespace: str | None = None) -> Any:
        """``kubectl get ARGS -o json``, parsed."""
        scope = ["--namespace", namespace] if namespace else []
        return json.loads(self.kubectl("get", *args, *scope, "-o", "json").stdout)

    def apply(self, manifest: Any, namespace: str | None = None, **options: Any) -> subprocess.CompletedProcess[str]:
        """``kubectl apply`` of one object or a list of them (as Python data)."""
        documents = manifest if isinstance(manifest, list) else [manifest]
        scope = ["--namespace", namespace] if namespace else []
        return self.kubectl("apply", *scope, "-f", "-", input=yaml.safe_dump_all(documents), **options)

    def create_namespace(self, prefix: str = "test") -> str:
        """A new namespace ``<prefix>-<random>`` with its ``default`` ServiceAccount (which the absent
        controller-manager would create)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        self.kubectl("create", "serviceaccount", "default", "--namespace", name)
        return name

    def service_account_kubeconfig(self, namespace: str, account: str, path: Path) -> Path:
        """A kubeconfig authenticating as ServiceAccount ``namespace/account`` with a token from the
        TokenRequest API (``kubectl create token``), as a pod of that account would."""
        token = self.kubectl("create", "token", account, "--namespace", namespace, "--duration", "2h").stdout.strip()
        return write_kubeconfig(path, self.server, self.ca, {"token": token}, namespace)


def _wait_ready(cluster: KubernetesCluster, pki: _Pki, processes: list[_Process]) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    # /readyz covers etcd and the post-start hooks (RBAC bootstrap roles among them); the default
    # namespace is created by a bootstrap controller just after.
    for path in ("/readyz", "/api/v1/namespaces/default"):
        while True:
            for process in processes:
                if process.exited() is not None:
                    raise RuntimeError(
                        f"{process.name} exited with {process.exited()} at start-up:\n{process.log_tail()}"
                    )
            try:
                with urllib.request.urlopen(cluster.server + path, context=context, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError) as error:
                last = str(error)
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in processes)
                raise RuntimeError(f"the API server is not ready after {START_TIMEOUT_S:.0f} s ({last}):\n{logs}")
            time.sleep(0.2)


@contextlib.contextmanager
def running_cluster(workdir: Path) -> Iterator[KubernetesCluster]:
    """Start etcd and kube-apiserver in ``workdir``; stop both (API server first) on exit."""
    etcd, apiserver = tool("etcd"), tool("kube-apiserver")
    for name in ("kubectl", "helm"):
        tool(name)
    pki = _write_pki(workdir / "pki")
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    processes = [
        _Process(
            "etcd",
            [
                str(etcd),
                "--name=test",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                # A throw-away store: durability across a power cut is not what the tests check.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            workdir / "etcd.log",
        ),
        _Process(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # The endpoints of the `kubernetes` Service would name this address, which may not be a
                # loopback one; nothing in the tests reaches the API server through that Service.
                "--endpoint-reconciler-type=none",
                f"--secure-port={api_port}",
                f"--tls-cert-file={pki.server_cert}",
                f"--tls-private-key-file={pki.server_key}",
                f"--client-ca-file={pki.ca}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_key}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--profiling=false",
                "--v=1",
            ],
            workdir / "kube-apiserver.log",
        ),
    ]
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = write_kubeconfig(
        workdir / "admin.kubeconfig",
        server,
        pki.ca,
        {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)},
    )
    cluster = KubernetesCluster(server=server, kubeconfig=kubeconfig, ca=pki.ca, workdir=workdir)
    try:
        for process in processes:
            process.start()
        _wait_ready(cluster, pki, processes)
        yield cluster
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.fixture(scope="session")
def kubernetes_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubernetesCluster]:
    """One etcd + kube-apiserver for the whole session (see the module docstring)."""
    workdir = tmp_path_factory.mktemp("kubernetes", numbered=True)
    try:
        with running_cluster(workdir) as cluster:
            yield cluster
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
