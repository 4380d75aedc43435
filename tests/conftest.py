import sys
from pathlib import Path

# The program's modules import as `components.*`, as they do when the Pulumi CLI runs __main__.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


import pytest  # noqa: E402

from tests.harness import (  # noqa: E402
    MEMBER, MEMBER_STACK, SEED, SEED_SECRETS, SEED_STACK, outputs_of, pinned_to, run_program,
)


def pytest_xdist_make_scheduler(config, log):
    """scripts/test.sh runs two pytest workers (pytest-xdist): each unit module goes whole to one worker, so its
    module fixtures run once; the integration tier goes whole to one worker, in order, since its tests share one
    local cloud and one stand-in, and some stop the cloud's APIs or lower its quotas. (A scheduler of our own:
    under pytest 9.2, xdist 3.8's `xdist_group` marks grouped nothing: the node IDs never got their group suffix.)"""
    from xdist.scheduler import LoadScopeScheduling

    class WholeModulesAndIntegrationTier(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "integration" if module.startswith("tests/integration/") else module

    return WholeModulesAndIntegrationTier(config, log)


# The whole program's runs in the order the federation's trust needs, shared by the modules that test them.
@pytest.fixture(scope="session")
def seed():
    return run_program(SEED, stack="seed", secrets=SEED_SECRETS)


@pytest.fixture(scope="session")
def seed_outputs(seed):
    return outputs_of(seed)


@pytest.fixture(scope="session")
def waiting_member(seed_outputs):
    """A member's first up: the seed has not signed its requests yet."""
    return run_program(pinned_to(seed_outputs, MEMBER), stack="vexxhost", stack_outputs={SEED_STACK: seed_outputs})


@pytest.fixture(scope="session")
def signing_seed(waiting_member):
    """The seed's up after it admitted the member: it signs what the member published."""
    return run_program({**SEED, "members": [MEMBER_STACK]}, stack="seed", secrets=SEED_SECRETS,
                       stack_outputs={MEMBER_STACK: outputs_of(waiting_member)})


@pytest.fixture(scope="session")
def member(signing_seed):
    """The member's second up: it installs its signed certificates."""
    seed_outputs = outputs_of(signing_seed)
    return run_program(pinned_to(seed_outputs, MEMBER), stack="vexxhost", stack_outputs={SEED_STACK: seed_outputs})
