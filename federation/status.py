"""The federation's health over SQL (CockroachDB speaks the PostgreSQL protocol): nodes per cloud,
liveness, replication health, and whether losing any one cloud would leave some range without quorum."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from components.cluster import UNKNOWN_CLOUD, Node, read_nodes
from components.settings import COCKROACH_SQL_PORT

REPLICATION_SQL = (
    "SELECT coalesce(sum((metrics->>'ranges.underreplicated')::INT8), 0), "
    "coalesce(sum((metrics->>'ranges.unavailable')::INT8), 0) FROM crdb_internal.kv_store_status"
)
RANGES_SQL = "SELECT range_id, replicas, voting_replicas FROM crdb_internal.ranges_no_leases"
# Replicas are named by store; a node has one store here, but the map is asked, not assumed.
STORES_SQL = "SELECT store_id, node_id FROM crdb_internal.kv_store_status"
# CockroachDB's own view: localities whose loss would leave ranges unavailable (refreshed every minute).
CRITICAL_SQL = ("SELECT locality, sum(at_risk_ranges) FROM system.replication_critical_localities "
                "GROUP BY locality")


@dataclass
class FederationStatus:
    nodes: list[Node]
    underreplicated: int
    unavailable: int
    ranges: int
    # cloud -> ids of ranges whose live voting replicas outside that cloud would not be a majority
    at_risk: dict[str, list[int]] = field(default_factory=dict)
    # cloud -> ranges at risk by CockroachDB's critical-localities report (None: the report is not there)
    critical: Optional[dict[str, int]] = None

    @property
    def clouds(self) -> list[str]:
        """Clouds with nodes that are members (not decommissioning or decommissioned), live or not."""
        return sorted({n.cloud for n in self.nodes if n.membership == "active" and n.cloud != UNKNOWN_CLOUD})

    @property
    def dead_but_active(self) -> list[Node]:
        """Nodes that are gone without a decommission: their replicas count for nothing until they return."""
        return [n for n in self.nodes if n.membership == "active" and not n.is_live]

    def survives_loss_of(self, cloud: str) -> bool:
        return not self.at_risk.get(cloud) and not (self.critical or {}).get(cloud)

    @property
    def survives_any_one_cloud(self) -> bool:
        return (self.unavailable == 0 and len(self.clouds) >= 3
                and all(self.survives_loss_of(cloud) for cloud in self.clouds))


def ranges_lost_without(ranges: Iterable[Sequence[Any]], nodes_of_stores: dict[int, int], nodes: Sequence[Node],
                        cloud: str) -> list[int]:
    """Range ids whose voting replicas on live, active nodes of known clouds other than `cloud` would not be
    a majority of the voters. A replica on a dead node, or on a node whose locality names no cloud, is lost."""
    by_id = {n.node_id: n for n in nodes}
    lost = []
    for range_id, replicas, voters in ranges:
        voting = list(voters) if voters else list(replicas)
        survivors = 0
        for store in voting:
            node = by_id.get(nodes_of_stores.get(int(store), int(store)))
            if node is not None and node.serving and node.cloud not in (cloud, UNKNOWN_CLOUD):
                survivors += 1
        if survivors * 2 <= len(voting):
            lost.append(int(range_id))
    return lost


def critical_by_cloud(rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    """The report names localities ('cloud=otc', 'cloud=otc,region=...'); sum what names a cloud alone."""
    totals: dict[str, int] = defaultdict(int)
    for locality, at_risk in rows:
        parts = [p for p in str(locality).strip("'").split(",") if p]
        if len(parts) == 1 and parts[0].startswith("cloud="):
            totals[parts[0].split("=", 1)[1]] += int(at_risk or 0)
    return dict(totals)


def collect(connection: Any) -> FederationStatus:
    """Runs the queries on an open psycopg connection (or anything with .execute().fetchall())."""
    nodes = read_nodes(connection)
    underreplicated, unavailable = connection.execute(REPLICATION_SQL).fetchone()
    ranges = connection.execute(RANGES_SQL).fetchall()
    stores = {int(store): int(node) for store, node in connection.execute(STORES_SQL).fetchall()}
    status = FederationStatus(nodes, int(underreplicated), int(unavailable), len(ranges))
    for cloud in status.clouds:
        status.at_risk[cloud] = ranges_lost_without(ranges, stores, nodes, cloud)
    try:
        status.critical = critical_by_cloud(connection.execute(CRITICAL_SQL).fetchall())
    except Exception:  # the report's table is gone in a newer CockroachDB, or not readable
        status.critical = None
    return status


def connect(host: str, certs_dir: Path, port: int = COCKROACH_SQL_PORT):
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
            raise KeyError(f"the seed stack has no output {key}; is it up?")
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
    for node in status.dead_but_active:
        console.print(f"[red]dead but not decommissioned:[/] n{node.node_id} {node.address} ({node.cloud}): "
                      "its replicas count for nothing; bring it back, or decommission it")
    survival = Table(title="survives the loss of this cloud?")
    for column in ("cloud", "ranges that would lose quorum", "CockroachDB's critical-localities report", "verdict"):
        survival.add_column(column)
    for cloud in status.clouds:
        lost = status.at_risk.get(cloud, [])
        report = "not available" if status.critical is None else f"{status.critical.get(cloud, 0)} at risk"
        verdict = "yes" if status.survives_loss_of(cloud) else "[bold red]NO[/]"
        survival.add_row(cloud, f"{len(lost)}" + (f", e.g. {lost[:5]}" if lost else ""), report, verdict)
    console.print(survival)
    verdict = "yes" if status.survives_any_one_cloud else "NO"
    console.print(f"survives the loss of any one cloud: [bold]{verdict}[/] ({len(status.clouds)} clouds)")
