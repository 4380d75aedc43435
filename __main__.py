"""crdb-federation: one cloud member of a CockroachDB cluster spread over OpenStack clouds.

Settings are parsed and validated before any resource exists; then one CloudMember is built and
its join endpoints exported.
"""

import pulumi
import pulumi_openstack as openstack

from components.member import CloudMember
from components.settings import load_settings

settings = load_settings()

opts = None
if settings.kubernetes.mode == "k3s":
    # Credentials come from clouds.yaml (or OS_CLOUD), never from stack files.
    provider = openstack.Provider("openstack", cloud=settings.openstack.cloud, region=settings.openstack.region)
    opts = pulumi.ResourceOptions(providers=[provider])

member = CloudMember(settings.cockroach.member, settings, opts=opts)
cluster, cockroach = member.cluster, member.cockroach

pulumi.export("role", settings.cockroach.role)
pulumi.export("member", settings.cockroach.member)
pulumi.export("apiEndpoint", cluster.api_endpoint)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("nodes", [{"name": n.name, "publicIp": n.public_ip, "privateIp": n.private_ip} for n in cluster.nodes])
pulumi.export("joinAddresses", cockroach.join_addresses)
pulumi.export("sqlUrl", cockroach.sql_url)
pulumi.export("adminUiUrl", cockroach.admin_ui_url)
pulumi.export("clusterName", settings.cockroach.cluster_name)
pulumi.export("locality", cockroach.locality)
pulumi.export("caCertificate", member.federation.ca_cert_pem)
if settings.cockroach.is_seed:
    # Members sign their node certificates with it; it stays a secret in every state that holds it.
    pulumi.export("caPrivateKey", member.federation.ca_key_pem)
    pulumi.export("rootClientCertificate", cockroach.root_cert_pem)
    pulumi.export("rootClientKey", cockroach.root_key_pem)
