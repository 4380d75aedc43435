"""status against a fake connection that answers with CockroachDB-shaped rows."""

import datetime

from rich.console import Console

from federation.status import NODES_SQL, RANGES_SQL, REPLICATION_SQL, collect, ranges_lost_without, render, tier

STARTED = datetime.datetime(2026, 11, 23, 10, 0, tzinfo=datetime.timezone.utc)


class FakeCursor:
    def __init__(self, rows):
        self.rows = rows

    def fetchall(self):
        return list(self.rows)

    def fetchone(self):
        return self.rows[0]


class FakeConnection:
    def __init__(self, nodes, replication, ranges):
        self.answers = {NODES_SQL: nodes, REPLICATION_SQL: [replication], RANGES_SQL: ranges}
        self.queries = []

    def execute(self, sql):
        self.queries.append(sql)
        return FakeCursor(self.answers[sql])


def loc(cloud):
    return f"cloud={cloud},region=RegionOne,zone=nova"


NODES = [
    (1, "198.51.100.1:26257", loc("seed"), STARTED, True, "active"),
    (2, "198.51.100.2:26257", loc("seed"), STARTED, True, "active"),
    (3, "203.0.113.1:26257", loc("otc"), STARTED, True, "active"),
    (4, "192.0.2.1:26257", loc("vexxhost"), STARTED, False, "active"),
    (5, "192.0.2.9:26257", loc("gone"), STARTED, False, "decommissioned"),
]


def test_tier():
    assert tier("cloud=otc,region=eu-de,zone=eu-de-01") == "otc"
    assert tier("cloud=otc,region=eu-de", "region") == "eu-de"
    assert tier("") == "?"


def test_a_range_spread_over_three_clouds_survives_any_one():
    ranges = [(10, [1, 3, 4], [1, 3, 4], [loc("seed"), loc("otc"), loc("vexxhost")])]
    for cloud in ("seed", "otc", "vexxhost"):
        assert ranges_lost_without(ranges, cloud) == []


def test_a_range_with_a_majority_in_one_cloud_is_at_risk():
    ranges = [(11, [1, 2, 3], [1, 2, 3], [loc("seed"), loc("seed"), loc("otc")])]
    assert ranges_lost_without(ranges, "seed") == [11]
    assert ranges_lost_without(ranges, "otc") == []


def test_non_voting_replicas_do_not_count():
    ranges = [(12, [1, 3, 4], [1, 3], [loc("seed"), loc("otc"), loc("vexxhost")])]
    assert ranges_lost_without(ranges, "seed") == [12]


def test_collect_and_render():
    ranges = [
        (1, [1, 3, 4], [1, 3, 4], [loc("seed"), loc("otc"), loc("vexxhost")]),
        (2, [1, 2, 3], [1, 2, 3], [loc("seed"), loc("seed"), loc("otc")]),
    ]
    connection = FakeConnection(NODES, (1, 0), ranges)
    status = collect(connection)
    assert connection.queries == [NODES_SQL, REPLICATION_SQL, RANGES_SQL]
    assert status.clouds == ["otc", "seed", "vexxhost"]
    assert status.underreplicated == 1 and status.unavailable == 0 and status.ranges == 2
    assert status.at_risk == {"otc": [], "seed": [2], "vexxhost": []}
    assert not status.survives_any_one_cloud
    console = Console(record=True, width=160)
    render(status, console)
    text = console.export_text()
    assert "vexxhost" in text and "no" in text  # node 4 is not live
    assert "losing seed would leave 1 range(s) without quorum" in text
    assert "survives the loss of any one cloud: NO (3 clouds)" in text


def test_healthy_federation_survives():
    ranges = [(1, [1, 3, 4], [1, 3, 4], [loc("seed"), loc("otc"), loc("vexxhost")])]
    status = collect(FakeConnection(NODES, (0, 0), ranges))
    assert status.survives_any_one_cloud


def test_unavailable_ranges_fail_the_verdict():
    ranges = [(1, [1, 3, 4], [1, 3, 4], [loc("seed"), loc("otc"), loc("vexxhost")])]
    assert not collect(FakeConnection(NODES, (0, 2), ranges)).survives_any_one_cloud
