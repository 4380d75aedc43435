"""Decommission before delete, in the engine's own order.

A `Decommission` resource depends on what holds its nodes (server, data volume, attachment), so the
engine deletes it first and deletes those only once its delete has succeeded. Its delete finds the
nodes by their advertised addresses, refuses (and so stops the engine with nothing deleted) when the
cluster would be left with fewer than 3 live nodes or fewer clouds than the replication factor, then
runs `cockroach node decommission` inside the member's own Kubernetes and waits for `decommissioned`.

One resource per node serves scale-down; one per cloud, which depends on all of them and is therefore
deleted first when the whole stack goes, decommissions every node of the cloud at once (CockroachDB
moves each replica once, not once per node) after checking that the whole cloud may leave.

Credentials: no CA key and no `root` certificate. The job's RPCs go with the member's own node client certificate
(user `node`, which it holds anyway to run its nodes). Its SQL logs in as the SQL user the seed made for members'
operations (components/ops_user.py: CockroachDB refuses a SQL login as `node`), with the client certificate the seed
signed for this stack's own node key; that user may read the cluster's nodes and the lease table, nothing more.

Where the SQL goes: `cockroach node decommission` drains every target before it marks it decommissioned, and a
drained node closes its SQL connections and refuses new ones (pkg/cli/node.go runDecommissionNodeImpl,
pkg/sql/pgwire/server.go). So every statement of a removal (the check, the lease, the final memberships and
the release) goes through a node that stays, in a session of its own before and after the job; when the
operator's machine reaches no such node, the removal refuses before it starts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import urllib.error
from dataclasses import dataclass
from typing import Any, Callable, Collection, Optional, Sequence

import pulumi
import pulumi.dynamic as dynamic

from .cluster import UNKNOWN_CLOUD, Node, read_nodes, read_replication_factor
from .kube_api import KubeApi
from .ops_user import LEASE_DATABASE, LEASE_TABLE, OPS_CERT_FILE, OPS_USER
from .settings import COCKROACH_PORT, COCKROACH_SQL_PORT
from .tls_files import write_private

MINIMUM_NODES = 3
POLL_SECONDS = 10.0
TIMEOUT_SECONDS = 6 * 3600
# One decommission Job at a time within a stack's deployment (its dynamic resources share one process).
_ONE_AT_A_TIME = threading.Lock()
FORCE_KEY = "crdb-federation:forceRemoval"
# The same, read when the delete runs: for a stack whose `up` cannot complete to record forceRemoval.
FORCE_ENVIRONMENT = "CRDB_FORCE_REMOVAL"


class DecommissionRefused(Exception):
    """The cluster would not survive this removal, or cannot be asked; nothing was deleted."""


def plan_decommission(nodes: Sequence[Node], addresses: Sequence[str], replication_factor: int,
                      minimum_nodes: int = MINIMUM_NODES, leaving: Collection[str] = ()) -> list[Node]:
    """The nodes to decommission (those advertising `addresses` that are not decommissioned yet), or a
    refusal naming what would be left. Only live, active nodes count as remaining, a node whose locality
    names no cloud counts as no cloud, and nodes another removal holds a lease on (`leaving`) do not count."""
    targets = [n for n in nodes if n.address in addresses and n.membership != "decommissioned"]
    if not targets:
        return []
    remaining = [n for n in nodes if n.serving and n not in targets and n.address not in leaving]
    clouds = sorted({n.cloud for n in remaining if n.cloud != UNKNOWN_CLOUD})
    problems = []
    if len(remaining) < minimum_nodes:
        problems.append(f"only {len(remaining)} live node(s) would remain; at least {minimum_nodes} are needed")
    if len(clouds) < replication_factor:
        problems.append(f"only {len(clouds)} cloud(s) would remain ({', '.join(clouds) or 'none'}) for a "
                        f"replication factor of {replication_factor}: a cloud's loss would then lose ranges")
    if problems:
        ids = ", ".join(f"n{n.node_id} ({n.address})" for n in targets)
        raise DecommissionRefused(
            f"refusing to decommission {ids}: " + "; ".join(problems) + ". Nothing was deleted. Add nodes or "
            f"clouds first; or, for nodes that never joined or were decommissioned by hand, set {FORCE_KEY} true "
            f"(or {FORCE_ENVIRONMENT}=true for this run).")
    return targets


# A removal's claim on the nodes it takes away, in the cluster itself: every stack's removal runs in its own
# engine (the provider process's lock serialises one stack only), so two clouds removed at once could each
# pass the check above against a cluster that still counts the other. The check and the claim are one
# serializable transaction; CockroachDB makes one of two concurrent ones retry, and the retry sees the other's
# lease. A lease expires with the decommission's own deadline, so one left by a killed run does not block. The seed
# makes the table and grants the members' SQL user what these statements need (components/ops_user.py).
# First in the transaction: a cluster or role whose default isolation is READ COMMITTED would let two removals
# each miss the other's lease (write skew); SERIALIZABLE makes one of them retry (cockroachdb/cockroach#118479).
SERIALIZABLE_SQL = "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"
OTHER_LEASES_SQL = f"SELECT addresses FROM {LEASE_TABLE} WHERE holder != %s AND expires > now()"
TAKE_LEASE_SQL = (f"UPSERT INTO {LEASE_TABLE} (holder, addresses, expires) "
                  "VALUES (%s, %s, now() + %s * INTERVAL '1 second')")
RELEASE_LEASE_SQL = f"DELETE FROM {LEASE_TABLE} WHERE holder = %s"
LEASE_ATTEMPTS = 5
# v26.2 closes crdb_internal to client sessions unless they opt in (docs: session variables,
# allow_unsafe_internals, default off; pkg/sql/unsafesql CheckInternalsAccess).
ALLOW_INTERNALS_SQL = "SET allow_unsafe_internals = true"


@dataclass(frozen=True)
class LeasePlan:
    """This removal's targets, and the advertised addresses other removals hold leases on."""
    targets: list[Node]
    leaving: frozenset[str]


def plan_under_lease(connection: Any, holder: str, addresses: Sequence[str], seconds: int) -> LeasePlan:
    """plan_decommission, with the nodes other removals are taking away counted as gone, and a lease on
    this removal's own targets taken in the same transaction (a rerun with nothing left drops its old one)."""
    from psycopg.errors import SerializationFailure

    for _ in range(LEASE_ATTEMPTS):
        try:
            with connection.transaction():
                connection.execute(SERIALIZABLE_SQL)
                leaving = {a for (held,) in connection.execute(OTHER_LEASES_SQL, (holder,)).fetchall() for a in held}
                targets = plan_decommission(read_nodes(connection), addresses, read_replication_factor(connection),
                                            leaving=leaving)
                if targets:
                    connection.execute(TAKE_LEASE_SQL, (holder, [t.address for t in targets], seconds))
                else:
                    connection.execute(RELEASE_LEASE_SQL, (holder,))
            return LeasePlan(targets, frozenset(leaving))
        except SerializationFailure:
            continue
    raise DecommissionRefused(f"another removal kept changing the cluster's leases ({LEASE_ATTEMPTS} attempts); "
                              "nothing was deleted. Run it again.")


def hosts_that_stay(hosts: Sequence[str], leaving: Collection[str]) -> list[str]:
    """The SQL hosts (a node's advertised host) whose node is not among the `leaving` advertised addresses."""
    return [h for h in hosts if f"{h}:{COCKROACH_PORT}" not in leaving]


def sql_addresses(hosts: Sequence[str]) -> str:
    return ", ".join(f"{h}:{COCKROACH_SQL_PORT}" for h in hosts)


class LoginRefused(ConnectionError):
    """The cluster refused the login itself (every node would: users are the cluster's)."""


def login_refused(error: BaseException) -> bool:
    """pgwire's answer to a user without a row in system.users, or a certificate that is not for the user
    (pkg/sql/pgwire/auth.go handleAuthentication; pgcode 28000, invalid_authorization_specification)."""
    return getattr(error, "sqlstate", None) == "28000" or "authentication failed for user" in str(error)


def first_session(hosts: Sequence[str], connect: Callable[[str], Any]) -> Any:
    """A session through the first of `hosts` that answers, opened to crdb_internal; ConnectionError lists what
    each one said, LoginRefused what the first one said when it refused the login."""
    import psycopg

    seen = []
    for host in hosts:
        connection = None
        try:
            connection = connect(host)
            connection.execute(ALLOW_INTERNALS_SQL)
            return connection
        except (psycopg.Error, OSError) as error:
            if connection is not None:
                connection.close()
            said = f"{host}:{COCKROACH_SQL_PORT}: {first_line(error)}"
            if login_refused(error):
                raise LoginRefused(said) from None
            seen.append(said)
    raise ConnectionError("; ".join(seen) or "no SQL address to try")


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class SqlEndpoint:
    """Connects as the members' SQL user (OPS_USER) with the client certificate the seed signed for it, verifying
    the node CA; into the lease's database (that user has no business in `system`)."""

    def __init__(self, ca_pem: str, cert_pem: str, key_pem: str, timeout: int = 10):
        self.ca_pem, self.cert_pem, self.key_pem, self.timeout = ca_pem, cert_pem, key_pem, timeout

    def connect(self, host: str):
        import psycopg

        with tempfile.TemporaryDirectory(prefix="crdb-federation-") as directory:
            files = {name: write_private(os.path.join(directory, name), text) for name, text in (
                ("ca.crt", self.ca_pem), ("client.crt", self.cert_pem), ("client.key", self.key_pem))}
            return psycopg.connect(
                host=host, port=COCKROACH_SQL_PORT, user=OPS_USER, dbname=LEASE_DATABASE, autocommit=True,
                connect_timeout=self.timeout, sslmode="verify-full", sslrootcert=files["ca.crt"],
                sslcert=files["client.crt"], sslkey=files["client.key"])


# A stack whose seed has not signed its third request (or one built before there was one): its SQL has no login.
NO_OPS_CERTIFICATE = (
    f"this stack has no client certificate for the SQL user {OPS_USER} ({OPS_CERT_FILE}), which a removal's checks "
    "and lease log in as; nothing was deleted. The seed's operator runs `up` on the seed (it signs this stack's "
    "request for it), then run `up` on this stack (it installs the certificate and records it for its removal), "
    f"then the removal again. For nodes that never joined, set {FORCE_KEY} true (or {FORCE_ENVIRONMENT}=true for "
    "this run).")


def run_decommission_job(kube: KubeApi, manifest: dict[str, Any], timeout: float,
                         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic
                         ) -> None:
    """Creates the job, waits for it to succeed, and deletes it; raises with its pod's last log lines."""
    namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    try:
        kube.call("DELETE", f"{jobs}/{name}", {"propagationPolicy": "Background"})
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
    kube.call("POST", jobs, manifest)
    deadline = clock() + timeout
    while True:
        status = kube.call("GET", f"{jobs}/{name}").get("status", {})
        failed = any(c.get("type") == "Failed" and c.get("status") == "True" for c in status.get("conditions", []))
        if status.get("succeeded"):
            kube.call("DELETE", f"{jobs}/{name}", {"propagationPolicy": "Background"})
            return
        if failed or clock() > deadline:
            pods = kube.call("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=job-name%3D{name}")
            logs = ""
            for pod in pods.get("items", [])[-1:]:
                logs = kube.call("GET", f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}/log"
                                        "?tailLines=20", text=True)
            what = "failed" if failed else f"did not finish within {timeout:.0f}s"
            raise DecommissionRefused(f"the decommission job {namespace}/{name} {what}; its last lines:\n{logs}")
        sleep(POLL_SECONDS)


def decommission_host(nodes: Sequence[Node], targets: Sequence[Node], own: Sequence[tuple[str, str]],
                      leaving: Collection[str] = ()) -> str:
    """The RPC address of a live node that is not leaving, by this removal or another one (a decommissioned node
    refuses connections, a drained one closes them; the docs ask for "--host={address of any live node}"): one of
    this cloud's own by its private address, where floating IPs may not hairpin, else another cloud's as it
    advertises itself. `own`: (advertised address, private IP) of this cloud's nodes."""
    gone = {t.address for t in targets} | set(leaving)
    serving = {n.address for n in nodes if n.serving and n.address not in gone}
    for address, private_ip in own:
        if address in serving:
            return f"{private_ip}:{COCKROACH_PORT}"
    others = sorted(serving)
    if not others:
        raise DecommissionRefused("no live node outside the leaving ones to run the decommission through; "
                                  "nothing was deleted")
    return others[0]


def decommission(props: dict[str, Any], *, connect: Optional[Callable[[str], Any]] = None,
                 run_job: Callable[..., None] = run_decommission_job, kube: Optional[Any] = None,
                 sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """The delete of a Decommission resource; returns the ids of the nodes it decommissioned. `connect(host)` opens
    a SQL connection to one host. Properties added since a resource was created are read with a default: its
    stored outputs may lack them."""
    if props.get("force") or os.environ.get(FORCE_ENVIRONMENT, "").lower() in ("1", "true", "yes"):
        return []
    if not props.get("certPem"):
        # The seed never signed this stack's certificates: its nodes never started, so never joined.
        return []
    if not props.get("opsCertPem"):
        raise DecommissionRefused(NO_OPS_CERTIFICATE)
    connect = connect or SqlEndpoint(props["caPem"], props["opsCertPem"], props["keyPem"]).connect
    holder = props.get("leaseHolder") or props["jobName"]
    seconds = int(props["timeoutSeconds"])
    which = ", ".join(props["addresses"])
    why, then = (f"to ask whether {which} may go",
                 f"Nothing was deleted. For nodes that never joined or were decommissioned by hand, set {FORCE_KEY} "
                 f"true (or {FORCE_ENVIRONMENT}=true for this run).")
    with _sql_step(why, then):
        with _session_that_stays(props, props["addresses"], connect, why, then) as connection:
            plan = plan_under_lease(connection, holder, props["addresses"], seconds)
            nodes = read_nodes(connection) if plan.targets else []
    if not plan.targets:
        return []
    ids = [t.node_id for t in plan.targets]
    failure: Optional[Exception] = None
    try:
        _run_job(props, nodes, plan, ids, run_job, kube)
    except Exception as error:  # the cluster's memberships decide below: the job's last RPC can fail at the end
        failure = error
    # A new session: the job may run for hours, and what stays may have changed meanwhile.
    why, then = (f"to confirm the decommission of {which} and release the lease {holder}",
                 f"Nothing was deleted; the lease expires by itself within {seconds}s. Run the removal again: it "
                 "picks up where the cluster is.")
    with _sql_step(why, then):
        with _session_that_stays(props, {*props["addresses"], *plan.leaving}, connect, why, then) as connection:
            left = _memberships(connection, ids)
            connection.execute(RELEASE_LEASE_SQL, (holder,))
    if all(state == "decommissioned" for state in left.values()):
        return ids
    if failure is not None:
        raise failure
    raise DecommissionRefused(f"after the decommission job, nodes are {left}, not all decommissioned; "
                              "nothing was deleted")


def _run_job(props: dict[str, Any], nodes: Sequence[Node], plan: LeasePlan, ids: Sequence[int],
             run_job: Callable[..., None], kube: Optional[Any]) -> None:
    from .cockroach_manifests import render_decommission_job

    host = decommission_host(nodes, plan.targets, list(zip(props["ownAddresses"], props["rpcHosts"])), plan.leaving)
    manifest = render_decommission_job(props["namespace"], props["image"], props["jobName"], ids, host,
                                       int(props["timeoutSeconds"]), props.get("clusterName"))
    run_job(kube or KubeApi(props["kubeconfig"]), manifest, float(props["timeoutSeconds"]))


def _session_that_stays(props: dict[str, Any], leaving: Collection[str], connect: Callable[[str], Any],
                        why: str, then: str) -> Any:
    """A SQL session through a node that neither this removal nor another takes away: a drained gateway closes
    its sessions. Refuses, naming the addresses this machine must reach, when it reaches none of them."""
    staying = hosts_that_stay(props["sqlHosts"], leaving)
    if not staying:
        raise DecommissionRefused(
            f"no SQL address of a node that stays is known {why} (every one of "
            f"{sql_addresses(props['sqlHosts']) or 'none'} is leaving). {then}")
    try:
        return first_session(staying, connect)
    except LoginRefused as error:
        raise DecommissionRefused(
            f"the cluster refused the SQL login as {OPS_USER} {why} ({error}). The seed makes that user and its "
            "grants (its cluster-settings job, within 10 minutes of the seed's `up`): the seed's operator runs `up` "
            f"on the seed, and once that job has run, run the removal again. {then}") from None
    except ConnectionError as error:
        raise DecommissionRefused(
            f"cannot reach the cluster {why}: no node that stays answered ({error}). This machine must reach the "
            f"SQL port of one of them: {sql_addresses(staying)} (open to its cloud's sqlCidrs and adminCidrs). "
            f"{then}") from None


@contextlib.contextmanager
def _sql_step(why: str, then: str):
    """A lost connection or a failed statement becomes a refusal that says what was under way."""
    import psycopg

    try:
        yield
    except psycopg.Error as error:
        raise DecommissionRefused(f"lost the cluster's answer {why}: {first_line(error)}. {then}") from None


def _memberships(connection: Any, ids: Sequence[int]) -> dict[int, str]:
    return {n.node_id: n.membership for n in read_nodes(connection) if n.node_id in ids}


class _DecommissionProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        # Nothing to do until delete: the nodes join by themselves.
        return dynamic.CreateResult(id_=props["jobName"], outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        # __provider too: the state keeps the provider as a reference to this module and class, and a delete
        # uses the stored one; a changed reference must reach the state through an update.
        keys = [k for k in news if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(keys), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        with _ONE_AT_A_TIME:
            decommission(props)


class Decommission(dynamic.Resource):
    """Decommissions the nodes advertising `addresses` when deleted; see the module docstring."""

    def __init__(self, name: str, *, addresses: pulumi.Input[Sequence[str]], own: "OwnNodes",
                 force: bool, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(
            _DecommissionProvider(),
            name,
            {
                "jobName": f"decommission-{name}"[:63].rstrip("-"),
                # Unique in the federation: in existing-cluster mode two members' nodes may share a name.
                "leaseHolder": f"{own.stack}/{name}",
                "addresses": addresses,
                "ownAddresses": own.addresses,
                "rpcHosts": own.private_ips,
                "sqlHosts": own.sql_hosts,
                "caPem": own.ca_pem,
                "certPem": own.cert_pem,
                "opsCertPem": own.ops_cert_pem,
                "keyPem": pulumi.Output.secret(own.key_pem),
                "kubeconfig": pulumi.Output.secret(own.kubeconfig),
                "namespace": own.namespace,
                "image": own.image,
                "clusterName": own.cluster_name,
                "force": force,
                "timeoutSeconds": TIMEOUT_SECONDS,
            },
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                additional_secret_outputs=["keyPem", "kubeconfig"])),
        )


class OwnNodes:
    """What every Decommission of one stack shares: its nodes' addresses and its credentials (`cert_pem`: the node
    client certificate, for the job's RPCs; `ops_cert_pem`: the SQL user's, for the checks and the lease)."""

    def __init__(self, *, stack: str, addresses: pulumi.Input[Sequence[str]], private_ips: pulumi.Input[Sequence[str]],
                 sql_hosts: pulumi.Input[Sequence[str]], ca_pem: pulumi.Input[str],
                 cert_pem: pulumi.Input[Optional[str]], key_pem: pulumi.Input[str], kubeconfig: pulumi.Input[str],
                 namespace: str, image: str, cluster_name: str,
                 ops_cert_pem: pulumi.Input[Optional[str]] = None):
        self.stack = stack  # the full stack name: unique in the federation
        self.addresses, self.private_ips, self.sql_hosts = addresses, private_ips, sql_hosts
        self.ca_pem, self.cert_pem, self.key_pem, self.kubeconfig = ca_pem, cert_pem, key_pem, kubeconfig
        self.ops_cert_pem = ops_cert_pem
        self.namespace, self.image, self.cluster_name = namespace, image, cluster_name
