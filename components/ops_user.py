"""The SQL user a member's operations log in as: a removal's check and lease (components/decommission.py) and the
OS upgrade's health gate (components/upgrades.py).

Not `node`: CockroachDB refuses a SQL login as `node`. pgwire's handleAuthentication (pkg/sql/pgwire/auth.go) asks
sql.GetUserSessionInitInfo, which special-cases root alone, and `node` has no row in system.users (bootstrap adds
root and admin), so the login fails with "password authentication failed for user node"; pkg/security/certs_test.go
TestUseSplitCACerts: `"node" is not a sql user`. So the seed creates this user, and each member gets a client
certificate for it signed by the seed's client CA, for its own node key, like its other certificates.
"""

from __future__ import annotations

OPS_USER = "crdb_federation_ops"
# The CLI loads the client certificate of --user from --certs-dir under these names (pkg/security/certnames
# ClientCertFilename, ClientKeyFilename).
OPS_CERT_FILE = f"client.{OPS_USER}.crt"
OPS_KEY_FILE = f"client.{OPS_USER}.key"

# Where removals hold their leases (components/decommission.py): made by the seed, so members never need CREATE.
LEASE_DATABASE = "crdb_federation"
LEASE_TABLE = f"{LEASE_DATABASE}.decommissions"
LEASE_SCHEMA = (f"CREATE DATABASE IF NOT EXISTS {LEASE_DATABASE}",
                f"CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (holder STRING PRIMARY KEY, addresses STRING[] NOT NULL, "
                "expires TIMESTAMPTZ NOT NULL)")


def ops_user_statements() -> tuple[str, ...]:
    """What the seed runs as root, again and again (each statement is idempotent): the lease table, the user, and
    exactly the grants the members' statements need.

    - NODES_SQL (components/cluster.py) and GATE_SQL (components/upgrades.py) read crdb_internal.gossip_nodes,
      gossip_liveness and kv_store_status, each of which checks the global VIEWCLUSTERMETADATA privilege
      (pkg/sql/crdb_internal.go). Nothing else they run needs one: SET allow_unsafe_internals (only `role` needs a
      privilege to be set: v26.2 set-vars docs) and SHOW ZONE CONFIGURATION FROM RANGE default (show_zone_config.go
      checks privileges on tables and databases only).
    - The lease: reading the others' (SELECT), taking its own (UPSERT: INSERT and UPDATE, and SELECT), releasing it
      (DELETE … WHERE: DELETE and SELECT). Reaching the table needs CONNECT on its database and USAGE on its public
      schema, which every new database gives the `public` role (catpb NewBaseDatabasePrivilegeDescriptor,
      NewPublicSchemaPrivilegeDescriptor)."""
    return (
        *LEASE_SCHEMA,
        f"CREATE USER IF NOT EXISTS {OPS_USER}",
        f"GRANT SYSTEM VIEWCLUSTERMETADATA TO {OPS_USER}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {LEASE_TABLE} TO {OPS_USER}",
    )
