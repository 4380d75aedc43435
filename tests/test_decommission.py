"""Decommission before delete: which nodes, when to refuse, and the whole delete against a fake SQL endpoint
that answers with CockroachDB-shaped rows and a fake Kubernetes API that runs the job."""

from __future__ import annotations

import datetime

import pytest

import contextlib

from components.cluster import DEFAULT_ZONE_SQL, NODES_SQL, read_nodes
from components.decommission import (
    LEASE_SCHEMA, OTHER_LEASES_SQL, RELEASE_LEASE_SQL, TAKE_LEASE_SQL, DecommissionRefused, decommission,
    plan_decommission, plan_under_lease, run_decommission_job,
)

STARTED = datetime.datetime(2026, 12, 1, 8, 0)


def loc(cloud):
    return f"cloud={cloud},region=r,zone=z"


def row(node_id, address, cloud, live=True, membership="active"):
    return (node_id, address, loc(cloud) if cloud else "", STARTED, live, membership)


# Three clouds of three nodes each; vexxhost's nodes advertise 198.18.3.x.
FEDERATION = [
    row(1, "198.18.1.1:26257", "seed"), row(2, "198.18.1.2:26257", "seed"), row(3, "198.18.1.3:26257", "seed"),
    row(4, "198.18.2.1:26257", "otc"), row(5, "198.18.2.2:26257", "otc"), row(6, "198.18.2.3:26257", "otc"),
    row(7, "198.18.3.1:26257", "vexxhost"), row(8, "198.18.3.2:26257", "vexxhost"),
    row(9, "198.18.3.3:26257", "vexxhost"),
]
VEXXHOST = ["198.18.3.1:26257", "198.18.3.2:26257", "198.18.3.3:26257"]


class FakeSql:
    """Answers the queries components/cluster.py sends, like CockroachDB's crdb_internal tables; a
    decommission (done by the fake job) changes the membership it reports afterwards."""

    def __init__(self, rows, factor=3, leases=None):
        self.rows, self.factor, self.queries = list(rows), factor, []
        # holder -> addresses of live leases (the lease table; expiry is the database's business).
        self.leases = dict(leases or {})
        self.conflicts = 0  # serialization failures to answer the next transactions with

    def execute(self, sql, params=()):
        self.queries.append(sql)
        if sql in LEASE_SCHEMA:
            self._result = []
        elif sql == OTHER_LEASES_SQL:
            self._result = [(addresses,) for holder, addresses in self.leases.items() if holder != params[0]]
        elif sql == TAKE_LEASE_SQL:
            self.leases[params[0]] = list(params[1])
            self._result = []
        elif sql == RELEASE_LEASE_SQL:
            self.leases.pop(params[0], None)
            self._result = []
        else:
            self._result = {NODES_SQL: self.rows, DEFAULT_ZONE_SQL: [(
                f"ALTER RANGE default CONFIGURE ZONE USING\n\trange_min_bytes = 134217728,\n\tnum_replicas = "
                f"{self.factor},\n\tgc.ttlseconds = 14400",)]}[sql]
        return self

    @contextlib.contextmanager
    def transaction(self):
        from psycopg.errors import SerializationFailure

        before = dict(self.leases)
        yield
        if self.conflicts:
            self.conflicts -= 1
            self.leases = before  # rolled back
            raise SerializationFailure("restart transaction: TransactionRetryWithProtoRefreshError")

    def fetchall(self):
        return self._result

    def fetchone(self):
        return self._result[0] if self._result else None

    def decommissioned(self, ids):
        self.rows = [(r[0], r[1], r[2], r[3], r[4], "decommissioned" if r[0] in ids else r[5]) for r in self.rows]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def plan(rows, addresses, factor=3):
    return [n.node_id for n in plan_decommission(read_nodes(FakeSql(rows).execute(NODES_SQL)), addresses, factor)]


def test_a_node_is_found_by_its_advertised_address():
    assert plan(FEDERATION, ["198.18.3.3:26257"]) == [9]


def test_a_node_that_never_joined_or_was_decommissioned_needs_nothing():
    assert plan(FEDERATION, ["198.18.9.9:26257"]) == []
    gone = [row(*r[:3], live=False, membership="decommissioned") if r[0] == 9 else r for r in FEDERATION]
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
    """Records the job it is asked to run; the job 'decommissions' the nodes in the fake SQL endpoint."""

    def __init__(self, sql, outcome="succeeded"):
        self.sql, self.outcome, self.calls, self.job = sql, outcome, [], None

    def call(self, method, path, body=None, *, text=False):
        self.calls.append((method, path))
        if method == "POST":
            self.job = body
            ids = [int(word) for word in body["spec"]["template"]["spec"]["containers"][0]["command"][2].split()
                   if word.isdigit()]
            if self.outcome == "succeeded":
                self.sql.decommissioned(ids)
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
        "jobName": "decommission-vexxhost-k3s-2", "addresses": ["198.18.3.3:26257"], "ownAddresses": VEXXHOST,
        "rpcHosts": ["10.20.0.10", "10.20.0.11", "10.20.0.12"], "sqlHosts": ["198.18.3.1", "198.18.1.1"],
        "caPem": "ca", "certPem": "client.node.crt", "keyPem": "key", "kubeconfig": "kubeconfig",
        "namespace": "cockroachdb", "image": "cockroachdb/cockroach:v26.2.0", "clusterName": "crdb-federation",
        "force": False, "timeoutSeconds": 600,
    }
    values.update(overrides)
    return values


def test_delete_decommissions_through_a_live_node_of_the_same_cloud_and_waits_for_decommissioned():
    sql = FakeSql(FEDERATION)
    kube = FakeKube(sql)
    assert decommission(props(), connect=lambda: sql, kube=kube, sleep=lambda s: None) == [9]
    command = kube.job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    # Not through the node that is leaving: through the first node of the cloud that stays.
    assert ("node decommission 9 --host=10.20.0.10:26257 --cluster-name=crdb-federation "
            "--cert-principal-map=node:root --wait=all") in command
    assert kube.job["metadata"] == {"name": "decommission-vexxhost-k3s-2", "namespace": "cockroachdb",
                                    "labels": kube.job["metadata"]["labels"]}
    assert ("DELETE", "/apis/batch/v1/namespaces/cockroachdb/jobs/decommission-vexxhost-k3s-2") in kube.calls
    assert {n.node_id: n.membership for n in read_nodes(sql.execute(NODES_SQL))}[9] == "decommissioned"


def job_command(kube):
    return kube.job["spec"]["template"]["spec"]["containers"][0]["command"][2]


def test_a_whole_cloud_leaves_through_a_live_node_of_another_cloud():
    """A decommissioned node refuses connections (docs: node-shutdown, "--host={address of any live node}"): when
    every node of the cloud leaves, the job goes through another cloud's, as it advertises itself."""
    zte = [row(10 + i, f"198.18.4.{i}:26257", "zte") for i in range(1, 4)]
    sql = FakeSql(FEDERATION + zte)
    kube = FakeKube(sql)
    assert decommission(props(addresses=VEXXHOST), connect=lambda: sql, kube=kube, sleep=lambda s: None) == [7, 8, 9]
    assert "node decommission 7 8 9 --host=198.18.1.1:26257 " in job_command(kube)


def test_a_job_that_fails_after_its_nodes_are_decommissioned_counts_as_done():
    """The job's last RPC can fail once its nodes are gone; the cluster's membership decides."""
    sql = FakeSql(FEDERATION)
    kube = FakeKube(sql, outcome="failed")
    original = kube.call

    def decommissions_then_fails(method, path, body=None, *, text=False):
        if method == "POST":
            sql.decommissioned([9])
        return original(method, path, body, text=text)

    kube.call = decommissions_then_fails
    assert decommission(props(), connect=lambda: sql, kube=kube, sleep=lambda s: None) == [9]


def test_a_resource_created_before_it_knew_the_cluster_name_can_still_be_deleted():
    """A dynamic resource's delete gets the properties stored when it was created or last updated."""
    sql = FakeSql(FEDERATION)
    kube = FakeKube(sql)
    older = props()
    del older["clusterName"]
    assert decommission(older, connect=lambda: sql, kube=kube, sleep=lambda s: None) == [9]
    assert "--disable-cluster-name-verification" in job_command(kube)


def test_a_refused_removal_runs_no_job():
    sql = FakeSql(FEDERATION, factor=3)
    kube = FakeKube(sql)
    with pytest.raises(DecommissionRefused, match="only 2 cloud"):
        decommission(props(addresses=VEXXHOST), connect=lambda: sql, kube=kube)
    assert kube.job is None


def test_a_failed_job_is_reported_with_its_log_and_nothing_is_deleted():
    sql = FakeSql(FEDERATION)
    with pytest.raises(DecommissionRefused, match="failed; its last lines:\nERROR: rpc error: code = PermissionDenied"):
        decommission(props(), connect=lambda: sql, kube=FakeKube(sql, outcome="failed"), sleep=lambda s: None)


def test_a_job_that_does_not_finish_times_out():
    sql = FakeSql(FEDERATION)
    kube = FakeKube(sql, outcome="running")
    kube.call = lambda method, path, body=None, *, text=False: (
        {"status": {}} if method == "GET" and "/jobs/" in path else
        {"items": []} if "pods?" in path else {})
    ticks = iter(range(0, 10_000, 100))
    with pytest.raises(DecommissionRefused, match="did not finish within 300s"):
        run_decommission_job(kube, {"metadata": {"namespace": "ns", "name": "j"}}, 300, sleep=lambda s: None,
                             clock=lambda: next(ticks))


def test_an_unreachable_cluster_refuses_unless_forced():
    def unreachable():
        raise ConnectionError("198.18.3.1:26258: connection refused")

    with pytest.raises(DecommissionRefused, match="cannot ask the cluster whether 198.18.3.3:26257 may go: "
                                                  "198.18.3.1:26258: connection refused"):
        decommission(props(), connect=unreachable)
    assert decommission(props(force=True), connect=unreachable) == []


def test_a_member_the_seed_never_signed_has_nothing_to_decommission():
    def never(*_):
        raise AssertionError("no cluster may be asked")

    assert decommission(props(certPem=None), connect=never, run_job=never) == []


def test_forcing_for_one_run_needs_no_up_first(monkeypatch):
    """A stack whose `up` cannot complete cannot record forceRemoval: the environment says it for a run."""
    def unreachable():
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
    zte = [row(10 + i, f"198.18.4.{i}:26257", "zte") for i in range(1, 4)]
    sql = FakeSql(FEDERATION + zte, leases={"decommission-vexxhost-decommission": VEXXHOST})
    otc = ["198.18.2.1:26257", "198.18.2.2:26257", "198.18.2.3:26257"]
    with pytest.raises(DecommissionRefused, match=r"only 2 cloud\(s\) would remain \(seed, zte\)"):
        plan_under_lease(sql, "decommission-otc-decommission", otc, 600)
    assert "decommission-otc-decommission" not in sql.leases
    # Once vexxhost's removal is done (its lease released), otc may go, and holds a lease while it does.
    del sql.leases["decommission-vexxhost-decommission"]
    assert [n.node_id for n in plan_under_lease(sql, "decommission-otc-decommission", otc, 600)] == [4, 5, 6]
    assert sql.leases == {"decommission-otc-decommission": otc}


def test_a_transaction_the_database_makes_retry_is_run_again():
    sql = FakeSql(FEDERATION)
    sql.conflicts = 2
    assert [n.node_id for n in plan_under_lease(sql, "h", ["198.18.3.3:26257"], 600)] == [9]
    assert sql.leases == {"h": ["198.18.3.3:26257"]}


def test_the_lease_is_released_after_the_job_whatever_it_did():
    sql = FakeSql(FEDERATION)
    with pytest.raises(DecommissionRefused):
        decommission(props(), connect=lambda: sql, kube=FakeKube(sql, outcome="failed"), sleep=lambda s: None)
    assert sql.leases == {}
    assert decommission(props(), connect=lambda: sql, kube=FakeKube(sql), sleep=lambda s: None) == [9]
    assert sql.leases == {}
