"""CockroachDB on one member's Kubernetes: PKI, namespace, secrets, services, StatefulSet, PDB, seed jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s
from pulumi.output import UNKNOWN

from . import cockroach_manifests as m
from . import pki
from .kubernetes import KubeNode
from .settings import COCKROACH_PORT, Settings


@dataclass(frozen=True)
class Federation:
    """What a stack needs of the federation: its CA (certificate and key) and where to join."""

    ca_cert_pem: pulumi.Output[str]
    ca_key_pem: pulumi.Output[str]
    join: pulumi.Output[list[str]]


class FederationCa(pulumi.ComponentResource):
    """The one CA of the whole federation, created by the seed stack."""

    def __init__(self, name: str, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:cockroach:FederationCa", name, None, opts)
        key, cert = pki.certificate_authority(
            name, "crdb-federation CA", pulumi.ResourceOptions(parent=self), rsa=True, organization="Cockroach"
        )
        self.cert_pem = cert.cert_pem
        self.key_pem = pulumi.Output.secret(key.private_key_pem)
        self.register_outputs({"certPem": self.cert_pem})


def federation_for(settings: Settings, own_private_join: pulumi.Output[list[str]], opts: pulumi.ResourceOptions) -> Federation:
    """The seed owns the CA (or is given one) and joins its own nodes privately; a member takes the CA
    and the seed's public join addresses from the seed stack, or from explicit config."""
    c = settings.cockroach
    explicit_join = list(c.join_addresses)
    if c.is_seed:
        if c.ca_certificate is not None:
            cert, key = c.ca_certificate, pulumi.Output.secret(c.ca_private_key)
        else:
            ca = FederationCa(f"{c.member}-federation-ca", opts=opts)
            cert, key = ca.cert_pem, ca.key_pem
        return Federation(cert, key, own_private_join.apply(lambda own: list(dict.fromkeys(own + explicit_join))))
    if c.seed_stack:
        seed = pulumi.StackReference(c.seed_stack, opts=opts)
        cert = c.ca_certificate if c.ca_certificate is not None else seed_output(seed, c.seed_stack, "caCertificate")
        key = c.ca_private_key if c.ca_private_key is not None else seed_output(seed, c.seed_stack, "caPrivateKey")
        join = seed_output(seed, c.seed_stack, "joinAddresses").apply(
            lambda seed_join: list(dict.fromkeys(list(seed_join) + explicit_join)))
        return Federation(cert, pulumi.Output.secret(key), join)
    return Federation(c.ca_certificate, pulumi.Output.secret(c.ca_private_key), pulumi.Output.from_input(explicit_join))


class SeedNotReady(pulumi.RunError):
    """The seed stack has not exported what a member needs (it is not up yet, or is another project)."""


def seed_output(seed: pulumi.StackReference, seed_stack: str, name: str) -> pulumi.Output:
    """An output of the seed stack, or one clear error naming the stack and what to do.

    (A StackReference to a stack without outputs has no keys: require_output raises a bare KeyError.)"""

    def present(value):
        if value is not None:
            return value
        problem = (f"crdb-federation:seedStack = {seed_stack!r}: that stack has no output {name!r}. "
                   f"Bring the seed up first (scripts/up.sh seed, or python -m federation join), or set "
                   f"crdb-federation:joinAddresses and the secrets caCertificate/caPrivateKey instead of seedStack.")
        if pulumi.runtime.is_dry_run():
            # A preview (a pull request's, say) still shows what this member builds; `up` stops here.
            pulumi.log.warn(problem + " Previewing with the value unknown.")
            return UNKNOWN
        raise SeedNotReady(problem)

    return seed.get_output(name).apply(present)


class CockroachNodes(pulumi.ComponentResource):
    """The member's CockroachDB nodes, one pod per Kubernetes node, joined to the federation."""

    join_addresses: pulumi.Output[list[str]]
    sql_url: pulumi.Output[str]
    admin_ui_url: pulumi.Output[str]
    locality: str
    statefulset: k8s.apps.v1.StatefulSet
    init_job: Optional[k8s.batch.v1.Job]
    replication_job: Optional[k8s.batch.v1.Job]
    root_cert_pem: Optional[pulumi.Output[str]]
    root_key_pem: Optional[pulumi.Output[str]]
    node_cert_pem: Optional[pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        settings: Settings,
        nodes: Sequence[KubeNode],
        federation: Federation,
        provider: k8s.Provider,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("crdb-federation:cockroach:CockroachNodes", name, None, opts)
        c = settings.cockroach
        child = pulumi.ResourceOptions(parent=self)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        publics = pulumi.Output.all(*[n.public_ip for n in nodes])
        privates = pulumi.Output.all(*[n.private_ip for n in nodes])
        names = [n.name for n in nodes]

        spec = pulumi.Output.all(publics, privates, federation.join).apply(lambda v: m.CockroachSpec(
            namespace=c.namespace,
            member=c.member,
            region=settings.openstack.region,
            zone=settings.openstack.availability_zone,
            cluster_name=c.cluster_name,
            image=c.image,
            replicas=c.replicas,
            join=tuple(v[2]),
            insecure=c.insecure,
            memory=c.memory,
            cpu=c.cpu,
            storage_size=c.storage_size,
            storage_class=c.storage_class,
            nodes=tuple(m.NodeAddresses(n, pub, priv) for n, pub, priv in zip(names, v[0], v[1])),
        ))
        self.locality = m.locality(c.member, settings.openstack.region, settings.openstack.availability_zone)

        namespace = self._apply(k8s.core.v1.Namespace, f"{name}-ns", spec.apply(m.render_namespace), k8s_opts, fields=())
        in_namespace = pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[namespace]))
        self._apply(
            k8s.core.v1.ConfigMap, f"{name}-addresses", spec.apply(m.render_address_config_map), in_namespace, fields=("data",))

        self.node_cert_pem = self.root_cert_pem = self.root_key_pem = None
        if not c.insecure:
            node_key, node_cert = pki.signed_certificate(
                f"{name}-node",
                ca_cert_pem=federation.ca_cert_pem,
                ca_key_pem=federation.ca_key_pem,
                common_name="node",
                uses=pki.SERVER_AND_CLIENT,
                dns_names=m.node_certificate_dns_names(c.namespace),
                ip_addresses=spec.apply(lambda s: m.node_certificate_ips(s.nodes)),
                rsa=True,
                opts=child,
            )
            self.node_cert_pem = node_cert.cert_pem
            self._secret(name, spec, m.NODE_SECRET, {
                "ca.crt": federation.ca_cert_pem, "node.crt": node_cert.cert_pem, "node.key": node_key.private_key_pem,
            }, in_namespace)
            if c.is_seed:
                root_key, root_cert = pki.signed_certificate(
                    f"{name}-root", ca_cert_pem=federation.ca_cert_pem, ca_key_pem=federation.ca_key_pem,
                    common_name="root", uses=pki.CLIENT_ONLY, rsa=True, opts=child,
                )
                self.root_cert_pem, self.root_key_pem = root_cert.cert_pem, pulumi.Output.secret(root_key.private_key_pem)
                self._secret(name, spec, m.CLIENT_SECRET, {
                    "ca.crt": federation.ca_cert_pem, "client.root.crt": root_cert.cert_pem,
                    "client.root.key": root_key.private_key_pem,
                }, in_namespace)

        for index, service in enumerate(("headless", "public")):
            self._apply(k8s.core.v1.Service, f"{name}-{service}", spec.apply(lambda s, i=index: m.render_services(s)[i]), in_namespace)
        self._apply(k8s.policy.v1.PodDisruptionBudget, f"{name}-pdb", spec.apply(m.render_pod_disruption_budget), in_namespace)
        # Not after the ConfigMap and Secrets: the kubelet holds pods until their volumes exist, so waiting
        # here would only serialise what Kubernetes already orders.
        self.statefulset = self._apply(k8s.apps.v1.StatefulSet, f"{name}-sts", spec.apply(m.render_statefulset), in_namespace)

        self.init_job = self.replication_job = None
        if c.is_seed:
            host = privates.apply(lambda ips: ips[0])
            # Not after the StatefulSet: its pods only become ready once this job has initialised the cluster.
            jobs_need = pulumi.ResourceOptions.merge(in_namespace, pulumi.ResourceOptions(delete_before_replace=True))
            init = pulumi.Output.all(spec, host).apply(lambda v: m.render_job(v[0], "init", m.render_init_script(v[0], v[1])))
            self.init_job = self._apply(k8s.batch.v1.Job, f"{name}-init", init, jobs_need)
            replication = pulumi.Output.all(spec, host).apply(lambda v: m.render_job(
                v[0], f"replication-{c.replication_factor}", m.render_replication_script(v[0], v[1], c.replication_factor)))
            self.replication_job = self._apply(
                k8s.batch.v1.Job, f"{name}-replication", replication,
                pulumi.ResourceOptions.merge(jobs_need, pulumi.ResourceOptions(depends_on=[self.init_job])),
            )

        self.join_addresses = publics.apply(lambda ips: [f"{ip}:{COCKROACH_PORT}" for ip in ips])
        first_public = publics.apply(lambda ips: ips[0])
        self.sql_url = first_public.apply(lambda ip: m.sql_url(ip, insecure=c.insecure))
        self.admin_ui_url = first_public.apply(lambda ip: m.admin_ui_url(ip, insecure=c.insecure))
        self.register_outputs({"joinAddresses": self.join_addresses, "sqlUrl": self.sql_url})

    @staticmethod
    def _apply(kind: type, name: str, manifest: pulumi.Output[dict], opts: pulumi.ResourceOptions,
               fields: Sequence[str] = ("spec",)) -> pulumi.CustomResource:
        """Creates a typed Kubernetes resource from a rendered manifest: its metadata and body fields."""
        return kind(name, metadata=manifest["metadata"], opts=opts, **{field: manifest[field] for field in fields})

    def _secret(self, name: str, spec: pulumi.Output, secret_name: str, files: dict[str, pulumi.Output[str]],
                opts: pulumi.ResourceOptions) -> k8s.core.v1.Secret:
        manifest = pulumi.Output.all(spec, pulumi.Output.all(**files)).apply(
            lambda v: m.render_secret(v[0], secret_name, dict(v[1])))
        return k8s.core.v1.Secret(
            f"{name}-{secret_name}",
            metadata=manifest["metadata"],
            type="Opaque",
            string_data=pulumi.Output.secret(manifest["stringData"]),
            opts=opts,
        )
