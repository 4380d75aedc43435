"""Nova's FakeDriver with a node identity that survives a restart of nova-compute.

The stock driver makes up a random node uuid per process and never writes compute_id, so a
restarted nova-compute refuses to start. Nova loads drivers only from nova.virt, so the local
cloud script adds a one-line module there that re-exports this class.
"""
import uuid

from nova.virt import fake


def node_uuid(nodename: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, "crdb-localcloud-" + nodename))


class RestartableFakeDriver(fake.FakeDriver):
    def get_available_resource(self, nodename):
        resources = super().get_available_resource(nodename)
        resources["uuid"] = node_uuid(nodename)
        return resources

    def get_nodenames_by_uuid(self, refresh=False):
        return {node_uuid(name): name for name in self.get_available_nodes()}
