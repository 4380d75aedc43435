"""status against a fake connection that answers with CockroachDB-shaped rows, dead nodes included."""

import datetime

from rich.console import Console

from components.cluster import NODES_SQL, Node, tier
from federation.status import (
    CRITICAL_SQL, RANGES_SQL, REPLICATION_SQL, STORES_SQL, collect, critical_by_cloud, ranges_lost_without, render,
)

STARTED = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc)


class FakeCursor:
    def __init__(self, rows):
        self.rows = rows

    def fetchall(self):
        return list(self.rows)

    def fetchone(self):
        return self.rows[0]


class FakeConnection:
    def __init__(self, nodes, replication, ranges, stores=None, critical=()):
        stores = stores if stores is not None else [(n[0], n[0]) for n in nodes]
        self.answers = {NODES_SQL: nodes, REPLICATION_SQL: [replication], RANGES_SQL: ranges, STORES_SQL: stores,
                        CRITICAL_SQL: critical}
        self.queries = []

    def execute(self, sql):
        self.queries.append(sql)
        if self.answers[sql] is None:
            raise RuntimeError('relation "system.replication_critical_localities" does not exist')
        return FakeCursor(self.answers[sql])


def loc(cloud):
    return f"cloud={cloud},region=RegionOne,zone=nova"


NODES = [
    (1, "198.18.1.1:26257", loc("seed"), STARTED, True, "active"),
    (2, "198.18.1.2:26257", loc("seed"), STARTED, True, "active"),
    (3, "198.18.2.1:26257", loc("otc"), STARTED, True, "active"),
    (4, "198.18.3.1:26257", loc("vexxhost"), STARTED, False, "active"),  # dead, never decommissioned
    (5, "198.18.3.9:26257", loc("gone"), STARTED, False, "decommissioned"),
    (6, "198.18.4.1:26257", "", STARTED, True, "active"),  # a node whose locality names no cloud
    (7, "198.18.5.1:26257", loc("zte"), STARTED, True, "active"),
]


def nodes():
    return [Node(r[0], r[1], tier(r[2]), r[3], r[4], r[5]) for r in NODES]


def test_tier():
    assert tier("cloud=otc,region=eu-de,zone=eu-de-01") == "otc"
    assert tier("cloud=otc,region=eu-de", "region") == "eu-de"
    assert tier("") == "?"


def test_a_range_spread_over_three_live_clouds_survives_any_one():
    ranges = [(10, [1, 3, 7], [1, 3, 7])]
    for cloud in ("seed", "otc", "zte"):
        assert ranges_lost_without(ranges, {}, nodes(), cloud) == []


def test_a_replica_on_a_dead_node_counts_as_lost():
    # Spread over seed, otc and vexxhost, but vexxhost's node is dead: losing seed or otc loses quorum.
    ranges = [(11, [1, 3, 4], [1, 3, 4])]
    assert ranges_lost_without(ranges, {}, nodes(), "seed") == [11]
    assert ranges_lost_without(ranges, {}, nodes(), "otc") == [11]


def test_a_replica_whose_locality_is_unknown_counts_as_lost():
    ranges = [(12, [1, 3, 6], [1, 3, 6])]
    assert ranges_lost_without(ranges, {}, nodes(), "seed") == [12]


def test_non_voting_replicas_do_not_count_and_stores_map_to_nodes():
    ranges = [(13, [101, 103, 107], [101, 103])]
    stores = {101: 1, 103: 3, 107: 7}
    assert ranges_lost_without(ranges, stores, nodes(), "seed") == [13]
    assert ranges_lost_without([(14, [101, 103, 107], [])], stores, nodes(), "seed") == []


def test_the_critical_localities_report_is_summed_per_cloud():
    rows = [("cloud=otc", 2), ("cloud=otc", 1), ("cloud=otc,region=eu-de", 9), ("region=RegionOne", 4)]
    assert critical_by_cloud(rows) == {"otc": 3}


def render_text(status):
    console = Console(record=True, width=200)
    render(status, console)
    return console.export_text()


def test_status_of_a_cluster_with_a_dead_node():
    ranges = [(1, [1, 3, 7], [1, 3, 7]), (2, [1, 3, 4], [1, 3, 4])]
    connection = FakeConnection(NODES, (1, 0), ranges, critical=[("cloud=seed", 1)])
    status = collect(connection)
    assert connection.queries == [NODES_SQL, REPLICATION_SQL, RANGES_SQL, STORES_SQL, CRITICAL_SQL]
    # Dead but still active nodes keep their cloud present: it has not left, it is down.
    assert status.clouds == ["otc", "seed", "vexxhost", "zte"]
    assert [n.node_id for n in status.dead_but_active] == [4]
    assert status.at_risk == {"otc": [2], "seed": [2], "vexxhost": [], "zte": []}
    assert status.critical == {"seed": 1}
    assert not status.survives_any_one_cloud
    assert not status.survives_loss_of("seed") and status.survives_loss_of("zte")
    text = render_text(status)
    assert "dead but not decommissioned: n4 198.18.3.1:26257 (vexxhost)" in text
    assert "survives the loss of any one cloud: NO (4 clouds)" in text
    seed_row = next(line for line in text.splitlines() if " seed " in line and "at risk" in line)
    assert "1 at risk" in seed_row and "NO" in seed_row


def test_healthy_federation_survives_and_a_missing_report_is_said():
    healthy = [n for n in NODES if n[0] in (1, 2, 3, 7)]
    status = collect(FakeConnection(healthy, (0, 0), [(1, [1, 3, 7], [1, 3, 7])], critical=None))
    assert status.critical is None and status.survives_any_one_cloud
    assert "not available" in render_text(status)


def test_unavailable_ranges_fail_the_verdict():
    healthy = [n for n in NODES if n[0] in (1, 2, 3, 7)]
    assert not collect(FakeConnection(healthy, (0, 2), [(1, [1, 3, 7], [1, 3, 7])])).survives_any_one_cloud
