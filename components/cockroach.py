"""CockroachDB on one member's Kubernetes: trust, namespace, secrets, join list, DaemonSet, PDB, seed jobs."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s

from . import cockroach_manifests as m
from .cloudinit import no_proxy_list
from .federation import (
    FederationAuthority, MemberAdmissions, NodeIdentity, Trust, answers, covers, pinned_bundle, signed_for,
    spread_join, stack_output, warn_if_readable,
)
from .kubernetes import KubeNode
from .ops_user import OPS_CERT_FILE, OPS_KEY_FILE, OPS_USER
from .settings import COCKROACH_PORT, Settings
from .signature import SignatureWait

# The seed's own nodes join each other through at most this many private addresses.
OWN_JOIN_COUNT = 3
# Longer than anything the scripts wait for: the init job's 90 attempts of 10 s, a node's start.
WORKLOAD_TIMEOUTS = pulumi.CustomTimeouts(create="30m", update="30m")


def fully_qualified_stack() -> str:
    return f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"


class Seed:
    """What only the seed has: the authority, the members it admitted, the federation's join list."""

    def __init__(self, name: str, settings: Settings, identity: NodeIdentity, own_public: pulumi.Output[list[str]],
                 own_private: pulumi.Output[list[str]], own_join: pulumi.Output[list[str]], opts: pulumi.ResourceOptions):
        """`own_join`: the seed's nodes' public RPC addresses."""
        c = settings.cockroach
        own_ca = (c.ca_certificate, c.ca_private_key) if c.ca_certificate else None
        self.authority = FederationAuthority(f"{name}-authority", own_ca=own_ca, opts=opts)
        own = self.authority.sign(f"{name}-own", identity.requests)
        self.admissions = MemberAdmissions(
            f"{name}-admissions", seed_member=c.member, seed_ips=pulumi.Output.all(own_public, own_private).apply(
                lambda v: v[0] + v[1]), seed_join=own_join, member_stacks=c.members, authority=self.authority,
            allow_rekey=c.allow_rekey, shared_secrets=c.shared_secrets, early_requests=c.early_requests, opts=opts)
        # Seed nodes find each other privately, and the members through their public addresses.
        join = pulumi.Output.all(own_private, self.admissions.federation_join, own_join).apply(lambda v: spread_join(
            [(c.member, [f"{ip}:{COCKROACH_PORT}" for ip in v[0][:OWN_JOIN_COUNT]])]
            + [("federation", [a for a in v[1] if a not in v[2]] + list(c.join_addresses))]))
        self.trust = Trust(self.authority.ca_pem, self.authority.client_ca_pem, identity.key_pem,
                           own.node, own.client, join, ops_client_cert_pem=own.ops)


def member_trust(settings: Settings, identity: NodeIdentity, opts: pulumi.ResourceOptions) -> Trust:
    """A member's CA certificates, its signed certificates (None until the seed signed them) and join list,
    from the seed stack, or from explicit config for a member that cannot read the seed's outputs.

    Nothing read from the seed is taken on trust: its CA certificates must be the ones the member pinned
    (caSha256, clientCaSha256: handed over out of band, as k3s's K10 token pins its CA), and each signed
    certificate must chain to them and be for this stack's own key. The SQL user's certificate comes only from the
    seed's output (or its signing within this `up`): None until the seed has signed this stack's request for it."""
    c = settings.cockroach
    explicit = list(c.join_addresses)
    if not c.seed_stack:
        ca, client_ca = pulumi.Output.from_input(c.ca_certificate), pulumi.Output.from_input(c.client_ca_certificate)
        node, client = pulumi.Output.from_input(c.node_certificate), pulumi.Output.from_input(c.node_client_certificate)
        ops = pulumi.Output.from_input(None)
        source, join = "crdb-federation:caCertificate", pulumi.Output.from_input(explicit)
    else:
        seed = pulumi.StackReference(c.seed_stack, opts=opts)
        todo = ("Bring the seed up first (scripts/up.sh seed, or python -m federation join), or set "
                "crdb-federation:joinAddresses, caCertificate and clientCaCertificate instead of seedStack.")

        def output(name: str) -> pulumi.Output:
            return stack_output(seed, c.seed_stack, name, "seedStack", todo)

        if not c.shared_secrets:
            seed.get_output("rootClientKey").apply(
                lambda v: warn_if_readable(v, c.seed_stack, "rootClientKey"))
        source = f"the seed's ({c.seed_stack}) output"
        ca = output("caCertificate").apply(lambda pem: pinned_bundle(pem, c.ca_sha256, "caSha256",
                                                                     f"{source} caCertificate"))
        client_ca = output("clientCaCertificate").apply(lambda pem: pinned_bundle(
            pem, c.client_ca_sha256, "clientCaSha256", f"{source} clientCaCertificate"))
        seed_member = output("member").apply(lambda name: _other_than(name, c.member))
        own = fully_qualified_stack()
        signed = pulumi.Output.all(output("signedCertificates"), seed_member).apply(lambda v: v[0].get(own) or {})
        published = signed.apply(lambda s: (s.get("node") or c.node_certificate,
                                            s.get("client") or c.node_client_certificate, s.get("ops")))
        # Signed within this `up` by the seed's signing service (components/signature.py).
        wait = SignatureWait(f"{c.member}-signature", stack=own, seed=c.seed_stack, node_request=identity.requests.node,
                             client_request=identity.requests.client, ops_request=identity.requests.ops,
                             wanted=pulumi.Output.all(published, identity.requests.node).apply(
                                 lambda v: not answers(v[0][0], v[1])),
                             timeout=c.signature_wait, token=c.join_token, opts=opts)
        wait.unsigned.apply(lambda why: pulumi.log.warn(why) if why else None)
        chosen = pulumi.Output.all(published, wait.node, wait.client, wait.ops, identity.requests.node).apply(
            lambda v: v[0] if answers(v[0][0], v[4]) or not v[1] else (v[1], v[2], v[3] or None))
        node, client, ops = (chosen.apply(lambda three, i=i: three[i]) for i in range(3))
        join = output("federationJoin").apply(lambda seed_join: list(dict.fromkeys(list(seed_join) + explicit)))
    # The check reads the (secret) key; what it passes on is the certificate, which is public.
    node = pulumi.Output.unsecret(pulumi.Output.all(node, ca, identity.key_pem).apply(
        lambda v: signed_for(v[0], v[1], v[2], f"the node certificate from {source}")))
    client = pulumi.Output.unsecret(pulumi.Output.all(client, client_ca, identity.key_pem).apply(
        lambda v: signed_for(v[0], v[1], v[2], f"the client.node certificate from {source}")))
    ops = pulumi.Output.unsecret(pulumi.Output.all(ops, client_ca, identity.key_pem).apply(
        lambda v: signed_for(v[0], v[1], v[2], f"the client.{OPS_USER} certificate from {source}")))
    return Trust(ca, client_ca, identity.key_pem, node, client, join, ops_client_cert_pem=ops)


def _other_than(seed_member: str, member: str) -> str:
    if seed_member == member:
        raise pulumi.RunError(f"crdb-federation:memberName = {member!r}: expected a name other than the seed's "
                              f"(locality cloud={member} would hold two clouds)")
    return seed_member


class CockroachNodes(pulumi.ComponentResource):
    """The member's CockroachDB nodes, one per Kubernetes node, joined to the federation."""

    join_addresses: pulumi.Output[list[str]]
    sql_url: pulumi.Output[str]
    admin_ui_url: pulumi.Output[str]
    locality: pulumi.Output[str]
    daemonset: k8s.apps.v1.DaemonSet
    init_job: Optional[k8s.batch.v1.Job]
    seed: Optional[Seed]
    # Every Kubernetes object made here: a cloud's decommissioning must come before any of them goes.
    objects: list[pulumi.CustomResource]

    def __init__(
        self,
        name: str,
        settings: Settings,
        nodes: Sequence[KubeNode],
        provider: k8s.Provider,
        zone: pulumi.Input[str],
        opts: Optional[pulumi.ResourceOptions] = None,
        deleted_with: Optional[pulumi.Resource] = None,
    ):
        """`zone`: the availability zone the nodes run in (the locality's zone=); `deleted_with`: the resource
        whose deletion takes the whole Kubernetes cluster with it."""
        super().__init__("crdb-federation:cockroach:CockroachNodes", name, None, opts)
        c, k = settings.cockroach, settings.kubernetes
        child = pulumi.ResourceOptions(parent=self)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider, deleted_with=deleted_with)
        publics = pulumi.Output.all(*[n.public_ip for n in nodes])
        privates = pulumi.Output.all(*[n.private_ip for n in nodes])
        names = [n.name for n in nodes]

        addresses = pulumi.Output.all(publics, privates).apply(
            lambda v: tuple(m.NodeAddresses(n, pub, priv) for n, pub, priv in zip(names, v[0], v[1])))
        zone = pulumi.Output.from_input(zone)
        self.locality = zone.apply(lambda z: m.locality(c.member, settings.openstack.region, z))
        self.identity = NodeIdentity(f"{name}-identity", dns_names=m.node_certificate_dns_names(c.namespace),
                                     ip_addresses=addresses.apply(m.node_certificate_ips), opts=child)
        self.join_addresses = publics.apply(lambda ips: [f"{ip}:{COCKROACH_PORT}" for ip in ips])
        self.seed = None
        if c.is_seed:
            self.seed = Seed(name, settings, self.identity, publics, privates, self.join_addresses, child)
            trust = self.seed.trust
        else:
            trust = member_trust(settings, self.identity, child)
        self.trust = trust

        # Each node knows whether the certificate the seed signed covers it: one added since waits.
        spec = pulumi.Output.all(addresses, trust.node_cert_pem, trust.node_client_cert_pem, zone).apply(
            lambda v: m.CockroachSpec(
                namespace=c.namespace,
                member=c.member,
                region=settings.openstack.region,
                zone=v[3],
                cluster_name=c.cluster_name,
                image=c.image,
                memory=c.memory,
                cpu=c.cpu,
                nodes=tuple(dataclasses.replace(n, signed=bool(v[2]) and covers(v[1], n.public_ip, n.private_ip))
                            for n in v[0]),
                http_proxy=k.http_proxy,
                no_proxy=no_proxy_list(k, settings.network.cidr),
            ))

        self.objects = []
        self.namespace = self._apply(k8s.core.v1.Namespace, f"{name}-ns", spec.apply(m.render_namespace), k8s_opts,
                                     fields=())
        in_namespace = pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[self.namespace]))
        self._apply(k8s.core.v1.ConfigMap, f"{name}-addresses", spec.apply(m.render_address_config_map),
                    in_namespace, fields=("data",))
        self._apply(k8s.core.v1.ConfigMap, f"{name}-join", pulumi.Output.all(spec, trust.join).apply(
            lambda v: m.render_join_config_map(v[0], tuple(v[1]))), in_namespace, fields=("data",))
        signed = spec.apply(lambda s: all(n.signed for n in s.nodes))
        self.node_secret = self._secret(name, spec, m.NODE_SECRET, pulumi.Output.all(
            trust.ca_pem, trust.client_ca_pem, trust.node_key_pem, trust.node_cert_pem, trust.node_client_cert_pem,
            trust.ops_client_cert_pem,
        ).apply(lambda v: node_files(*v)), in_namespace)
        self._apply(k8s.core.v1.Service, f"{name}-public", spec.apply(m.render_public_service), in_namespace)
        # No PodDisruptionBudget: a budget with maxUnavailable does not apply to a DaemonSet's pods (no scale
        # subresource; Kubernetes docs, configure-pdb), and drains skip DaemonSet pods anyway.
        self.daemonset = self._apply(
            k8s.apps.v1.DaemonSet, f"{name}-nodes",
            pulumi.Output.all(spec, signed).apply(lambda v: m.render_daemonset(v[0], await_ready=v[1])),
            pulumi.ResourceOptions.merge(in_namespace, pulumi.ResourceOptions(custom_timeouts=WORKLOAD_TIMEOUTS)))

        self.init_job = None
        if self.seed is not None:
            self.init_job = self._seed_jobs(name, settings, spec, privates, in_namespace)

        first_public = publics.apply(lambda ips: ips[0])
        self.sql_url = first_public.apply(m.sql_url)
        self.admin_ui_url = first_public.apply(m.admin_ui_url)
        self.register_outputs({"joinAddresses": self.join_addresses, "sqlUrl": self.sql_url})

    def _seed_jobs(self, name: str, settings: Settings, spec: pulumi.Output, privates: pulumi.Output,
                   opts: pulumi.ResourceOptions) -> k8s.batch.v1.Job:
        c = settings.cockroach
        authority = self.seed.authority
        self._secret(name, spec, m.CLIENT_SECRET, pulumi.Output.all(
            authority.ca_pem, authority.client_ca_pem, authority.root_cert_pem, authority.root_key_pem,
        ).apply(lambda v: {"ca.crt": v[0], "ca-client.crt": v[1], "client.root.crt": v[2], "client.root.key": v[3]}),
            opts)
        host = privates.apply(lambda ips: ips[0])
        # Init runs once in the life of the cluster: a later spec (a new image, a new address for node 0)
        # must never re-create it. Not after the DaemonSet: its pods become ready only once this has run.
        init = pulumi.Output.all(spec, host).apply(lambda v: m.render_job(v[0], "init", m.render_init_script(v[0], v[1])))
        # An init that failed (the cluster was not up in time) is replaced by the next `up`, which runs it again:
        # with `replace_on_changes` "*" the engine replaces a resource that has initialization errors rather
        # than await it again as an update (step_generator.go applyReplaceOnChanges); its fixed name needs the
        # old one gone first. Nothing else changes it.
        init_job = k8s.batch.v1.Job(
            f"{name}-init", metadata=init["metadata"], spec=init["spec"],
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                ignore_changes=["metadata", "spec"], replace_on_changes=["*"], delete_before_replace=True,
                custom_timeouts=WORKLOAD_TIMEOUTS)))
        self.objects.append(init_job)
        if c.enterprise_license is not None:
            self._secret(name, spec, m.LICENCE_SECRET, pulumi.Output.all(c.enterprise_license).apply(
                lambda v: {"organization": c.cluster_organization or "", "license": v[0]}), opts)
        settings_job = pulumi.Output.all(spec, host).apply(
            lambda v: m.render_cluster_settings_cron_job(v[0], v[1], c.replication_factor))
        self._apply(k8s.batch.v1.CronJob, f"{name}-cluster-settings", settings_job,
                    pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[init_job])))
        return init_job

    def _apply(self, kind: type, name: str, manifest: pulumi.Output[dict], opts: pulumi.ResourceOptions,
               fields: Sequence[str] = ("spec",)) -> pulumi.CustomResource:
        """Creates a typed Kubernetes resource from a rendered manifest: its metadata and body fields."""
        made = kind(name, metadata=manifest["metadata"], opts=opts, **{field: manifest[field] for field in fields})
        self.objects.append(made)
        return made

    def _secret(self, name: str, spec: pulumi.Output, secret_name: str, files: pulumi.Output[dict[str, str]],
                opts: pulumi.ResourceOptions) -> k8s.core.v1.Secret:
        manifest = pulumi.Output.all(spec, files).apply(lambda v: m.render_secret(v[0], secret_name, dict(v[1])))
        made = k8s.core.v1.Secret(
            f"{name}-{secret_name}",
            metadata=manifest["metadata"],
            type="Opaque",
            string_data=pulumi.Output.secret(manifest["stringData"]),
            opts=opts,
        )
        self.objects.append(made)
        return made


def node_files(ca: str, client_ca: str, key: str, cert: Optional[str], client_cert: Optional[str],
               ops_cert: Optional[str] = None) -> dict[str, str]:
    """The node secret's files; the certificates only once the seed has signed them (the pods wait for them). The
    SQL user's certificate and key (the node key) under the names the CLI loads for --user (the OS upgrade's gate
    runs it in the pod), once signed."""
    files = {"ca.crt": ca, "ca-client.crt": client_ca, "node.key": key, "client.node.key": key}
    if cert and client_cert:
        files.update({"node.crt": cert, "client.node.crt": client_cert})
    if ops_cert:
        files.update({OPS_CERT_FILE: ops_cert, OPS_KEY_FILE: key})
    return files
