"""A federation's life on the real engine against the local cloud, in order: the seed's `up`, three
members at once through the federation tool, reading the cloud back, a second `up`, upgrades that must
replace nothing, a scale-up and scale-down that touch one node, decommissioning in the engine's order,
and a destroy that leaves nothing behind.

The local cloud's servers run nothing, so every stack stops at the Kubernetes API gate, cleanly, after
`apiReadyTimeout`; everything before it is created for real. No stack gets outputs that way, so the
members take the federation's CA certificates from explicit config: they never hold a CA key.
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
import datetime

from tests.integration.project import step_ops

SEED = "seed"
# One member per way of reaching a cloud: managed network with floating IPs, an existing provider
# network with public fixed addresses, and one behind an HTTP proxy.
MEMBERS = ("canonical", "vexxhost", "zte")
GATE_TIMEOUT = 30  # the smallest apiReadyTimeout settings accept
NOVA_USER_DATA_LIMIT = 65535
SENSITIVE_PORTS = ((22, 22, "tcp"), (6443, 6443, "tcp"), (8080, 8080, "tcp"), (10250, 10250, "tcp"),
                   (2379, 2380, "tcp"), (8472, 8472, "udp"))
NO_REPLACE = ("openstack:compute/instance:Instance", "openstack:networking/port:Port",
              "openstack:blockstorage/volume:Volume")
LICENCE = "crl-0-integration-tier"
DECOMMISSION = "pulumi-python:dynamic:Resource"


def _federation_ca(common_name: str = "integration federation CA") -> tuple[str, str]:
    """A CA for members that cannot read the seed's (its `up` stops at the gate, so it exports nothing)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


@pytest.fixture(scope="module")
def deployed(project):
    """The seed's `up`, then the members' through `python -m federation join`; yields what they said."""
    for stack in (SEED, *MEMBERS):
        project.select(stack)
        project.run("config", "set", "crdb-federation:apiReadyTimeout", str(GATE_TIMEOUT), stack=stack)
    project.run("config", "set", "--secret", "crdb-federation:enterpriseLicense", LICENCE, stack=SEED)
    seed_events, seed_output = project.events("up", SEED, "--yes", "--skip-preview")
    seed_ips = _server_addresses(project, SEED)
    assert len(seed_ips) == 3, seed_output[-3000:]
    for stack in MEMBERS:
        project.run("config", "rm", "crdb-federation:seedStack", stack=stack)
        for index, ip in enumerate(seed_ips):
            project.run("config", "set", "--path", f"crdb-federation:joinAddresses[{index}]", f"{ip}:26257",
                        stack=stack)
        # Certificates only (PEM starts with dashes: the CLI reads the value from stdin).
        for key, name in (("caCertificate", "node CA"), ("clientCaCertificate", "client CA")):
            project.run("config", "set", f"crdb-federation:{key}", stack=stack, stdin=_federation_ca(name)[0])
    runs = project.directory / "runs"
    # Preflight would stop every member at its shipped (documentation) admin range; it is proven in
    # test_preflight.py, this module proves what happens after it.
    joined = project.tool("join", *MEMBERS, "--no-dashboard", "--skip-preflight", "--runs-dir", str(runs))
    yield {"seed_events": seed_events, "seed_output": seed_output, "join": joined, "runs": runs}
    for stack in (SEED, *MEMBERS):  # whatever a failed test left behind
        if project.run("destroy", "--yes", "--skip-preview", stack=stack, check=False, timeout=900).returncode:
            project.run("destroy", "--yes", "--skip-preview", stack=stack, check=False, timeout=900, env=FORCED)


FORCED = {"CRDB_FORCE_REMOVAL": "true"}  # for a stack whose `up` never completes (README: Remove a cloud)


def _type(urn: str) -> str:
    """A resource's type from its URN (urn:pulumi:stack::project::parent$...$type::name)."""
    return urn.split("::")[2].rsplit("$", 1)[-1]


def _server_addresses(project, stack: str) -> list[str]:
    """The public (floating) addresses of a managed stack's nodes, read from the cloud."""
    cloud = project.cloud.connect()
    found = {f.description.split()[-1]: f.floating_ip_address for f in cloud.network.ips()
             if f.description.startswith(f"crdb-federation {stack}-k3s-")}
    return [found[node] for node in sorted(found)]


def test_seed_up_creates_everything_before_the_gate_and_stops_there_clearly(deployed):
    events = deployed["seed_events"]
    errors = [e["diagnosticEvent"]["message"] for e in events if e.get("diagnosticEvent", {}).get("severity") == "error"]
    assert any("Kubernetes API https://" in m and f"not ready after {GATE_TIMEOUT}s" in m for m in errors), errors
    created = {urn: op for urn, op in step_ops(events, "openstack:").items()}
    assert created and set(created.values()) == {"create"}
    failed = {e["resOpFailedEvent"]["metadata"]["urn"].rsplit("::", 1)[1] for e in events if "resOpFailedEvent" in e}
    assert failed == {"seed-api-ready"}, failed
    # Each node's data volume, attached; the decommissioning of each node and of the whole cloud.
    assert sum(_type(u) == "openstack:blockstorage/volume:Volume" for u in created) == 3
    assert sum(_type(u) == "openstack:compute/volumeAttach:VolumeAttach" for u in created) == 3
    decommissions = [u for u, op in step_ops(events, DECOMMISSION).items()
                     if op == "create" and u.endswith("-decommission")]
    assert sorted(u.rsplit("::", 1)[1] for u in decommissions) == [
        "seed-decommission", "seed-k3s-0-decommission", "seed-k3s-1-decommission", "seed-k3s-2-decommission"]


def test_members_fail_in_phase_kubernetes_naming_endpoint_and_timeout(deployed):
    joined = deployed["join"]
    assert joined.returncode == 1, joined.stdout + joined.stderr
    [timeline] = list(deployed["runs"].glob("*-join/*.json"))
    record = json.loads(timeline.read_text())
    clouds = {c["stack"]: c for c in record["clouds"]}
    assert set(clouds) == set(MEMBERS)
    for stack, cloud in clouds.items():
        assert cloud["status"] == "failed" and cloud["phase"] == "kubernetes", cloud
        assert "Kubernetes API https://" in cloud["error"] and f"not ready after {GATE_TIMEOUT}s" in cloud["error"]
        assert (timeline.parent / "logs" / f"{stack}.log").read_text()
    assert timeline.with_suffix(".html").read_text().count('class="failed"') == len(MEMBERS)


def test_read_back_security_groups_ports_floating_ips_and_user_data(deployed, project):
    cloud = project.cloud.connect()
    for stack in (SEED, *MEMBERS):
        groups = {g.id: g for g in cloud.network.security_groups() if g.name.startswith(f"{stack}-")}
        assert groups, stack
        for group in groups.values():
            for rule in group.security_group_rules:
                if rule["direction"] != "ingress" or rule.get("remote_ip_prefix") not in ("0.0.0.0/0", "::/0"):
                    continue
                for low, high, protocol in SENSITIVE_PORTS:
                    covers = rule.get("port_range_min") is None or (
                        rule["port_range_min"] <= high and rule["port_range_max"] >= low)
                    assert not (covers and rule.get("protocol") in (None, protocol)), (stack, group.name, rule)
        ports = {p.name: p for p in cloud.network.ports() if p.name.startswith(f"{stack}-k3s-")}
        servers = [s for s in cloud.compute.servers(details=True) if s.name.startswith(f"{stack}-k3s-")]
        assert len(ports) == len(servers) == 3, stack
        for port in ports.values():
            assert set(port.security_group_ids) == set(groups), (stack, port.name)
        for fip in cloud.network.ips():
            if fip.description.startswith(f"crdb-federation {stack}-k3s-"):
                node = fip.description.split()[-1]
                assert fip.port_id == ports[f"{node}-port"].id, (stack, node)
        volumes = {v.name: v for v in cloud.block_storage.volumes(details=True) if v.name.startswith(f"{stack}-k3s-")}
        for server in servers:
            full = cloud.compute.get_server(server.id)
            assert full.status == "ACTIVE", (server.name, full.status)
            user_data = full.user_data or ""
            assert 0 < len(user_data) <= NOVA_USER_DATA_LIMIT and base64.b64decode(user_data), server.name
            # User data from a config drive, never from the metadata service pods could reach.
            assert full.has_config_drive in (True, "True", "true"), (server.name, full.has_config_drive)
            data = volumes[f"{server.name}-data"]
            assert [a["server_id"] for a in data.attachments] == [server.id], (server.name, data.attachments)
            assert f"volume_id={data.id}" in base64.b64decode(user_data).decode(), server.name


def test_second_up_changes_no_openstack_resource(deployed, project):
    for stack in (SEED, MEMBERS[0]):
        events, output = project.events("up", stack, "--yes", "--skip-preview")
        ops = step_ops(events, "openstack:")
        assert ops and set(ops.values()) == {"same"}, {u: o for u, o in ops.items() if o != "same"}


def test_the_tool_heals_a_server_in_error_with_its_own_data_volume(deployed, project):
    stack = MEMBERS[0]
    cloud = project.cloud.connect()
    victim = next(s for s in cloud.compute.servers() if s.name.startswith(f"{stack}-k3s-"))
    data = cloud.block_storage.find_volume(f"{victim.name}-data")
    cloud.compute.reset_server_state(victim, "error")
    runs = project.directory / "runs-heal"
    project.tool("join", stack, "--no-dashboard", "--skip-preflight", "--runs-dir", str(runs))
    log = next(runs.glob(f"*-join/logs/{stack}.log")).read_text()
    assert "healing 1 server(s) in ERROR" in log and f"::{victim.name}" in log, log[-3000:]
    [healed] = [s for s in cloud.compute.servers() if s.name == victim.name]
    assert healed.id != victim.id and healed.status == "ACTIVE", (healed.id, healed.status)
    # The same store comes back on the new server; its node is not decommissioned for a heal.
    data = cloud.block_storage.get_volume(data)
    assert [a["server_id"] for a in data.attachments] == [healed.id], data.attachments
    assert f"{victim.name}-decommission deleting" not in log


def _servers_ports_volumes_touched_by_a_preview(project) -> dict[str, str]:
    """Servers, ports and volumes whose step in the seed's preview is anything but `same`."""
    # A preview that fails would still have announced some steps: it must succeed.
    events, output = project.events("preview", SEED, check=True)
    steps = {urn: op for urn, op in step_ops(events).items() if _type(urn) in NO_REPLACE}
    # 3 servers, 3 ports, 3 data volumes: the preview saw them all (an empty answer proves nothing).
    assert len(steps) == 9, output[-3000:]
    return {urn: op for urn, op in steps.items() if op != "same"}


@pytest.mark.parametrize("key, value", [("k3sVersion", "v1.35.6+k3s1"), ("httpProxy", "http://proxy.example:3128")])
def test_an_upgrade_replaces_no_server_port_or_volume(deployed, project, key, value):
    project.run("config", "set", f"crdb-federation:{key}", value, stack=SEED)
    try:
        touched = _servers_ports_volumes_touched_by_a_preview(project)
        assert not touched, touched
    finally:
        project.run("config", "rm", f"crdb-federation:{key}", stack=SEED)


def test_a_republished_image_replaces_no_server(deployed, project, tmp_path):
    cloud = project.cloud.connect()
    blob = tmp_path / "newer.img"
    blob.write_bytes(b"\0" * 1024)
    newer = cloud.image.create_image(name="ubuntu-24.04", filename=str(blob), disk_format="raw",
                                     container_format="bare", visibility="public")
    try:
        touched = _servers_ports_volumes_touched_by_a_preview(project)
        assert not touched, touched
    finally:
        cloud.image.delete_image(newer)


def _nodes(cloud, stack: str, kind: str) -> list[str]:
    items = cloud.compute.servers() if kind == "servers" else cloud.block_storage.volumes()
    return sorted(i.name for i in items if i.name.startswith(f"{stack}-k3s-"))


def test_scaling_3_to_4_to_3_touches_exactly_one_server_and_one_volume(deployed, project):
    stack = MEMBERS[0]
    cloud = project.cloud.connect()
    before = {kind: _nodes(cloud, stack, kind) for kind in ("servers", "volumes")}
    project.run("config", "set", "crdb-federation:nodeCount", "4", stack=stack)
    # The API gate still fails (nothing runs on the servers); the rest of the update goes on.
    up, output = project.events("up", stack, "--yes", "--skip-preview", "--continue-on-error")
    touched = {u: op for u, op in step_ops(up, "openstack:").items() if op != "same"}
    node = f"{stack}-k3s-3"
    assert {u.rsplit("::", 1)[1] for u in touched} == {
        node, f"{node}-data", f"{node}-data-attach", f"{node}-port", f"{node}-fip", f"{node}-fip-assoc"}, output[-3000:]
    assert set(touched.values()) == {"create"}
    assert _nodes(cloud, stack, "servers") == before["servers"] + [node]
    project.run("config", "set", "crdb-federation:nodeCount", "3", stack=stack)
    # The engine deletes what a program dropped only once the program completes, and here every run
    # stops at the API gate: the scale-down is the engine's plan (a real preview). The delete order is
    # the destroy's, below. (Neither `up --target` nor `up --exclude` gets past the gate: the Kubernetes
    # provider, always included, depends on it.)
    plan, output = project.events("preview", stack, check=True)
    changes = {u.rsplit("::", 1)[1]: op for u, op in step_ops(plan).items() if op != "same"}
    others = [u for u, op in step_ops(plan).items() if op not in ("same", "delete") and _type(u).startswith("openstack:")]
    leaving = [node, f"{node}-data", f"{node}-data-attach", f"{node}-port", f"{node}-fip", f"{node}-fip-assoc",
               f"{node}-decommission", f"{node}-node-password"]
    assert {name: op for name, op in changes.items() if op == "delete"} == {name: "delete" for name in leaving}, \
        output[-3000:]
    assert not others, others


def _delete_order(events: list[dict]) -> list[str]:
    """Resource names in the order the engine finished deleting them (its event stream)."""
    return [e["resOutputsEvent"]["metadata"]["urn"].rsplit("::", 1)[1] for e in events
            if e.get("resOutputsEvent", {}).get("metadata", {}).get("op") == "delete"]


def test_a_seed_whose_nodes_cannot_be_asked_refuses_destroy_and_deletes_nothing(deployed, project):
    cloud = project.cloud.connect()
    before = _nodes(cloud, SEED, "servers"), _nodes(cloud, SEED, "volumes")
    events, output = project.events("destroy", SEED, "--yes", "--skip-preview")
    errors = [e["diagnosticEvent"]["message"] for e in events if e.get("diagnosticEvent", {}).get("severity") == "error"]
    assert any("cannot ask the cluster whether" in m and "Nothing was deleted" in m and "forceRemoval" in m
               for m in errors), errors or output[-3000:]
    assert (_nodes(cloud, SEED, "servers"), _nodes(cloud, SEED, "volumes")) == before


def test_destroy_decommissions_before_it_deletes_and_leaves_nothing_behind(deployed, project):
    orders = {}
    for stack in (SEED, *MEMBERS):
        # The seed's nodes never ran: its operator says they need no decommissioning. The members' were
        # never signed, so they have nothing to decommission.
        events, _ = project.events("destroy", stack, "--yes", "--skip-preview", check=True,
                                   env=FORCED if stack == SEED else None)
        orders[stack] = _delete_order(events)
    order = orders[SEED]
    for index in range(3):
        node = f"seed-k3s-{index}"
        assert order.index("seed-decommission") < order.index(f"{node}-decommission") < order.index(node), order
        assert order.index(f"{node}-decommission") < order.index(f"{node}-data"), order
    cloud = project.cloud.connect()
    ours = ("seed", *MEMBERS)

    def named(items, attribute="name"):
        return [getattr(i, attribute) for i in items if any(str(getattr(i, attribute) or "").startswith(f"{s}-")
                                                            for s in ours)]

    leftovers = {
        "servers": named(cloud.compute.servers()),
        "data volumes": named(cloud.block_storage.volumes()),
        "ports": named(cloud.network.ports()),
        "floating ips": [f.floating_ip_address for f in cloud.network.ips() if f.description.startswith("crdb-federation ")],
        "routers": named(cloud.network.routers()),
        "networks": named(cloud.network.networks()),
        "security groups": named(cloud.network.security_groups()),
        "keypairs": named(cloud.compute.keypairs()),
        "server groups": named(cloud.compute.server_groups()),
        "volumes": [v.id for v in cloud.block_storage.volumes()],
    }
    assert not any(leftovers.values()), leftovers
