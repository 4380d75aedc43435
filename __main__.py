"""crdb-federation: one cloud member of a CockroachDB cluster spread over OpenStack clouds.

Settings are parsed and validated before any resource exists; then one CloudMember is built and
its join endpoints exported.
"""

import pulumi
import pulumi_openstack as openstack

from components.cockroach import fully_qualified_stack
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
trust, identity = cockroach.trust, cockroach.identity

pulumi.export("role", settings.cockroach.role)
# The name the seed lists in crdb-federation:members to admit this stack.
pulumi.export("stack", fully_qualified_stack())
pulumi.export("member", settings.cockroach.member)
pulumi.export("apiEndpoint", cluster.api_endpoint)
pulumi.export("kubeconfig", cluster.kubeconfig)
pulumi.export("nodes", [{"name": n.name, "publicIp": n.public_ip, "privateIp": n.private_ip} for n in cluster.nodes])
if settings.kubernetes.mode == "k3s":
    # The image its servers boot, pinned at the first deploy (preflight reads it once the name is retired).
    pulumi.export("imageId", cluster.image_id)
pulumi.export("joinAddresses", cockroach.join_addresses)
pulumi.export("sqlUrl", cockroach.sql_url)
pulumi.export("adminUiUrl", cockroach.admin_ui_url)
pulumi.export("clusterName", settings.cockroach.cluster_name)
pulumi.export("locality", cockroach.locality)
pulumi.export("caCertificate", trust.ca_pem)
pulumi.export("clientCaCertificate", trust.client_ca_pem)
# What the seed signs: this stack's node key stays here, only the requests leave it.
pulumi.export("certificateRequests", {"node": identity.requests.node, "client": identity.requests.client,
                                      "ops": identity.requests.ops})
pulumi.export("certificatesSigned", pulumi.Output.all(trust.node_cert_pem, trust.node_client_cert_pem).apply(all))
if cockroach.seed is not None:
    seed = cockroach.seed
    pulumi.export("signedCertificates", seed.admissions.signed)
    pulumi.export("federationJoin", seed.admissions.federation_join)
    # Why the seed's signing service refused a member's requests, for that member's `up` to say.
    pulumi.export("refusals", settings.cockroach.refusals)
    pulumi.export("rootClientCertificate", seed.authority.root_cert_pem)
    pulumi.export("rootClientKey", seed.authority.root_key_pem)
