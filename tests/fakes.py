"""Pulumi mocks that behave like the real providers where the tests depend on it.

- OpenStack ports get distinct fixed IPs, floating IPs distinct public addresses.
- pulumi-tls is faked with real cryptography: keys, CA certificates, CSRs and signatures are real,
  so tests verify actual chains, not strings.
- A StackReference answers with the outputs registered for its stack name.
- FakeCluster: a CockroachDB cluster's SQL sessions, drain, decommission, liveness and range metrics, each
  behaviour after the upstream code it names.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pulumi
from pulumi.runtime.mocks import MockMonitor
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    provider: str
    urn: str = ""
    parent: str = ""
    custom: bool = True
    dependencies: set[str] = field(default_factory=set)
    # Resource options the engine applies (mocks do not apply them; tests check they are asked for).
    options: dict[str, Any] = field(default_factory=dict)


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, also recording each resource's URN, parent and dependencies (the engine's graph)."""

    def __init__(self, cloud: "FakeCloud"):
        super().__init__(cloud)
        self.cloud = cloud

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            # Registrations run concurrently; (type, name) identifies a resource in this program.
            record = self.cloud.registered[(request.type, request.name)]
            dependencies = set(request.dependencies)
            for urns in request.propertyDependencies.values():
                dependencies |= set(urns.urns)
            if request.provider:
                # A provider reference is "<urn>::<id>"; the engine orders a resource after its provider.
                dependencies.add(request.provider.rsplit("::", 1)[0])
            record.urn, record.parent, record.custom = response.urn, request.parent, bool(request.custom)
            record.dependencies = dependencies
            timeouts = request.customTimeouts
            record.options = {
                "ignore_changes": list(request.ignoreChanges),
                "delete_before_replace": request.deleteBeforeReplace,
                "deleted_with": request.deletedWith,
                "retain_on_delete": request.retainOnDelete,
                "replace_on_changes": list(request.replaceOnChanges),
                "replacement_trigger": (request.replacement_trigger.string_value
                                        if request.HasField("replacement_trigger") else None),
                "custom_timeouts": {k: getattr(timeouts, k) for k in ("create", "update", "delete")
                                    if getattr(timeouts, k)},
            }
        return response


def _pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _name(subject: dict[str, Any] | None) -> x509.Name:
    attributes = []
    subject = subject or {}
    if subject.get("organization"):
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject["organization"]))
    if subject.get("commonName"):
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject["commonName"]))
    return x509.Name(attributes)


def _sans(inputs: dict[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in inputs.get("ipAddresses") or []]
    return names


def _usages(builder: x509.CertificateBuilder, uses: list[str], is_ca: bool) -> x509.CertificateBuilder:
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature="digital_signature" in uses,
        content_commitment=False,
        key_encipherment="key_encipherment" in uses,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign="cert_signing" in uses,
        crl_sign="crl_signing" in uses,
        encipher_only=False,
        decipher_only=False,
    ), critical=True)
    ekus = [oid for use, oid in (("server_auth", ExtendedKeyUsageOID.SERVER_AUTH),
                                 ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH)) if use in uses]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    return builder


def _sign(subject: x509.Name, issuer: x509.Name, public_key, signing_key, inputs: dict[str, Any], sans) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(hours=int(inputs.get("validityPeriodHours") or 24))))
    builder = _usages(builder, list(inputs.get("allowedUses") or []), bool(inputs.get("isCaCertificate")))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


# A stack's keys outlive its runs in the real state: one RSA key per resource name here too, which also
# spares the suite generating hundreds of them.
_RSA_KEYS: dict[tuple[str, int], Any] = {}


def _rsa_key(name: str, bits: int):
    if (name, bits) not in _RSA_KEYS:
        _RSA_KEYS[(name, bits)] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _RSA_KEYS[(name, bits)]


def fake_tls(type_: str, inputs: dict[str, Any], name: str = "") -> dict[str, Any]:
    if type_ == "tls:index/privateKey:PrivateKey":
        if inputs.get("algorithm") == "RSA":
            key = _rsa_key(name, int(inputs.get("rsaBits") or 2048))
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {**inputs, "privateKeyPem": _pem_key(key), "publicKeyPem": public.decode()}
    if type_ == "tls:index/selfSignedCert:SelfSignedCert":
        key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), None)
        name = _name(inputs.get("subject"))
        return {**inputs, "certPem": _sign(name, name, key.public_key(), key, inputs, _sans(inputs))}
    if type_ == "tls:index/certRequest:CertRequest":
        key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), None)
        builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
        if _sans(inputs):
            builder = builder.add_extension(x509.SubjectAlternativeName(_sans(inputs)), critical=False)
        csr = builder.sign(key, hashes.SHA256())
        return {**inputs, "certRequestPem": csr.public_bytes(serialization.Encoding.PEM).decode()}
    if type_ == "tls:index/locallySignedCert:LocallySignedCert":
        csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        ca_key = serialization.load_pem_private_key(inputs["caPrivateKeyPem"].encode(), None)
        try:
            sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
        return {**inputs, "certPem": _sign(csr.subject, ca.subject, csr.public_key(), ca_key, inputs, sans)}
    raise KeyError(type_)


def placeholder_tls(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    pem = f"-----BEGIN PLACEHOLDER-----\n{name}\n-----END PLACEHOLDER-----\n"
    return {**inputs, "privateKeyPem": pem, "publicKeyPem": pem, "certPem": pem, "certRequestPem": pem}


_SECRET_SIG = "4dabf18193072939515e22adb298388d"


def is_secret_value(value: Any) -> bool:
    return isinstance(value, dict) and _SECRET_SIG in value


def unwrap_secrets(value: Any) -> Any:
    """Mocks receive secret inputs wrapped in the engine's secret envelope; providers see plain values."""
    if is_secret_value(value):
        return unwrap_secrets(value["value"])
    if isinstance(value, dict):
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


@dataclass
class FakeCloud(pulumi.runtime.Mocks):
    """Records every registered resource; `stack_outputs` answers StackReferences by stack name."""

    stack_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: list[Registered] = field(default_factory=list)
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    public_prefix: str = "198.18.0"
    # Image names the cloud does not have (any more).
    missing_images: set = field(default_factory=set)
    # Stash name -> the value an earlier deploy kept (a fresh run is otherwise that first deploy).
    stash_outputs: dict = field(default_factory=dict)
    # False: placeholder PEM text instead of real keys, for benchmarks that time the program, not RSA.
    real_crypto: bool = True
    # What a member's SignatureWait found in the federation tool's file (components/signature.py): node, client.
    signature: dict = field(default_factory=dict)

    def __post_init__(self):
        self.registered: dict[tuple[str, str], Registered] = {}
        self._private = itertools.count(10)
        self._public = itertools.count(10)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = unwrap_secrets(dict(args.inputs))
        outputs = dict(inputs)
        t = args.typ
        if t.startswith("tls:"):
            outputs = fake_tls(t, inputs, args.name) if self.real_crypto else placeholder_tls(args.name, inputs)
        elif t == "openstack:networking/port:Port":
            outputs["allFixedIps"] = [f"10.20.0.{next(self._private)}"]
        elif t == "openstack:networking/floatingIp:FloatingIp":
            outputs["address"] = f"{self.public_prefix}.{next(self._public)}"
        elif t == "pulumi:index:Stash":
            # The engine keeps the first value: what an earlier run stashed (stash_outputs), else this input.
            outputs["output"] = self.stash_outputs.get(args.name, inputs.get("input"))
        elif t == "random:index/randomPassword:RandomPassword":
            # Distinct per resource, as the real ones are: a test can tell which secret went where.
            digest = hashlib.sha256(args.name.encode()).hexdigest() * 4
            outputs["result"] = digest[:int(inputs.get("length", 16))]
        elif t == "random:index/randomId:RandomId":
            # Its hex output, 2 digits a byte (terraform-provider-random internal/provider/resource_id.go), distinct
            # per resource as the real ones are.
            outputs["hex"] = hashlib.sha256(args.name.encode()).hexdigest()[:2 * int(inputs.get("byteLength", 8))]
        elif t == "pulumi-python:dynamic:Resource" and args.name.endswith("-signature"):
            outputs.update(self.signature)
        elif t == "pulumi:pulumi:StackReference":
            name = inputs["name"]
            if name not in self.stack_outputs:
                raise KeyError(f"no fake outputs for stack {name}")
            outputs = {"name": name, "outputs": self.stack_outputs[name], "secretOutputNames": []}
        record = Registered(t, args.name, dict(args.inputs), outputs, args.provider or "")
        self.registered[(t, args.name)] = record
        self.resources.append(record)
        return [f"{args.name}-id", outputs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "openstack:images/getImageIds:getImageIds":
            name = args.args.get("name", "x")
            return {"ids": [] if name in self.missing_images else ["image-" + name]}
        if args.token == "openstack:networking/getNetwork:getNetwork":
            key = args.args.get("name") or args.args.get("networkId")
            return {"id": f"net-{key}", "name": key}
        return {}

    def install(self, *, project: str, stack: str, preview: bool = False) -> None:
        """Installs these mocks (with preview=False, so every apply runs) before any program code runs."""
        pulumi.runtime.set_mocks(self, project=project, stack=stack, preview=preview, monitor=RecordingMonitor(self),
                                 organization="organization")

    def by_urn(self) -> dict[str, Registered]:
        return {r.urn: r for r in self.resources}

    def depends_on(self, resource: Registered, other: Registered) -> bool:
        """True when `resource` transitively depends on `other` (through inputs, depends_on or parents' deps)."""
        graph, seen, stack = self.by_urn(), set(), [resource.urn]
        while stack:
            urn = stack.pop()
            if urn == other.urn:
                return True
            if urn in seen or urn not in graph:
                continue
            seen.add(urn)
            stack.extend(graph[urn].dependencies)
        return False

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, got {len(found)}"
        return found[0]

    def of_type(self, suffix: str) -> list[Registered]:
        return [r for r in self.resources if r.type.endswith(suffix)]

    def one(self, suffix: str) -> Registered:
        found = self.of_type(suffix)
        assert len(found) == 1, f"expected one {suffix}, got {[r.name for r in found]}"
        return found[0]


# --- CockroachDB as its SQL and HTTP interfaces show it (the decommission and OS upgrade tests) ---------------
# CockroachDB cannot run here. These fakes answer the statements the program sends with what a v26.2 cluster
# answers, and each behaviour names the upstream code it imitates.

# pkg/sql/pgwire/server.go: the texts a draining node answers with (both with pgcode AdminShutdown, 57P01).
ERR_DRAINING_NEW_CONN = "server is not accepting clients, try another node"
ERR_DRAINING_EXISTING_CONN = "server is shutting down"
# pkg/sql/sqlerrors ErrUnsafeTableAccess (pgcode 42501), as pkg/sql/unsafesql's tests match it.
ERR_UNSAFE_TABLE_ACCESS = "Access to crdb_internal and system is restricted"
# pkg/sql/pgwire/auth.go handleAuthentication: a user sql.GetUserSessionInitInfo finds no row for in system.users (it
# special-cases root alone) is refused with security.NewErrPasswordUserAuthFailed, whatever the client certificate.
# Bootstrap adds root and admin only: pkg/security/certs_test.go TestUseSplitCACerts, `"node" is not a sql user`.
ERR_LOGIN_FAILED = "password authentication failed for user {user}"
# The users bootstrap makes (pkg/sql/catalog/bootstrap: system.users holds root and admin).
BOOTSTRAP_USERS = ("root", "admin")


@dataclass
class FakeNode:
    node_id: int
    address: str  # the advertised RPC address, <public ip>:26257; its SQL port is on the same host
    locality: str = ""
    is_live: bool = True
    membership: str = "active"
    private_ip: str = ""
    draining: bool = False
    started_at: Any = None

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]


@dataclass(frozen=True)
class FakeRange:
    range_id: int
    replicas: tuple[int, ...]  # node ids (one store per node)
    leaseholder: int


@dataclass
class _FakeTransaction:
    isolation: str
    statements: int = 0
    read_version: Optional[int] = None
    writes: dict = field(default_factory=dict)  # holder -> addresses, None: deleted


class FakeCluster:
    """Nodes, ranges and the decommission lease table of one cluster; `connect(host)` opens a SQL session through
    the node whose SQL port is at `host`, as the operator's machine (or a node's own client) would."""

    # v26.2 session-variables docs: allow_unsafe_internals defaults to off.
    unsafe_internals_default = False

    def __init__(self, nodes: list[FakeNode], *, factor: int = 3, leases: Optional[dict] = None,
                 ranges: tuple[FakeRange, ...] = (), default_isolation: str = "serializable",
                 reachable: Optional[set] = None, ops_user_made: bool = True):
        """`ops_user_made`: the seed's cluster-settings job has run its statements (components/ops_user.py)."""
        self.nodes, self.factor, self.ranges = list(nodes), factor, tuple(ranges)
        self.users: set[str] = set(BOOTSTRAP_USERS)
        # user -> global privileges ("VIEWCLUSTERMETADATA") and table privileges ("SELECT ON <table>").
        self.privileges: dict[str, set[str]] = {}
        self.tables: set[str] = set()
        self.leases: dict[str, list[str]] = {k: list(v) for k, v in (leases or {}).items()}
        self.lease_version = 0
        self.default_isolation = default_isolation
        # The hosts whose SQL port the operator's machine reaches (security groups); None: every host.
        self.reachable = reachable
        self.sessions: list["FakeSession"] = []
        self.events: list[str] = []
        self.conflicts = 0  # transactions to fail with a retry error at commit, as contention would
        self.after_lease_read: Optional[Callable[[], None]] = None  # runs once, inside the reading transaction
        if ops_user_made:
            from components.ops_user import ops_user_statements

            self.run_as_root(ops_user_statements())

    def run_as_root(self, statements) -> None:
        """The seed's statements, as root runs them: databases, tables, users and grants."""
        import re

        for sql in statements:
            table = re.fullmatch(r"CREATE TABLE IF NOT EXISTS (\S+) \(.*\)", sql)
            user = re.fullmatch(r"CREATE USER IF NOT EXISTS (\w+)", sql)
            system = re.fullmatch(r"GRANT SYSTEM (\w+) TO (\w+)", sql)
            on_table = re.fullmatch(r"GRANT ([A-Z, ]+) ON TABLE (\S+) TO (\w+)", sql)
            if table:
                self.tables.add(table.group(1))
            elif user:
                self.users.add(user.group(1))
            elif system:
                self.privileges.setdefault(system.group(2), set()).add(system.group(1))
            elif on_table:
                self.privileges.setdefault(on_table.group(3), set()).update(
                    f"{p.strip()} ON {on_table.group(2)}" for p in on_table.group(1).split(","))
            elif not sql.startswith("CREATE DATABASE IF NOT EXISTS "):
                raise AssertionError(f"the fake cluster does not know this statement: {sql}")

    def node(self, node_id: int) -> FakeNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def by_host(self, host: str) -> Optional[FakeNode]:
        return next((n for n in self.nodes if host in (n.host, n.private_ip)), None)

    # SQL sessions -----------------------------------------------------------------------------------------------
    def connect(self, host: str, user: Optional[str] = None) -> "FakeSession":
        """`user`: the SQL user the client logs in as (components/ops_user.py OPS_USER, unless given)."""
        import psycopg

        from components.ops_user import OPS_USER

        user = user or OPS_USER
        node = self.by_host(host)
        if self.reachable is not None and host not in self.reachable:
            raise psycopg.OperationalError(f'connection to server at "{host}", port 26258 failed: timeout expired')
        if node is None or not node.is_live:
            raise psycopg.OperationalError(f'connection to server at "{host}", port 26258 failed: Connection refused')
        if node.draining:
            # pkg/sql/pgwire/server.go ServeConn: a draining server rejects the connection with ErrDrainingNewConn.
            raise psycopg.OperationalError(f'connection to server at "{host}", port 26258 failed: FATAL:  '
                                           f"{ERR_DRAINING_NEW_CONN}")
        if user not in self.users:
            raise psycopg.OperationalError(f'connection to server at "{host}", port 26258 failed: FATAL:  '
                                           + ERR_LOGIN_FAILED.format(user=user))
        session = FakeSession(self, node, user)
        self.sessions.append(session)
        return session

    def drain(self, node_id: int) -> None:
        """pkg/server/drain.go via pgwire Server.Drain: the node stops accepting SQL clients and cancels its
        sessions; pkg/sql/pgwire/conn.go serveImpl then sends each ErrDrainingExistingConn and closes it."""
        node = self.node(node_id)
        node.draining = True
        self.events.append(f"drain n{node_id}")
        for session in self.sessions:
            if session.gateway is node and not session.closed:
                session.shut_down = True

    def decommission(self, ids: list[int], through: str) -> None:
        """`cockroach node decommission <ids> --host=<through>` as pkg/cli/node.go runDecommissionNodeImpl runs
        it: mark DECOMMISSIONING, wait for no replicas, drain every live target but the node serving the request,
        then mark DECOMMISSIONED."""
        local = self.by_host(through.rsplit(":", 1)[0])
        for node_id in ids:
            self.node(node_id).membership = "decommissioning"
        self.events.append("decommissioning " + " ".join(f"n{i}" for i in ids))
        for node_id in ids:
            node = self.node(node_id)
            if node is not local and node.is_live:
                self.drain(node_id)
        for node_id in ids:
            self.node(node_id).membership = "decommissioned"
        self.events.append("decommissioned " + " ".join(f"n{i}" for i in ids))

    # What the statements see ----------------------------------------------------------------------------------
    def node_rows(self) -> list[tuple]:
        # components/cluster.py NODES_SQL: crdb_internal.gossip_nodes joined with gossip_liveness.
        return [(n.node_id, n.address, n.locality, n.started_at, n.is_live, n.membership) for n in self.nodes]

    def range_counter(self, r: FakeRange) -> Optional[int]:
        """pkg/kv/kvserver/replica_metrics.go calcRangeCounter: a range's metrics are counted by its leaseholder if
        that node is live, else by its first live replica; by no node when none is live."""
        if self.node(r.leaseholder).is_live:
            return r.leaseholder
        return next((i for i in r.replicas if self.node(i).is_live), None)

    def store_metrics(self, node_id: int) -> dict[str, int]:
        """The node's store metrics as /_status/vars and crdb_internal.kv_store_status give them: each range is
        counted (under-replicated: fewer live replicas than the replication factor; unavailable: no live majority of
        its replicas) only by its range counter (calcRangeCounter). A node that is down reports nothing new."""
        metrics = {"ranges": 0, "ranges.underreplicated": 0, "ranges.unavailable": 0}
        if not self.node(node_id).is_live:
            return metrics
        for r in self.ranges:
            if self.range_counter(r) != node_id:
                continue
            live = sum(1 for i in r.replicas if self.node(i).is_live)
            metrics["ranges"] += 1
            metrics["ranges.underreplicated"] += live < self.factor  # the zone's num_replicas (GetNeededVoters)
            metrics["ranges.unavailable"] += live <= len(r.replicas) // 2  # no live majority (CanMakeProgress)
        return metrics

    def prometheus_vars(self, node_id: int) -> str:
        """/_status/vars (pkg/server/status/recorder.go PrintAsText): metric names with '.' as '_', per store."""
        return "".join(f'{name.replace(".", "_")}{{store="{node_id}"}} {value}\n'
                       for name, value in self.store_metrics(node_id).items())

    def ready(self, node_id: int) -> bool:
        """/health?ready=1 (pkg/server/admin.go Health, checkReadinessForHealthCheck): live and not draining."""
        node = self.node(node_id)
        return node.is_live and not node.draining

    def gate_answer(self) -> tuple[int, int]:
        """components/upgrades.py GATE_SQL: member nodes (not decommissioned) that are not live, as pkg/cli/node.go
        runStatusNodeInner reads them (gossip_liveness LEFT JOIN gossip_nodes, ifnull(is_live, false)); and the
        sum of every store's ranges.underreplicated and ranges.unavailable (crdb_internal.kv_store_status, as its
        rangesQuery sums them)."""
        not_live = sum(1 for n in self.nodes if n.membership != "decommissioned" and not n.is_live)
        at_risk = sum(m["ranges.underreplicated"] + m["ranges.unavailable"]
                      for m in (self.store_metrics(n.node_id) for n in self.nodes))
        return not_live, at_risk

    # Lease table transactions ---------------------------------------------------------------------------------
    def commit(self, txn: _FakeTransaction) -> None:
        from psycopg.errors import SerializationFailure

        if self.conflicts:
            self.conflicts -= 1
            raise SerializationFailure("restart transaction: TransactionRetryWithProtoRefreshError")
        if (txn.isolation == "serializable" and txn.read_version is not None and txn.writes
                and self.lease_version > txn.read_version):
            # pkg/kv/kvclient/kvcoord/txn_interceptor_span_refresher.go: a serializable transaction whose write was
            # pushed above another's read must refresh its own reads; a newer write in that span fails the refresh
            # (RETRY_SERIALIZABLE, 40001). READ COMMITTED reads per statement and never refreshes (RFC
            # 20230122_read_committed_isolation.md): the write skew goes through.
            raise SerializationFailure("restart transaction: TransactionRetryWithProtoRefreshError: "
                                       "TransactionRetryError: retry txn (RETRY_SERIALIZABLE)")
        self.apply(txn.writes)

    def apply(self, writes: dict) -> None:
        for holder, addresses in writes.items():
            if addresses is None:
                self.leases.pop(holder, None)
            else:
                self.leases[holder] = list(addresses)
        if writes:
            self.lease_version += 1


class FakeSession:
    """One psycopg connection to one node of a FakeCluster (execute/fetchall/fetchone/transaction/with)."""

    def __init__(self, cluster: FakeCluster, gateway: FakeNode, user: str = "root"):
        self.cluster, self.gateway, self.user = cluster, gateway, user
        self.closed = self.shut_down = False
        self.allow_unsafe_internals = cluster.unsafe_internals_default
        self.txn: Optional[_FakeTransaction] = None
        self.queries: list[str] = []
        self._result: list = []

    def _check_open(self) -> None:
        import psycopg
        from psycopg.errors import AdminShutdown

        if self.shut_down:
            # pkg/sql/pgwire/conn.go serveImpl: a draining server sends ErrDrainingExistingConn, then closes.
            self.shut_down, self.closed = False, True
            raise AdminShutdown(ERR_DRAINING_EXISTING_CONN)
        if self.closed:
            raise psycopg.OperationalError("the connection is closed")

    def execute(self, sql: str, params: tuple = ()) -> "FakeSession":
        from psycopg.errors import InsufficientPrivilege, InternalError_

        from components.cluster import DEFAULT_ZONE_SQL, NODES_SQL
        from components.decommission import OTHER_LEASES_SQL, RELEASE_LEASE_SQL, TAKE_LEASE_SQL
        from components.ops_user import LEASE_SCHEMA

        self._check_open()
        self.queries.append(sql)
        cluster, txn = self.cluster, self.txn
        if "crdb_internal." in sql and not self.allow_unsafe_internals:
            # pkg/sql/unsafesql CheckInternalsAccess: only internal sessions, or one that set
            # allow_unsafe_internals, may read crdb_internal.
            raise InsufficientPrivilege(f"{ERR_UNSAFE_TABLE_ACCESS}")
        self._check_privileges(sql)
        isolation = _isolation_set_by(sql)
        if sql.startswith("SET allow_unsafe_internals"):
            self.allow_unsafe_internals = sql.rstrip().endswith(("true", "on"))
            self._result = []
            return self
        if isolation is not None:
            if txn is None:
                self._result = []
                return self
            if txn.statements and isolation != txn.isolation:
                # pkg/kv/kvclient/kvcoord/txn_coord_sender.go SetIsoLevel, once the transaction has run.
                raise InternalError_("cannot change the isolation level of a running transaction")
            txn.isolation = isolation
            self._result = []
            return self
        if txn is not None:
            txn.statements += 1
        if sql in LEASE_SCHEMA:
            self._result = []
        elif sql == OTHER_LEASES_SQL:
            leases = dict(cluster.leases)
            if txn is not None:
                leases.update(txn.writes)
                txn.read_version = cluster.lease_version
            self._result = [(a,) for h, a in leases.items() if a is not None and h != params[0]]
            if txn is not None and cluster.after_lease_read:
                interleaved, cluster.after_lease_read = cluster.after_lease_read, None
                interleaved()
        elif sql in (TAKE_LEASE_SQL, RELEASE_LEASE_SQL):
            write = {params[0]: list(params[1]) if sql == TAKE_LEASE_SQL else None}
            if txn is not None:
                txn.writes.update(write)
            else:
                cluster.apply(write)
            self._result = []
        elif sql == NODES_SQL:
            self._result = cluster.node_rows()
        elif sql == DEFAULT_ZONE_SQL:
            self._result = [(f"ALTER RANGE default CONFIGURE ZONE USING\n\trange_min_bytes = 134217728,\n\t"
                             f"num_replicas = {cluster.factor},\n\tgc.ttlseconds = 14400",)]
        elif sql == _gate_sql():
            self._result = [cluster.gate_answer()]
        else:
            raise AssertionError(f"the fake cluster does not know this statement: {sql}")
        return self

    def _check_privileges(self, sql: str) -> None:
        """What the statement needs of a user other than root: VIEWCLUSTERMETADATA for crdb_internal's gossip and
        store tables (pkg/sql/crdb_internal.go), the lease table's privileges for the lease (UPSERT: INSERT, UPDATE,
        SELECT; DELETE … WHERE: DELETE, SELECT), and CREATE for the lease schema, which the seed alone runs. The
        pgcodes are CockroachDB's (42501, 42P01); the words are the fake's."""
        from psycopg.errors import InsufficientPrivilege, UndefinedTable

        from components.decommission import OTHER_LEASES_SQL, RELEASE_LEASE_SQL, TAKE_LEASE_SQL
        from components.ops_user import LEASE_SCHEMA, LEASE_TABLE

        if self.user == "root":
            return
        held = self.cluster.privileges.get(self.user, set())
        needed = {f"{p} ON {LEASE_TABLE}" for p in {
            OTHER_LEASES_SQL: ("SELECT",), TAKE_LEASE_SQL: ("INSERT", "UPDATE", "SELECT"),
            RELEASE_LEASE_SQL: ("DELETE", "SELECT")}.get(sql, ())}
        if "crdb_internal." in sql:
            needed.add("VIEWCLUSTERMETADATA")
        if sql in LEASE_SCHEMA:
            raise InsufficientPrivilege(f"user {self.user} may not run {sql.split(' IF ')[0]}: the seed makes it")
        if any(n.endswith(f" ON {LEASE_TABLE}") for n in needed) and LEASE_TABLE not in self.cluster.tables:
            raise UndefinedTable(f'relation "{LEASE_TABLE}" does not exist')
        if needed - held:
            raise InsufficientPrivilege(f"user {self.user} does not have {', '.join(sorted(needed - held))}")

    @contextlib.contextmanager
    def transaction(self):
        """psycopg's BEGIN … COMMIT; the transaction starts at the session's default isolation."""
        self._check_open()
        self.txn = _FakeTransaction(self.cluster.default_isolation)
        try:
            yield self
            self._check_open()
            self.cluster.commit(self.txn)
        finally:
            self.txn = None

    def fetchall(self) -> list:
        return self._result

    def fetchone(self) -> Any:
        return self._result[0] if self._result else None

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> "FakeSession":
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.close()
        return False


def _isolation_set_by(sql: str) -> Optional[str]:
    """'serializable' or 'read committed' for SET TRANSACTION / BEGIN TRANSACTION ISOLATION LEVEL …, else None."""
    words = " ".join(sql.upper().split())
    for prefix in ("SET TRANSACTION ISOLATION LEVEL ", "BEGIN TRANSACTION ISOLATION LEVEL "):
        if words.startswith(prefix):
            return words[len(prefix):].rstrip(";").strip().lower()
    return None


def _gate_sql() -> Optional[str]:
    from components import upgrades

    return getattr(upgrades, "GATE_SQL", None)
