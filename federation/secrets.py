"""Each stack's own secrets provider, for the tool that drives many stacks from one process.

A StackReference keeps every output of the stack it reads in the reader's own state, decrypted where the
reader's secrets provider can decrypt it. Stacks that share a passphrase therefore hold each other's secrets:
a member would hold the seed's SQL root key, the seed every member's kubeconfig. So the tool never uses one
passphrase for every stack: a stack whose file names a secrets provider of its own (awskms://,
azurekeyvault://, gcpkms://, hashivault://) needs nothing; any other uses <directory>/<stack>.passphrase.
`--one-passphrase` keeps the ambient PULUMI_CONFIG_PASSPHRASE for all (one operator running the whole
federation alone, as in a demo).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import yaml

from .stack_config import ROOT, stack_file

DEFAULT_DIRECTORY = Path(os.environ.get("CRDB_PASSPHRASES", "~/.config/crdb-federation/passphrases")).expanduser()
PASSPHRASE_VARIABLES = ("PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE")


class SecretsSetupError(Exception):
    pass


def secrets_provider(stack: str, root: Path = ROOT) -> Optional[str]:
    """The provider the stack file names (`secretsprovider:`), or None for the passphrase default."""
    path = stack_file(stack, root)
    document = yaml.safe_load(path.read_text()) if path.is_file() else {}
    provider = document.get("secretsprovider") if isinstance(document, dict) else None
    return None if provider in (None, "", "passphrase", "default") else provider


def passphrase_file(stack: str, directory: Path) -> Path:
    return directory / f"{stack}.passphrase"


def stack_environments(stacks: Sequence[str], directory: Path, *, one_passphrase: bool,
                       root: Path = ROOT) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The environment each stack's engine runs with, and the stacks that have no secrets provider of their own
    (absent from the first)."""
    if one_passphrase:
        if not any(os.environ.get(v) for v in PASSPHRASE_VARIABLES):
            raise SecretsSetupError("--one-passphrase: set PULUMI_CONFIG_PASSPHRASE (or _FILE) for every stack")
        return {stack: {} for stack in stacks}, []
    environments, missing = {}, []
    for stack in stacks:
        path = passphrase_file(stack, directory)
        if secrets_provider(stack, root):
            environments[stack] = {}
        elif path.is_file():
            _refuse_if_others_can_read(path)
            environments[stack] = {"PULUMI_CONFIG_PASSPHRASE_FILE": str(path)}
        else:
            missing.append(stack)
    return environments, missing


def _refuse_if_others_can_read(path: Path) -> None:
    """A passphrase decrypts every secret of its stack (CA keys, kubeconfig): one that others may read is no secret."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SecretsSetupError(f"{path} has mode {mode:04o}: others on this machine can read the stack's passphrase; "
                                f"chmod 600 {path}")


def what_to_do(missing: Sequence[str], directory: Path) -> str:
    return ("each stack keeps its secrets with a secrets provider of its own, and these have none: "
            + ", ".join(f"{stack} ({passphrase_file(stack, directory)})" for stack in missing)
            + ". Write each one's passphrase into that file (chmod 600), or give the stack a KMS or Vault key "
            "(pulumi stack change-secrets-provider); --one-passphrase uses PULUMI_CONFIG_PASSPHRASE for every "
            "stack, for a federation one operator runs alone (README: Secrets apart).")


def use_files_only() -> None:
    """An ambient PULUMI_CONFIG_PASSPHRASE would win over a stack's PULUMI_CONFIG_PASSPHRASE_FILE: drop it."""
    os.environ.pop("PULUMI_CONFIG_PASSPHRASE", None)
    os.environ.pop("PULUMI_CONFIG_PASSPHRASE_FILE", None)
