"""What the cluster says about itself over SQL: nodes, their cloud, liveness and membership, and the
default replication factor. Shared by the decommissioning resources and `python -m federation status`;
everything takes an open connection (psycopg, or anything with .execute().fetchall()/.fetchone())."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

NODES_SQL = (
    "SELECT n.node_id, n.address, n.locality, n.started_at, n.is_live, l.membership "
    "FROM crdb_internal.gossip_nodes AS n JOIN crdb_internal.gossip_liveness AS l USING (node_id) "
    "ORDER BY n.node_id"
)
DEFAULT_ZONE_SQL = "SELECT raw_config_sql FROM [SHOW ZONE CONFIGURATION FROM RANGE default]"
UNKNOWN_CLOUD = "?"


def tier(locality: str, key: str = "cloud") -> str:
    """The value of one locality tier, e.g. the cloud of 'cloud=otc,region=eu-de,zone=eu-de-01'."""
    for part in (locality or "").split(","):
        name, _, value = part.partition("=")
        if name.strip() == key and value.strip():
            return value.strip()
    return UNKNOWN_CLOUD


@dataclass(frozen=True)
class Node:
    node_id: int
    address: str
    cloud: str
    started_at: Any
    is_live: bool
    membership: str

    @property
    def serving(self) -> bool:
        """Live and a full member: it holds replicas and will keep them."""
        return self.is_live and self.membership == "active"


def read_nodes(connection: Any) -> list[Node]:
    return [Node(int(r[0]), r[1], tier(r[2]), r[3], bool(r[4]), r[5])
            for r in connection.execute(NODES_SQL).fetchall()]


def read_replication_factor(connection: Any) -> int:
    row = connection.execute(DEFAULT_ZONE_SQL).fetchone()
    found = re.search(r"num_replicas\s*=\s*(\d+)", row[0] if row else "")
    return int(found.group(1)) if found else 3
