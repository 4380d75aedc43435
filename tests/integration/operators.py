"""Operators apart, as they are: each one an environment of its own, as on a machine of its own (issue 29).

An operator has its own copy of the project holding its own stack file only, its own HOME, its own `clouds.yaml`
with its own OpenStack user in a project of its own, its own passphrase file, and its own object store user with
the README's policy, and nothing else: its processes start from an environment that carries no other operator's
credential (and none of the test run's own: the admin's cloud, the store's root key). What they share is what
real operators share: the object store, the cloud's public networks, and read-only tool binaries (the CLI, its
plugins and the Python virtualenv, which hold no secret).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from tests.integration import objectstore, overlay
from tests.integration.objectstore import ObjectStore, Operator
from tests.integration.project import ROOT

BUCKET = "crdb-federation-state"
CLOUD = overlay.LOCAL_CLOUD["cloud"]
# The role Keystone's bootstrap makes for a project's ordinary users (keystone/cmd/bootstrap.py: member).
MEMBER_ROLE = "member"
# Variables of the run that starts the operators that an operator's process may see: none holds a credential.
INHERITED = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "CRDB_TEST_NETNS")


@dataclass(frozen=True)
class CloudAccount:
    """One operator's OpenStack user, a `member` of a project of its own."""

    project: str
    user: str
    password: str = field(repr=False)

    def clouds_yaml(self, auth_url: str, region: str) -> str:
        """The operator's clouds.yaml: its cloud's entry only (pure)."""
        entry = {"auth": {"auth_url": auth_url, "username": self.user, "password": self.password,
                          "project_name": self.project, "user_domain_name": "Default",
                          "project_domain_name": "Default"},
                 "region_name": region, "identity_api_version": 3, "interface": "public"}
        return yaml.safe_dump({"clouds": {CLOUD: entry}}, sort_keys=False)


def open_account(admin, stack: str) -> CloudAccount:
    """A project and a user of the stack's operator in the local cloud, made by the cloud's admin (a fresh
    password each run); the project must hold nothing, so that what the tests count is this run's."""
    account = CloudAccount(f"operator-{stack}", f"{stack}-operator", secrets.token_urlsafe(18))
    project = admin.identity.find_project(account.project) or admin.identity.create_project(
        name=account.project, domain_id="default", description=f"the {stack} stack's operator (integration tier)")
    leftovers = [s.name for s in admin.compute.servers(all_projects=True, project_id=project.id)]
    if leftovers:
        raise RuntimeError(f"project {account.project} still holds servers of an earlier run: {leftovers}; "
                           "`bash tests/integration/localcloud/localcloud.sh clean` inside the test namespace wipes it")
    user = admin.identity.find_user(account.user, domain_id="default")
    if user is None:
        user = admin.identity.create_user(name=account.user, password=account.password, domain_id="default",
                                          default_project_id=project.id)
    else:
        admin.identity.update_user(user, password=account.password)
    admin.identity.assign_project_role_to_user(project, user, admin.identity.find_role(MEMBER_ROLE))
    return account


@dataclass
class OperatorMachine:
    """One operator's machine: where it runs the project, and the environment every process of it starts from."""

    stack: str
    directory: Path
    home: Path
    env: dict[str, str] = field(repr=False)
    account: CloudAccount
    store_user: Operator

    @property
    def passphrase_file(self) -> Path:
        # Where scripts/up.sh looks for it by default ($HOME/.config/crdb-federation/passphrases/<stack>.passphrase).
        return self.home / ".config" / "crdb-federation" / "passphrases" / f"{self.stack}.passphrase"

    @property
    def clouds_yaml(self) -> Path:
        return self.home / ".config" / "openstack" / "clouds.yaml"

    def secrets(self) -> dict[str, str]:
        """Every credential this operator holds, by what it is."""
        return {"store secret key": self.store_user.secret, "cloud password": self.account.password,
                "passphrase": self.passphrase_file.read_text()}

    def command(self, *args: str, timeout: float = 900, env: Optional[dict[str, str]] = None,
                stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), cwd=self.directory, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout, input=stdin)

    def pulumi(self, *args: str, check: bool = True, env: Optional[dict[str, str]] = None,
               **kwargs) -> subprocess.CompletedProcess:
        """A CLI command on its own stack, as the operator types it with its passphrase file exported."""
        env = {"PULUMI_CONFIG_PASSPHRASE_FILE": str(self.passphrase_file), **(env or {})}
        done = self.command("pulumi", *args, "--non-interactive", "--stack", self.stack, env=env, **kwargs)
        if check and done.returncode != 0:
            raise AssertionError(f"{self.stack}'s operator: pulumi {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-4000:]}\n{done.stderr[-2000:]}")
        return done

    def up_command(self, *extra: str) -> list[str]:
        """The one command an operator runs (README): scripts/up.sh <stack> with pulumi up's flags."""
        return ["bash", "scripts/up.sh", self.stack, "--yes", "--skip-preview", *extra]

    def start(self, argv: list[str], log: Path, env: Optional[dict[str, str]] = None,
              new_session: bool = False) -> subprocess.Popen:
        handle = open(log, "w")
        try:
            return subprocess.Popen(argv, cwd=self.directory, env={**self.env, **(env or {})}, stdout=handle,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=new_session)
        finally:
            handle.close()

    def tool(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`python -m federation ...` on this operator's machine, with its environment alone."""
        return self.command(str(self.directory / "venv" / "bin" / "python"), "-m", "federation", *args,
                            timeout=timeout)

    def cloud(self):
        """This operator's own view of the cloud (its user, its project)."""
        from openstack.config import OpenStackConfig
        from openstack.connection import Connection

        config = OpenStackConfig(config_files=[str(self.clouds_yaml)], load_envvars=False)
        return Connection(config=config.get_one(cloud=CLOUD))


def make_operator(base: Path, stack: str, account: CloudAccount, store: ObjectStore, store_user: Operator,
                  pulumi: str, auth_url: str, region: str) -> OperatorMachine:
    """The operator's machine under base/<stack>: the project with its own stack file only, a HOME with its
    clouds.yaml and passphrase file (mode 0600), and its environment."""
    root = base / stack
    directory = overlay.copy_project(ROOT, root / "project")
    for stack_file in (directory / "stacks").glob("Pulumi.*.yaml"):
        if stack_file.name != f"Pulumi.{stack}.yaml":
            stack_file.unlink()
    home = root / "home"
    machine_env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    machine_env["PATH"] = f"{Path(pulumi).parent}{os.pathsep}{machine_env.get('PATH', '/usr/bin:/bin')}"
    env = objectstore.pulumi_env(machine_env, store.endpoint, BUCKET, store_user)
    env.update({
        "HOME": str(home),
        "PULUMI_HOME": str(home / ".pulumi"),
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_DEBUG_COMMANDS": "true",  # enables --event-log
        # Tool binaries built once for the machine (the CLI, the stand-in's Kubernetes): no secret in them.
        "CRDB_TOOLS_CACHE": str(objectstore.tools_cache()),
    })
    machine = OperatorMachine(stack, directory, home, env, account, store_user)
    # Where OpenStack tools look is the account's home (the password database), which all operators here share:
    # each names its own file, as an operator on a shared machine does (scripts/check_credentials.py).
    env["OS_CLIENT_CONFIG_FILE"] = str(machine.clouds_yaml)
    _private(machine.clouds_yaml, account.clouds_yaml(auth_url, region))
    _private(machine.passphrase_file, f"{stack}'s operator alone knows this: {secrets.token_urlsafe(16)}")
    # The provider plugins, installed once on the machine (`pulumi plugin install`), are binaries alone.
    plugins = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi") / "plugins"
    (home / ".pulumi").mkdir(parents=True, exist_ok=True)
    (home / ".pulumi" / "plugins").symlink_to(plugins)
    return machine


def _private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(text)
