"""Decommission before delete: which nodes, when to refuse, and the whole delete against a fake cluster that
answers SQL, drains and decommissions as CockroachDB does (tests/fakes.py FakeCluster) and a fake Kubernetes
API that runs the job."""

from __future__ import annotations

import datetime

import pytest

from components.cluster import read_nodes
from components.decommission import (
    ALLOW_INTERNALS_SQL, DecommissionRefused, decommission, plan_decommission, plan_under_lease,
    run_decommission_job,
)
from components.ops_user import OPS_USER
from tests.fakes import (
    ERR_DRAINING_EXISTING_CONN, ERR_DRAINING_NEW_CONN, ERR_LOGIN_FAILED, ERR_UNSAFE_TABLE_ACCESS, FakeCluster, FakeNode,
)

STARTED = datetime.datetime(2026, 12, 1, 8, 0)


def loc(cloud):
    return f"cloud={cloud},region=r,zone=z"


def row(node_id, address, cloud, live=True, membership="active"):
    return FakeNode(node_id, address, loc(cloud) if cloud else "", live, membership, started_at=STARTED)


# Three clouds of three nodes each; vexxhost's nodes advertise 198.18.3.x.
FEDERATION = [
    row(1, "198.18.1.1:26257", "seed"), row(2, "198.18.1.2:26257", "seed"), row(3, "198.18.1.3:26257", "seed"),
    row(4, "198.18.2.1:26257", "otc"), row(5, "198.18.2.2:26257", "otc"), row(6, "198.18.2.3:26257", "otc"),
    row(7, "198.18.3.1:26257", "vexxhost"), row(8, "198.18.3.2:26257", "vexxhost"),
    row(9, "198.18.3.3:26257", "vexxhost"),
]
VEXXHOST = ["198.18.3.1:26257", "198.18.3.2:26257", "198.18.3.3:26257"]
OTC = ["198.18.2.1:26257", "198.18.2.2:26257", "198.18.2.3:26257"]


def zte():
    return [row(10 + i, f"198.18.4.{i}:26257", "zte") for i in range(1, 4)]


def cluster_of(rows, **options):
    # Fresh nodes each time: the fake cluster changes them (drains, memberships).
    return FakeCluster([FakeNode(**vars(n)) for n in rows], **options)


def session(cluster, host="198.18.1.1"):
    """A session as the program opens one: crdb_internal opened first (v26.2)."""
    connection = cluster.connect(host)
    connection.execute(ALLOW_INTERNALS_SQL)
    return connection


def plan(rows, addresses, factor=3):
    return [n.node_id for n in plan_decommission(read_nodes(session(cluster_of(rows))), addresses, factor)]


def test_a_node_is_found_by_its_advertised_address():
    assert plan(FEDERATION, ["198.18.3.3:26257"]) == [9]


def test_a_node_that_never_joined_or_was_decommissioned_needs_nothing():
    assert plan(FEDERATION, ["198.18.9.9:26257"]) == []
    gone = [row(9, "198.18.3.3:26257", "vexxhost", live=False, membership="decommissioned") if n.node_id == 9 else n
            for n in FEDERATION]
    assert plan(gone, ["198.18.3.3:26257"]) == []


def test_a_restarted_node_with_a_wiped_store_leaves_two_ids_behind_one_address():
    rejoined = FEDERATION + [row(10, "198.18.3.3:26257", "vexxhost")]
    assert plan(rejoined, ["198.18.3.3:26257"]) == [9, 10]


def test_the_whole_cloud_goes_at_once_when_enough_remains():
    assert plan(FEDERATION, VEXXHOST, factor=1) == [7, 8, 9]


def test_refuses_when_fewer_clouds_than_the_replication_factor_would_remain():
    with pytest.raises(DecommissionRefused) as refused:
        plan(FEDERATION, VEXXHOST, factor=3)
    message = str(refused.value)
    assert "only 2 cloud(s) would remain (otc, seed) for a replication factor of 3" in message
    assert "n7 (198.18.3.1:26257)" in message and "Nothing was deleted" in message
    assert "crdb-federation:forceRemoval" in message


def test_refuses_when_fewer_than_three_live_nodes_would_remain():
    small = FEDERATION[:3] + [row(4, "198.18.2.1:26257", "otc")]
    with pytest.raises(DecommissionRefused, match=r"only 2 live node\(s\) would remain; at least 3 are needed"):
        plan(small, ["198.18.1.1:26257", "198.18.1.2:26257"], factor=1)


def test_dead_decommissioning_and_unknown_nodes_do_not_count_as_remaining():
    shaky = [row(1, "198.18.1.1:26257", "seed"), row(2, "198.18.1.2:26257", "seed", live=False),
             row(3, "198.18.1.3:26257", "seed", membership="decommissioning"),
             row(4, "198.18.2.1:26257", "otc"), row(5, "198.18.2.2:26257", None),
             row(6, "198.18.3.1:26257", "vexxhost")]
    with pytest.raises(DecommissionRefused) as refused:
        plan(shaky, ["198.18.3.1:26257"], factor=3)
    # Live and active: n1, n4 and n5; n5's locality names no cloud, so it counts as none.
    assert "only 3 live node(s)" not in str(refused.value)
    assert "only 2 cloud(s) would remain (otc, seed)" in str(refused.value)


class FakeKube:
    """Records the job it is asked to run; the job runs `cockroach node decommission` in the fake cluster (which
    drains and decommissions as pkg/cli/node.go does). `during(job)` runs while the job runs."""

    def __init__(self, cluster, outcome="succeeded", during=None):
        self.cluster, self.outcome, self.during, self.calls, self.job = cluster, outcome, during, [], None

    def call(self, method, path, body=None, *, text=False):
        self.calls.append((method, path))
        if method == "POST":
            self.job = body
            words = job_command(self).split()
            ids = [int(word) for word in words if word.isdigit()]
            host = next(w.split("=", 1)[1] for w in words if w.startswith("--host="))
            if self.outcome == "succeeded":
                self.cluster.decommission(ids, through=host)
            if self.during:
                self.during(body)
            return {}
        if method == "GET" and "/jobs/" in path:
            return {"status": {"succeeded": 1}} if self.outcome == "succeeded" else {
                "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
        if "pods?" in path:
            return {"items": [{"metadata": {"name": "decommission-x-abc"}}]}
        if path.endswith("/log?tailLines=20"):
            return "ERROR: rpc error: code = PermissionDenied"
        return {}


def props(**overrides):
    values = {
        "jobName": "decommission-vexxhost-k3s-2", "leaseHolder": "organization/crdb-federation/vexxhost/k3s-2",
        "addresses": ["198.18.3.3:26257"], "ownAddresses": VEXXHOST,
        "rpcHosts": ["10.20.0.10", "10.20.0.11", "10.20.0.12"], "sqlHosts": ["198.18.3.1", "198.18.1.1"],
        "caPem": "ca", "certPem": "client.node.crt", "opsCertPem": "client.crdb_federation_ops.crt", "keyPem": "key",
        "kubeconfig": "kubeconfig",
        "namespace": "cockroachdb", "image": "cockroachdb/cockroach:v26.2.0", "clusterName": "crdb-federation",
        "force": False, "timeoutSeconds": 600,
    }
    values.update(overrides)
    return values


def whole_vexxhost(**overrides):
    """The whole cloud's removal: its own nodes first in the SQL hosts, then the join list's (other clouds)."""
    return props(**{"jobName": "decommission-vexxhost-decommission", "addresses": VEXXHOST,
                    "leaseHolder": "organization/crdb-federation/vexxhost/vexxhost-decommission",
                    "sqlHosts": ["198.18.3.1", "198.18.3.2", "198.18.3.3", "198.18.1.1", "198.18.2.1"], **overrides})


def job_command(kube):
    return kube.job["spec"]["template"]["spec"]["containers"][0]["command"][2]


def gateways(cluster):
    return [s.gateway.address for s in cluster.sessions]


def test_delete_decommissions_through_a_live_node_of_the_same_cloud_and_waits_for_decommissioned():
    cluster = cluster_of(FEDERATION)
    kube = FakeKube(cluster)
    assert decommission(props(), connect=cluster.connect, kube=kube) == [9]
    # Not through the node that is leaving: through the first node of the cloud that stays.
    assert ("node decommission 9 --host=10.20.0.10:26257 --cluster-name=crdb-federation "
            "--cert-principal-map=node:root --wait=all") in job_command(kube)
    assert kube.job["metadata"] == {"name": "decommission-vexxhost-k3s-2", "namespace": "cockroachdb",
                                    "labels": kube.job["metadata"]["labels"]}
    assert ("DELETE", "/apis/batch/v1/namespaces/cockroachdb/jobs/decommission-vexxhost-k3s-2") in kube.calls
    assert cluster.node(9).membership == "decommissioned" and cluster.leases == {}
    assert "198.18.3.3:26257" not in gateways(cluster)


def test_the_fake_drains_and_decommissions_as_cockroachdb_does():
    """What cannot run here, held to the upstream source. pkg/cli/node.go runDecommissionNodeImpl: mark the targets
    DECOMMISSIONING; once they hold no replicas, drain each live target ("We now drain the nodes in order to close
    all SQL connections") except the node serving the request; then mark them DECOMMISSIONED. A draining node
    closes its SQL sessions with ErrDrainingExistingConn (pkg/sql/pgwire/conn.go serveImpl) and refuses new ones
    with ErrDrainingNewConn (pkg/sql/pgwire/server.go ServeConn), both pgcode AdminShutdown (57P01)."""
    import psycopg
    from psycopg.errors import AdminShutdown, InsufficientPrivilege

    cluster = cluster_of(FEDERATION + zte())
    through_leaving = session(cluster, "198.18.3.1")
    through_staying = session(cluster, "198.18.1.1")
    cluster.decommission([7, 8, 9], through="198.18.1.1:26257")
    assert cluster.events == ["decommissioning n7 n8 n9", "drain n7", "drain n8", "drain n9",
                              "decommissioned n7 n8 n9"]
    with pytest.raises(AdminShutdown, match=ERR_DRAINING_EXISTING_CONN):
        read_nodes(through_leaving)
    with pytest.raises(psycopg.OperationalError, match="the connection is closed"):
        read_nodes(through_leaving)
    with pytest.raises(psycopg.OperationalError, match=ERR_DRAINING_NEW_CONN):
        cluster.connect("198.18.3.2")
    assert {n.node_id: n.membership for n in read_nodes(through_staying)}[8] == "decommissioned"
    # The node serving the request is not drained by it.
    serving = cluster_of(FEDERATION)
    serving.decommission([9], through="198.18.3.3:26257")
    assert serving.events == ["decommissioning n9", "decommissioned n9"]
    # v26.2 closes crdb_internal to client sessions that did not opt in (pkg/sql/unsafesql CheckInternalsAccess).
    with pytest.raises(InsufficientPrivilege, match=ERR_UNSAFE_TABLE_ACCESS):
        read_nodes(cluster.connect("198.18.1.2"))


def test_a_whole_cloud_leaves_through_another_clouds_node_and_releases_its_lease():
    """Row 1 of issue 28. The operator's SQL session never goes through a node of the cloud that leaves: the job
    drains every one of them (runDecommissionNodeImpl), which closes such a session, so the lease could not be
    released. The job itself goes through another cloud's node, as it advertises itself."""
    cluster = cluster_of(FEDERATION + zte())
    kube = FakeKube(cluster)
    assert decommission(whole_vexxhost(), connect=cluster.connect, kube=kube) == [7, 8, 9]
    assert "node decommission 7 8 9 --host=198.18.1.1:26257 " in job_command(kube)
    assert cluster.leases == {}
    assert not set(gateways(cluster)) & set(VEXXHOST), gateways(cluster)


def test_a_removal_refuses_before_it_starts_when_this_machine_reaches_no_node_that_stays():
    """Row 1: the other clouds' SQL ports do not admit this machine. Nothing starts (no lease, no job, no drain),
    and the refusal names the addresses and port it needs."""
    cluster = cluster_of(FEDERATION + zte(), reachable={"198.18.3.1", "198.18.3.2", "198.18.3.3"})
    kube = FakeKube(cluster)
    with pytest.raises(DecommissionRefused) as refused:
        decommission(whole_vexxhost(), connect=cluster.connect, kube=kube)
    message = str(refused.value)
    assert "This machine must reach the SQL port of one of them: 198.18.1.1:26258, 198.18.2.1:26258" in message
    assert "Nothing was deleted" in message
    assert kube.job is None and cluster.leases == {} and cluster.events == []


def test_a_removal_whose_every_sql_address_leaves_refuses_before_it_starts():
    cluster = cluster_of(FEDERATION + zte())
    kube = FakeKube(cluster)
    with pytest.raises(DecommissionRefused, match="no SQL address of a node that stays is known"):
        decommission(whole_vexxhost(sqlHosts=["198.18.3.1", "198.18.3.2", "198.18.3.3"]), connect=cluster.connect,
                     kube=kube)
    assert kube.job is None and cluster.events == []


def test_a_connection_lost_during_a_removal_is_a_refusal_that_says_what_to_do():
    """Row 1: the staying node this machine reaches is drained while the job runs (its own cloud's OS upgrade), and
    no other staying node answers: the removal says so, and that the lease expires and a rerun picks up."""
    cluster = cluster_of(FEDERATION + zte(), reachable={"198.18.3.1", "198.18.3.2", "198.18.3.3", "198.18.1.1"})
    kube = FakeKube(cluster, during=lambda job: cluster.drain(1))
    with pytest.raises(DecommissionRefused) as refused:
        decommission(whole_vexxhost(), connect=cluster.connect, kube=kube)
    message = str(refused.value)
    assert f"198.18.1.1:26258: connection to server at \"198.18.1.1\", port 26258 failed: FATAL:  " \
           f"{ERR_DRAINING_NEW_CONN}" in message
    assert "to confirm the decommission of 198.18.3.1:26257" in message
    assert "the lease expires by itself within 600s. Run the removal again" in message
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    # The rerun, once a staying node answers again: the nodes are gone already, and the old lease with them.
    cluster.node(1).draining = False
    assert decommission(whole_vexxhost(), connect=cluster.connect, kube=FakeKube(cluster)) == []
    assert cluster.leases == {}


def test_the_job_never_goes_through_a_node_another_removal_is_taking_away():
    """Row 4 of issue 28: ovh's removal holds a lease on its nodes and will drain them; vexxhost's job must not go
    through one of them, or its connection breaks when they are drained."""
    ovh = [row(20 + i, f"198.18.0.{i}:26257", "ovh") for i in range(1, 4)]
    ovh_lease = [n.address for n in ovh]
    cluster = cluster_of(ovh + FEDERATION + zte(), leases={"organization/crdb-federation/ovh/ovh-decommission":
                                                            ovh_lease})
    kube = FakeKube(cluster)
    assert decommission(whole_vexxhost(sqlHosts=["198.18.1.1"]), connect=cluster.connect, kube=kube) == [7, 8, 9]
    host = next(w.split("=", 1)[1] for w in job_command(kube).split() if w.startswith("--host="))
    assert host not in ovh_lease and host == "198.18.1.1:26257"


def test_two_members_whose_kubernetes_nodes_share_a_name_hold_leases_of_their_own(seed_outputs):
    """Row 5 of issue 28: in existing-cluster mode a node's decommissioning is named after its Kubernetes node. Two
    clouds whose clusters both have a `node-0` must not share a lease key: `holder != %s` would hide the other's
    lease and the UPSERT overwrite it. Their removals at once must count each other."""
    import yaml

    from tests.harness import MEMBER, SEED_STACK, pinned_to, run_program

    def removal(stack, prefix):
        kubeconfig = yaml.safe_dump({"clusters": [{"name": stack, "cluster": {"server": f"https://{prefix}.5:6443"}}]})
        config = {**MEMBER, "kubernetesMode": "existing",
                  "existingNodes": [f"node-{i} {prefix}.{10 + i} 10.0.0.{10 + i}" for i in range(3)]}
        run = run_program(pinned_to(seed_outputs, config), stack=stack, secrets={"kubeconfig": kubeconfig},
                          stack_outputs={SEED_STACK: seed_outputs})
        stored = run.cloud.named("node-0-decommission").outputs
        return stored.get("leaseHolder") or stored["jobName"]  # what the delete reads, old resources included

    magnum, ovh = removal("magnum", "198.20.1"), removal("ovh", "198.20.2")
    assert magnum != ovh
    # Four nodes: either node-0 may go (three remain), not both.
    cluster = cluster_of([FEDERATION[0], FEDERATION[3], row(30, "198.20.1.10:26257", "magnum"),
                          row(31, "198.20.2.10:26257", "ovh")], factor=1)
    assert [n.node_id for n in plan_under_lease(session(cluster), magnum, ["198.20.1.10:26257"], 600).targets] == [30]
    with pytest.raises(DecommissionRefused, match=r"only 2 live node\(s\) would remain"):
        plan_under_lease(session(cluster), ovh, ["198.20.2.10:26257"], 600)
    assert list(cluster.leases) == [magnum]


def test_a_job_that_fails_after_its_nodes_are_decommissioned_counts_as_done():
    """The job's last RPC can fail once its nodes are gone; the cluster's membership decides."""
    cluster = cluster_of(FEDERATION)
    kube = FakeKube(cluster, outcome="failed", during=lambda job: cluster.decommission([9], "10.20.0.10:26257"))
    assert decommission(props(), connect=cluster.connect, kube=kube) == [9]


def test_a_resource_created_before_it_knew_the_cluster_name_or_its_lease_holder_can_still_be_deleted():
    """A dynamic resource's delete gets the properties stored when it was created or last updated."""
    cluster = cluster_of(FEDERATION)
    kube = FakeKube(cluster)
    older = props()
    del older["clusterName"], older["leaseHolder"]
    assert decommission(older, connect=cluster.connect, kube=kube) == [9]
    assert "--disable-cluster-name-verification" in job_command(kube)
    assert cluster.leases == {}


def test_a_refused_removal_runs_no_job():
    cluster = cluster_of(FEDERATION, factor=3)
    kube = FakeKube(cluster)
    with pytest.raises(DecommissionRefused, match="only 2 cloud"):
        decommission(whole_vexxhost(), connect=cluster.connect, kube=kube)
    assert kube.job is None and cluster.leases == {}


def test_a_failed_job_is_reported_with_its_log_and_nothing_is_deleted():
    cluster = cluster_of(FEDERATION)
    with pytest.raises(DecommissionRefused, match="failed; its last lines:\nERROR: rpc error: code = PermissionDenied"):
        decommission(props(), connect=cluster.connect, kube=FakeKube(cluster, outcome="failed"))
    assert cluster.leases == {}


def test_a_job_that_does_not_finish_times_out():
    kube = FakeKube(cluster_of(FEDERATION), outcome="running")
    kube.call = lambda method, path, body=None, *, text=False: (
        {"status": {}} if method == "GET" and "/jobs/" in path else
        {"items": []} if "pods?" in path else {})
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(DecommissionRefused, match="did not finish within 300s"):
        run_decommission_job(kube, {"metadata": {"namespace": "ns", "name": "j"}}, 300, sleep=lambda s: None,
                             clock=lambda: next(ticks))


def test_an_unreachable_cluster_refuses_unless_forced():
    def unreachable(host):
        raise ConnectionError("connection refused")

    with pytest.raises(DecommissionRefused, match="cannot reach the cluster to ask whether 198.18.3.3:26257 may go: "
                                                  "no node that stays answered \\(198.18.3.1:26258: connection "
                                                  "refused; 198.18.1.1:26258: connection refused\\)"):
        decommission(props(), connect=unreachable)
    assert decommission(props(force=True), connect=unreachable) == []


def test_a_member_the_seed_never_signed_has_nothing_to_decommission():
    def never(*_):
        raise AssertionError("no cluster may be asked")

    assert decommission(props(certPem=None), connect=never, run_job=never) == []


def test_forcing_for_one_run_needs_no_up_first(monkeypatch):
    """A stack whose `up` cannot complete cannot record forceRemoval: the environment says it for a run."""
    def unreachable(host):
        raise ConnectionError("no route")

    monkeypatch.setenv("CRDB_FORCE_REMOVAL", "true")
    assert decommission(props(), connect=unreachable) == []


def test_deletes_of_one_stack_run_one_after_another(monkeypatch):
    """Scaling down by two nodes deletes two resources at once: each must see what the other left."""
    import threading
    import time

    from components import decommission as module

    running, overlapped = [], []

    def slow(props):
        running.append(props["jobName"])
        overlapped.append(len(running) > 1)
        time.sleep(0.2)
        running.remove(props["jobName"])

    monkeypatch.setattr(module, "decommission", slow)
    provider = module._DecommissionProvider()
    threads = [threading.Thread(target=provider.delete, args=(name, props(jobName=name))) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlapped == [False, False]


def test_a_removal_counts_the_nodes_another_removal_is_taking_away():
    """Two clouds removed at once by two operators: each stack's engine is its own process, so only the
    cluster can tell one removal of the other. vexxhost's removal holds a lease on its nodes; otc's then
    sees only two clouds remaining and refuses."""
    cluster = cluster_of(FEDERATION + zte(), leases={"decommission-vexxhost-decommission": VEXXHOST})
    with pytest.raises(DecommissionRefused, match=r"only 2 cloud\(s\) would remain \(seed, zte\)"):
        plan_under_lease(session(cluster), "decommission-otc-decommission", OTC, 600)
    assert "decommission-otc-decommission" not in cluster.leases
    # Once vexxhost's removal is done (its lease released), otc may go, and holds a lease while it does.
    del cluster.leases["decommission-vexxhost-decommission"]
    planned = plan_under_lease(session(cluster), "decommission-otc-decommission", OTC, 600)
    assert [n.node_id for n in planned.targets] == [4, 5, 6]
    assert cluster.leases == {"decommission-otc-decommission": OTC}


def test_two_removals_at_once_cannot_both_pass_on_a_cluster_whose_default_isolation_is_read_committed():
    """Row 15 of issue 27. With `ALTER ROLE ALL SET default_transaction_isolation = 'read committed'` (CockroachDB
    docs: read-committed), a transaction that does not pin its isolation reads per statement: otc's removal reads
    no other lease, vexxhost's commits its own meanwhile, and otc's commits too (write skew, cockroachdb/cockroach
    #118479). Pinned SERIALIZABLE as its first statement, otc's refresh fails, it retries and sees vexxhost's."""
    cluster = cluster_of(FEDERATION + zte(), default_isolation="read committed")
    vexxhost = session(cluster, "198.18.4.1")
    cluster.after_lease_read = lambda: plan_under_lease(vexxhost, "vexxhost", VEXXHOST, 600)
    with pytest.raises(DecommissionRefused, match=r"only 2 cloud\(s\) would remain \(seed, zte\)"):
        plan_under_lease(session(cluster), "otc", OTC, 600)
    assert cluster.leases == {"vexxhost": VEXXHOST}


def test_a_transaction_the_database_makes_retry_is_run_again():
    cluster = cluster_of(FEDERATION)
    cluster.conflicts = 2
    assert [n.node_id for n in plan_under_lease(session(cluster), "h", ["198.18.3.3:26257"], 600).targets] == [9]
    assert cluster.leases == {"h": ["198.18.3.3:26257"]}


def test_the_lease_is_released_after_the_job_whatever_it_did():
    cluster = cluster_of(FEDERATION)
    with pytest.raises(DecommissionRefused):
        decommission(props(), connect=cluster.connect, kube=FakeKube(cluster, outcome="failed"))
    assert cluster.leases == {}
    assert decommission(props(), connect=cluster.connect, kube=FakeKube(cluster)) == [9]
    assert cluster.leases == {}


def test_a_removals_sql_logs_in_as_the_members_sql_user_with_its_certificate(monkeypatch):
    """The whole removal through SqlEndpoint, psycopg's connect answered by the fake cluster: every session logs in as
    the seed's SQL user with the certificate the seed signed for it, verifying the node CA, into the lease's database.

    Not as `node`, which CockroachDB refuses, as the fake does: pkg/sql/pgwire/auth.go handleAuthentication asks
    sql.GetUserSessionInitInfo, which special-cases root alone; `node` has no row in system.users (bootstrap adds root
    and admin), so the login fails with security.NewErrPasswordUserAuthFailed whatever the certificate
    (pkg/security/certs_test.go TestUseSplitCACerts: `"node" is not a sql user`)."""
    import psycopg

    cluster = cluster_of(FEDERATION)
    with pytest.raises(psycopg.OperationalError, match=ERR_LOGIN_FAILED.format(user="node")):
        cluster.connect("198.18.1.1", user="node")
    logins = []

    def connect(**kwargs):
        with open(kwargs["sslcert"]) as cert, open(kwargs["sslkey"]) as key, open(kwargs["sslrootcert"]) as ca:
            logins.append({"user": kwargs["user"], "dbname": kwargs["dbname"], "sslmode": kwargs["sslmode"],
                           "cert": cert.read(), "key": key.read(), "ca": ca.read()})
        return cluster.connect(kwargs["host"], user=kwargs["user"])

    monkeypatch.setattr(psycopg, "connect", connect)
    assert decommission(props(), kube=FakeKube(cluster)) == [9]
    assert cluster.node(9).membership == "decommissioned" and cluster.leases == {}
    assert len(logins) == 2  # the check and lease, then the memberships and release
    expected = {"user": OPS_USER, "dbname": "crdb_federation", "sslmode": "verify-full",
                "cert": "client.crdb_federation_ops.crt", "key": "key", "ca": "ca"}
    assert all(login == expected for login in logins), logins


def test_a_removal_before_the_seeds_job_made_the_sql_user_says_what_to_run():
    """The seed's cluster-settings job has not run since its `up` (or the seed is of an earlier version): the login
    is refused, which every node would refuse alike, so the removal stops at once, in words, deleting nothing."""
    cluster = cluster_of(FEDERATION, ops_user_made=False)
    kube = FakeKube(cluster)
    with pytest.raises(DecommissionRefused) as refused:
        decommission(props(), connect=cluster.connect, kube=kube)
    message = str(refused.value)
    assert f"the cluster refused the SQL login as {OPS_USER} to ask whether 198.18.3.3:26257 may go" in message
    assert ERR_LOGIN_FAILED.format(user=OPS_USER) in message and "runs `up` on the seed" in message
    assert "Nothing was deleted" in message and kube.job is None and cluster.events == []
    assert len(cluster.sessions) == 0  # one refusal, not one per node


@pytest.mark.parametrize("privilege", ["VIEWCLUSTERMETADATA", "SELECT", "INSERT", "UPDATE", "DELETE"])
def test_each_grant_is_needed_and_together_they_suffice(privilege):
    """The seed grants exactly what a removal's statements and the OS upgrade's gate need (the fake checks each as
    tests/fakes.py FakeSession._check_privileges says): with all of them both pass, as the other tests show; without
    any one of them, one of the two fails."""
    from components.upgrades import GATE_SQL

    def removal_and_gate(cluster):
        assert decommission(props(), connect=cluster.connect, kube=FakeKube(cluster)) == [9]
        session(cluster, "198.18.1.1").execute(GATE_SQL).fetchone()

    removal_and_gate(cluster_of(FEDERATION))
    cluster = cluster_of(FEDERATION)
    granted = cluster.privileges[OPS_USER]
    assert privilege in {p.split(" ON ")[0] for p in granted}  # the seed's statements grant it
    cluster.privileges[OPS_USER] = {p for p in granted if p.split(" ON ")[0] != privilege}
    with pytest.raises(Exception, match=f"user {OPS_USER} does not have {privilege}"):
        removal_and_gate(cluster)
