"""Drivers that let real Nova, Neutron and Cinder run with no hypervisor, agent or storage.

Only what has no dataplane is faked: every API, scheduler, database row and state machine is the
upstream code. Loaded by the integration tier's local cloud (tests/integration/localcloud).
"""
