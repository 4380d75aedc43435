"""The federation's health over SQL (CockroachDB speaks the PostgreSQL protocol): nodes per cloud,
liveness, replication health, and whether losing any one cloud would leave some range without quorum."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

NODES_SQL = (
    "SELECT n.node_id, n.address, n.locality, n.started_at, n.is_live, l.membership "
    "FROM crdb_internal.gossip_nodes AS n JOIN crdb_internal.gossip_liveness AS l USING (node_id) "
    "ORDER BY n.node_id"
)
REPLICATION_SQL = (
    "SELECT coalesce(sum((metrics->>'ranges.underreplicated')::INT8), 0), "
    "coalesce(sum((metrics->>'ranges.unavailable')::INT8), 0) FROM crdb_internal.kv_store_status"
)
RANGES_SQL = "SELECT range_id, replicas, voting_replicas, replica_localities FROM crdb_internal.ranges_no_leases"


def tier(locality: str, key: str = "cloud") -> str:
    """The value of one locality tier, e.g. the cloud of 'cloud=otc,region=eu-de,zone=eu-de-01'."""
    for part in (locality or "").split(","):
        name, _, value = part.partition("=")
        if name.strip() == key:
            return value.strip()
    return "?"


@dataclass(frozen=True)
class Node:
    node_id: int
    address: str
    cloud: str
    started_at: Any
    is_live: bool
    membership: str


@dataclass
class FederationStatus:
    nodes: list[Node]
    underreplicated: int
    unavailable: int
    ranges: int
    # cloud -> ids of ranges that would lose their voting majority with that cloud gone
    at_risk: dict[str, list[int]] = field(default_factory=dict)

    @property
    def clouds(self) -> list[str]:
        return sorted({n.cloud for n in self.nodes if n.membership == "active"})

    @property
    def survives_any_one_cloud(self) -> bool:
        return self.unavailable == 0 and len(self.clouds) >= 3 and not any(self.at_risk.values())


def ranges_lost_without(ranges: Iterable[Sequence[Any]], cloud: str) -> list[int]:
    """Range ids whose voting replicas outside `cloud` would not be a majority."""
    lost = []
    for range_id, replicas, voters, localities in ranges:
        cloud_of = {replica: tier(locality) for replica, locality in zip(replicas, localities)}
        voting = list(voters) if voters else list(replicas)
        survivors = sum(1 for replica in voting if cloud_of.get(replica) != cloud)
        if survivors * 2 <= len(voting):
            lost.append(int(range_id))
    return lost


def collect(connection: Any) -> FederationStatus:
    """Runs the three queries on an open psycopg connection (or anything with .execute().fetchall())."""
    nodes = [Node(int(r[0]), r[1], tier(r[2]), r[3], bool(r[4]), r[5]) for r in connection.execute(NODES_SQL).fetchall()]
    underreplicated, unavailable = connection.execute(REPLICATION_SQL).fetchone()
    ranges = connection.execute(RANGES_SQL).fetchall()
    status = FederationStatus(nodes, int(underreplicated), int(unavailable), len(ranges))
    for cloud in status.clouds:
        status.at_risk[cloud] = ranges_lost_without(ranges, cloud)
    return status


def connect(host: str, certs_dir: Path, port: int = 26257):
    """A TLS connection as `root`, verifying the node certificate against the federation CA."""
    import psycopg

    return psycopg.connect(
        host=host, port=port, user="root", dbname="defaultdb", connect_timeout=10,
        sslmode="verify-full", sslrootcert=str(certs_dir / "ca.crt"),
        sslcert=str(certs_dir / "client.root.crt"), sslkey=str(certs_dir / "client.root.key"),
        autocommit=True,
    )


def write_client_certs(outputs: dict[str, Any], directory: Path) -> Path:
    """The seed's CA and root client certificate as the files a PostgreSQL client expects (key 0600)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, key in (("ca.crt", "caCertificate"), ("client.root.crt", "rootClientCertificate"),
                      ("client.root.key", "rootClientKey")):
        if not outputs.get(key):
            raise KeyError(f"the seed stack has no output {key}; is it up, and not in insecure mode?")
        path = directory / name
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(outputs[key])
    return directory


def render(status: FederationStatus, console: Any) -> None:
    from rich.table import Table

    per_cloud: dict[str, list[Node]] = defaultdict(list)
    for node in status.nodes:
        per_cloud[node.cloud].append(node)
    table = Table(title="nodes per cloud")
    for column in ("cloud", "node", "address", "live", "membership", "started"):
        table.add_column(column)
    for cloud in sorted(per_cloud):
        for node in per_cloud[cloud]:
            table.add_row(cloud, str(node.node_id), node.address, "yes" if node.is_live else "[red]no[/]",
                          node.membership, str(node.started_at))
    console.print(table)
    console.print(f"ranges: {status.ranges}; under-replicated: {status.underreplicated}; "
                  f"unavailable: {status.unavailable}")
    for cloud, lost in sorted(status.at_risk.items()):
        if lost:
            console.print(f"losing [bold]{cloud}[/] would leave {len(lost)} range(s) without quorum, e.g. {lost[:5]}")
    verdict = "yes" if status.survives_any_one_cloud else "NO"
    console.print(f"survives the loss of any one cloud: [bold]{verdict}[/] ({len(status.clouds)} clouds)")
