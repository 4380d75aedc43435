"""Each component under mocks (installed per test, preview=False). `evaluate` builds the component,
waits until every resource is registered and every Output resolved, then the test asserts."""

import base64

import pulumi
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.fakes import FakeCloud
from tests.harness import evaluate
from tests.test_settings import VALID
from tests.validators import assert_valid_cloud_config


@pytest.fixture
def cloud():
    fake = FakeCloud()
    fake.install(project="crdb-federation", stack="test")
    return fake


def settings(**overrides):
    from components.settings import parse_settings
    return parse_settings({**VALID, **overrides}, "vexxhost")


def _owner():
    from components.ownership import StackOwner
    return StackOwner("m")


def _addressed(cloud, s, names):
    """A cluster's addresses and the owner mark they carry, as CloudMember gives them."""
    owner = _owner()
    return _addresses(cloud, s, names, owner), owner


EXISTING = dict(networkMode="existing", publicAddressing="fixed", existingNetwork="provider-net")


def test_managed_network(cloud):
    from components.network import Network
    evaluate(lambda: Network("m", settings(mtu="1450", dnsServers='["9.9.9.9"]').network, _owner()).subnet_id)
    net = cloud.one("networking/network:Network")
    assert net.inputs["mtu"] == 1450
    subnet = cloud.one("networking/subnet:Subnet")
    assert subnet.inputs["cidr"] == "10.20.0.0/24" and subnet.inputs["dnsNameservers"] == ["9.9.9.9"]
    router = cloud.one("networking/router:Router")
    assert router.inputs["externalNetworkId"] == "net-public"
    assert ("openstack:networking/getNetwork:getNetwork", {"external": True, "name": "public"}) in cloud.invokes
    interface = cloud.one("routerInterface:RouterInterface")
    assert cloud.depends_on(interface, router) and cloud.depends_on(interface, subnet)


def test_existing_network_is_looked_up_not_created(cloud):
    from components.network import Network
    network = evaluate(lambda: Network("m", settings(**EXISTING).network, _owner()))
    assert evaluate(lambda: network.network_id) == "net-provider-net"
    assert not cloud.of_type("networking/network:Network") and not cloud.of_type("Router")
    assert network.subnet_id is None and network.gateway is None


def test_existing_network_by_uuid(cloud):
    from components.network import Network
    uuid = "0b3c5a1e-1111-2222-3333-444455556666"
    assert evaluate(lambda: Network("m", settings(**{**EXISTING, "existingNetwork": uuid}).network, _owner()).network_id) == \
        f"net-{uuid}"
    assert any(args.get("networkId") == uuid for _, args in cloud.invokes)


def _rules(cloud):
    groups = {r.outputs.get("name"): r for r in cloud.of_type("secGroup:SecGroup")}
    by_id = {f"{r.name}-id": name for name, r in groups.items()}
    return [(by_id[r.inputs["securityGroupId"]], r.inputs) for r in cloud.of_type("secGroupRule:SecGroupRule")]


def test_security_groups_open_only_what_is_needed(cloud):
    from components.security import SecurityGroups
    s = settings(adminCidrs='["198.20.0.0/24", "2a01:4f8::/48"]', federationCidrs='["198.18.0.0/15"]',
                 sqlCidrs='["100.70.0.0/16"]')
    evaluate(lambda: SecurityGroups("m", s.network, _owner(), ssh=False).group_ids)
    rules = _rules(cloud)
    assert not [i for _, i in rules if i.get("remoteIpPrefix") in ("0.0.0.0/0", "::/0")]
    opened = {(g, i.get("protocol"), i.get("portRangeMin"), i.get("remoteIpPrefix")) for g, i in rules
              if "remoteIpPrefix" in i}
    assert opened == {
        ("m-api", "tcp", 6443, "198.20.0.0/24"), ("m-api", "tcp", 6443, "2a01:4f8::/48"),
        ("m-admin-ui", "tcp", 8080, "198.20.0.0/24"), ("m-admin-ui", "tcp", 8080, "2a01:4f8::/48"),
        # Node RPC only from the other clouds' nodes, with ICMP for path-MTU discovery.
        ("m-federation", "tcp", 26257, "198.18.0.0/15"), ("m-federation", "icmp", None, "198.18.0.0/15"),
        # SQL apart, from SQL clients and admins.
        ("m-sql", "tcp", 26258, "100.70.0.0/16"), ("m-sql", "tcp", 26258, "198.20.0.0/24"),
        ("m-sql", "tcp", 26258, "2a01:4f8::/48"),
    }
    for _, inputs in rules:
        if inputs.get("remoteIpPrefix") == "2a01:4f8::/48":
            assert inputs["ethertype"] == "IPv6"
    self_rules = [(g, i) for g, i in rules if "remoteGroupId" in i]
    assert {i["ethertype"] for _, i in self_rules} == {"IPv4", "IPv6"}
    assert all(i["remoteGroupId"] == i["securityGroupId"] and g == "m-nodes" for g, i in self_rules)
    assert all(r["direction"] == "ingress" for _, r in rules)


def test_icmp_rules_follow_the_address_family():
    from components.security import ingress_rules
    rules = ingress_rules(settings(federationCidrs='["198.18.0.0/15", "2a01:4f8::/32"]').network, ssh=False)
    icmp = {(r.protocol, r.cidr) for r in rules if r.port is None and r.cidr}
    assert icmp == {("icmp", "198.18.0.0/15"), ("ipv6-icmp", "2a01:4f8::/32")}


def test_ssh_only_with_a_key_and_only_from_admins(cloud):
    from components.security import SecurityGroups
    evaluate(lambda: SecurityGroups("m", settings().network, _owner(), ssh=True).group_ids)
    ssh = [i for _, i in _rules(cloud) if i.get("portRangeMin") == 22]
    assert [i["remoteIpPrefix"] for i in ssh] == ["198.20.0.0/24"]


def _addresses(cloud, s, names=("m-k3s-0", "m-k3s-1"), owner=None):
    from components.addresses import NodeAddresses
    from components.network import Network
    owner = owner or _owner()
    network = Network("m", s.network, owner)
    return NodeAddresses("m", list(names), settings=s.network, network=network, security_group_ids=["sg-1", "sg-2"],
                         owner=owner)


def test_floating_addresses_exist_before_servers(cloud):
    addresses = evaluate(lambda: _addresses(cloud, settings()))
    private, public = evaluate(lambda: [addresses.nodes[1].private_ip, addresses.nodes[1].public_ip])
    assert private.startswith("10.20.0.") and public.startswith("198.18.0.")
    port = cloud.named("m-k3s-1-port")
    assert port.inputs["securityGroupIds"] == ["sg-1", "sg-2"]
    assert port.inputs["fixedIps"] == [{"subnetId": "m-subnet-id"}]
    association = cloud.named("m-k3s-1-fip-assoc")
    assert association.inputs["portId"] == "m-k3s-1-port-id" and association.inputs["floatingIp"] == public
    # Neutron only associates a floating IP once the subnet is routed to the external network.
    assert cloud.depends_on(association, cloud.named("m-router-if"))
    assert cloud.named("m-k3s-1-fip").inputs["pool"] == "public"
    assert len(addresses.reachable) == 3  # router interface and two associations


def test_fixed_addresses_are_the_port_addresses(cloud):
    addresses = evaluate(lambda: _addresses(cloud, settings(**EXISTING)))
    private, public = evaluate(lambda: [addresses.nodes[0].private_ip, addresses.nodes[0].public_ip])
    assert private == public
    assert not cloud.of_type("FloatingIp") and not cloud.of_type("FloatingIpAssociate")
    assert "fixedIps" not in cloud.named("m-k3s-0-port").inputs


def test_first_ipv4_skips_ipv6():
    from components.addresses import first_ipv4
    assert first_ipv4(["2001:db8::5", "192.0.2.7"]) == "192.0.2.7"
    with pytest.raises(ValueError, match="no IPv4"):
        first_ipv4(["2001:db8::5"])


def _pem_cert(text):
    return x509.load_pem_x509_certificate(text.encode())


def test_k3s_cluster_certificate_wiring(cloud):
    from components.kubernetes import K3sCluster
    from components.cloudinit import K3S_TLS_DIR
    s = settings(sshPublicKey="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample op@laptop", nodeCount="3")
    kubeconfig = evaluate(lambda: K3sCluster("m", s, *_addressed(cloud, s, ["m-k3s-0", "m-k3s-1", "m-k3s-2"])).kubeconfig)
    servers = {r.name: r for r in cloud.of_type("compute/instance:Instance")}
    assert sorted(servers) == ["m-k3s-0", "m-k3s-1", "m-k3s-2"]
    server_data = cloud.registered[("openstack:compute/instance:Instance", "m-k3s-0")].outputs["userData"]
    assert_valid_cloud_config(server_data)
    files = {f["path"]: f["content"] for f in yaml.safe_load(server_data)["write_files"]}
    server_ca = _pem_cert(files[f"{K3S_TLS_DIR}/server-ca.crt"])
    client_ca = _pem_cert(files[f"{K3S_TLS_DIR}/client-ca.crt"])
    for name in ("server-ca", "client-ca", "request-header-ca", "etcd/peer-ca", "etcd/server-ca"):
        cert = _pem_cert(files[f"{K3S_TLS_DIR}/{name}.crt"])
        key = files[f"{K3S_TLS_DIR}/{name}.key"]
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        from cryptography.hazmat.primitives import serialization
        assert serialization.load_pem_private_key(key.encode(), None).public_key() == cert.public_key()
    assert "BEGIN RSA PRIVATE KEY" in files[f"{K3S_TLS_DIR}/service.key"] or \
        "BEGIN PRIVATE KEY" in files[f"{K3S_TLS_DIR}/service.key"]

    config = yaml.safe_load(kubeconfig)
    cluster_entry = config["clusters"][0]["cluster"]
    # The fake hands out addresses in registration order, which is concurrent: ask which one node 0 got.
    server_public_ip = cloud.named("m-k3s-0-fip").outputs["address"]
    assert cluster_entry["server"] == f"https://{server_public_ip}:6443"
    trusted = x509.load_pem_x509_certificate(base64.b64decode(cluster_entry["certificate-authority-data"]))
    assert trusted == server_ca  # the kubeconfig trusts exactly the CA k3s serves with
    admin = x509.load_pem_x509_certificate(base64.b64decode(config["users"][0]["user"]["client-certificate-data"]))
    admin.verify_directly_issued_by(client_ca)  # signed by the client CA written to the server
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"

    for agent in ("m-k3s-1", "m-k3s-2"):
        data = cloud.registered[("openstack:compute/instance:Instance", agent)].outputs["userData"]
        assert_valid_cloud_config(data)
        assert "PRIVATE KEY" not in data
        assert servers[agent].inputs["flavorName"] == s.openstack.agent_flavor
    server = servers["m-k3s-0"]
    assert server.inputs["networks"] == [{"port": "m-k3s-0-port-id"}]
    assert server.inputs["keyPair"] == "m-ssh"
    assert server.inputs["schedulerHints"] == [{"group": "m-spread-id"}]
    assert server.inputs["blockDevices"] == [{
        "sourceType": "image", "uuid": "image-ubuntu-24.04", "destinationType": "volume", "volumeSize": 40,
        "bootIndex": 0, "deleteOnTermination": True}]
    assert server.inputs["configDrive"] is True
    assert cloud.one("ServerGroup").inputs["policies"] == "soft-anti-affinity"
    # Agents join with the agent token pinned to the server CA; the server token stays on the server.
    server_token = cloud.named("m-token").outputs["result"]
    for agent in ("m-k3s-1", "m-k3s-2"):
        data = cloud.registered[("openstack:compute/instance:Instance", agent)].outputs["userData"]
        config = yaml.safe_load({f["path"]: f["content"] for f in yaml.safe_load(data)["write_files"]}[
            "/etc/rancher/k3s/config.yaml"])
        assert config["token"].startswith("K10") and server_token not in data

    gate = cloud.named("m-api-ready")
    assert gate.outputs["url"] == f"https://{server_public_ip}:6443/readyz"
    # The server's id is an input: a healed or replaced server 0 makes the gate wait for its API again.
    assert gate.outputs["serverId"] == "m-k3s-0-id" and cloud.depends_on(gate, cloud.named("m-k3s-0"))
    for association in cloud.of_type("FloatingIpAssociate"):
        assert cloud.depends_on(gate, association)
    # Agents boot in parallel with the server: they know its private address from its port.
    assert not cloud.depends_on(cloud.named("m-k3s-1"), cloud.named("m-k3s-0"))


def test_each_node_has_its_own_data_volume_attached_and_named_in_its_user_data(cloud):
    from components.kubernetes import K3sCluster
    s = settings(dataVolumeSize="250", dataVolumeType="ssd")
    cluster = K3sCluster("m", s, *_addressed(cloud, s, ["m-k3s-0", "m-k3s-1"]))
    evaluate(lambda: cluster.kubeconfig)
    for machine, node in zip(cluster.machines, ("m-k3s-0", "m-k3s-1")):
        volume = cloud.named(f"{node}-data")
        assert volume.inputs["size"] == 250 and volume.inputs["volumeType"] == "ssd"
        attach = cloud.named(f"{node}-data-attach")
        assert attach.inputs == {"instanceId": f"{node}-id", "volumeId": f"{node}-data-id"}
        user_data = cloud.named(node).outputs["userData"]
        assert f"volume_id={node}-data-id" in user_data
        # A replaced server (delete before replace) gets the same volume back; the server ignores boot inputs.
        assert cloud.depends_on(attach, cloud.named(node)) and cloud.depends_on(cloud.named(node), volume)


def test_the_image_is_pinned_at_the_first_deploy(cloud):
    from components.kubernetes import K3sCluster
    s = settings()
    evaluate(lambda: K3sCluster("m", s, *_addressed(cloud, s, ["m-k3s-0"])).kubeconfig)
    stash = cloud.named("m-image")
    assert stash.inputs["input"] == "image-ubuntu-24.04"
    server = cloud.named("m-k3s-0")
    assert server.inputs["blockDevices"][0]["uuid"] == stash.outputs["output"]
    assert cloud.depends_on(server, stash)


def test_a_first_deploy_with_an_image_the_cloud_lacks_fails_naming_the_setting(cloud):
    from components.kubernetes import K3sCluster
    cloud.missing_images.add("ubuntu-24.04")
    s = settings()
    with pytest.raises(Exception, match="crdb-federation:image = 'ubuntu-24.04': expected the name"):
        evaluate(lambda: K3sCluster("m", s, *_addressed(cloud, s, ["m-k3s-0"])).kubeconfig)


def test_a_server_keeps_every_input_that_would_force_a_new_one(cloud):
    """terraform-provider-openstack v3.4.0 resource_openstack_compute_instance_v2.go: user_data,
    availability_zone, config_drive, key_pair, network (and its port), block_device and scheduler_hints are
    ForceNew; an image change rebuilds the server. Setting sshPublicKey or changing the zone replaces nothing."""
    from components.kubernetes import K3sCluster
    s = settings(sshPublicKey="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample op@laptop")
    evaluate(lambda: K3sCluster("m", s, *_addressed(cloud, s, ["m-k3s-0", "m-k3s-1"])).kubeconfig)
    for server in ("m-k3s-0", "m-k3s-1"):
        options = cloud.named(server).options
        assert set(options["ignore_changes"]) >= {"userData", "blockDevices", "imageId", "imageName", "configDrive",
                                                  "keyPair", "availabilityZone", "networks", "schedulerHints"}
        assert options["delete_before_replace"] is True
    # A new key replaces the keypair under its fixed name: Nova refuses two of one name.
    assert cloud.named("m-ssh").options["delete_before_replace"] is True
    # The zone is the first deploy's (a Stash): servers and the locality keep it.
    zone = cloud.named("m-availability-zone")
    assert zone.inputs["input"] == "nova" and cloud.named("m-k3s-1").inputs["availabilityZone"] == "nova"


def test_an_agents_kubernetes_node_is_removed_after_its_server(cloud):
    """k3s never deletes the Node of a deleted server (its cloud provider says every instance exists): each
    agent's server depends on a registration, so the engine deletes the registration, and with it the Node,
    only once the server is gone; node 0's goes with the cluster."""
    from components.kubernetes import K3sCluster
    s = settings()
    evaluate(lambda: K3sCluster("m", s, *_addressed(cloud, s, ["m-k3s-0", "m-k3s-1", "m-k3s-2"])).kubeconfig)
    registrations = {r.name: r for r in cloud.of_type("dynamic:Resource") if r.name.endswith("-registration")}
    assert sorted(registrations) == ["m-k3s-1-registration", "m-k3s-2-registration"]
    for name, registration in registrations.items():
        server = cloud.named(name.removesuffix("-registration"))
        assert registration.outputs["node"] == server.name
        assert cloud.depends_on(server, registration)
        # Deleted with the server group, which goes only with the whole cluster, and is made in a moment: the SDK
        # awaits a `deleted_with` resource's URN, so with server 0 there every agent waited for its boot.
        assert registration.options["deleted_with"] == cloud.named("m-spread").urn


def test_an_image_given_by_id_is_used_as_it_is(cloud):
    from components.kubernetes import K3sCluster
    image = "6f0d2b3e-7c4a-4f5e-9d1b-2a3c4d5e6f70"
    s = settings(image=image)
    evaluate(lambda: K3sCluster("m", s, *_addressed(cloud, s, ["m-k3s-0"])).kubeconfig)
    assert not [r for r in cloud.of_type("pulumi:index:Stash") if r.name == "m-image"]
    assert not [t for t, _ in cloud.invokes if "getImage" in t]
    assert cloud.named("m-k3s-0").inputs["blockDevices"][0]["uuid"] == image


def test_existing_cluster_takes_kubeconfig_from_config(cloud):
    from components.kubernetes import ExistingCluster
    from components.settings import parse_settings
    kubeconfig = yaml.safe_dump({"clusters": [{"name": "magnum", "cluster": {"server": "https://192.0.2.1:6443"}}]})
    s = parse_settings({**VALID, "kubernetesMode": "existing", "existingNodes": '["node-a 192.0.2.10 10.0.0.10"]'},
                       "m", {"kubeconfig": pulumi.Output.secret(kubeconfig)})
    endpoint, public = evaluate(lambda: (lambda c: [c.api_endpoint, c.nodes[0].public_ip])(ExistingCluster("m", s)))
    assert endpoint == "https://192.0.2.1:6443" and public == "192.0.2.10"
    assert not cloud.of_type("compute/instance:Instance")
