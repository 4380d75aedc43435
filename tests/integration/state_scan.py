"""What a reader of the state backend sees without a stack's passphrase: every object of every stack, walked for
anything that grants access in clear (issue 29: no private key, token, password, kubeconfig, cloud-init user data
or licence). Secrets the engine encrypted are `{"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
"ciphertext": …}` objects (pulumi sdk/go/common/resource/properties.go, SecretSig), and never match.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

# What grants access, by its own shape rather than by the field's name (names are the program's to choose).
IN_CLEAR = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    "k3s token": re.compile(r"\bK10[0-9a-f]{64}::"),
    "kubeconfig credential": re.compile(r"\b(?:client-key-data|token):\s*\S"),
    "cloud-init user data": re.compile(r"^#cloud-config", re.M),
    "CockroachDB licence": re.compile(r"\bcrl-0-[A-Za-z0-9+/=]{20,}"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*=\s*\S"),
}
SECRET_SIG = "4dabf18193072939515e22adb298388d"
# Values the stack's config keeps as secrets, which must never appear in clear.
SECRET_FIELD = re.compile(r"(?i)(password|passphrase|secret|token|privatekey|private_key|licen[cs]e)")


@dataclass(frozen=True)
class Finding:
    path: str  # the object (file or key) in the backend
    where: str  # the JSON path inside it
    what: str  # which kind of credential

    def line(self) -> str:
        return f"{self.path}: {self.where}: {self.what} in clear"


def _walk(value: Any, where: str = "$", key: str = "") -> Iterator[tuple[str, Any, str]]:
    """Every scalar of a JSON document with its path and the key it sits under (a list's items, its key's)."""
    if isinstance(value, dict):
        if SECRET_SIG in value:  # an encrypted secret: nothing to read
            return
        for name, item in value.items():
            yield from _walk(item, f"{where}.{name}", name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]", key)
    else:
        yield where, value, key


def _bookkeeping(where: str, key: str, value: str) -> bool:
    """What the engine and the manifests write under a secret-sounding name that is no secret: the names of secret
    outputs (a resource's additionalSecretOutputs, a StackReference's secretOutputNames), a dependency's URN
    (propertyDependencies), a Kubernetes volume's reference to a Secret by its name (secretName), "set" for an
    environment variable (the update's environment in history), an encrypted config value ("v1:…"), a boolean."""
    return (any(f".{names}[" in where for names in ("additionalSecretOutputs", "secretOutputNames"))
            or key == "secretName" or value.startswith(("urn:pulumi:", "v1:"))
            or value in ("set", "[secret]", "true", "false"))


def scan_document(path: str, text: str) -> list[Finding]:
    """Findings in one object: a JSON document walked leaf by leaf, anything else read as text (pure)."""
    try:
        document = json.loads(text)
    except ValueError:
        return [Finding(path, "(text)", what) for what, pattern in IN_CLEAR.items() if pattern.search(text)]
    found = []
    for where, value, key in _walk(document):
        if not isinstance(value, str) or not value:
            continue
        for what, pattern in IN_CLEAR.items():
            if pattern.search(value):
                found.append(Finding(path, where, what))
        if SECRET_FIELD.search(str(key)) and not _bookkeeping(where, str(key), value):
            found.append(Finding(path, where, f"a value under {key!r}"))
    return found


def scan_tree(root: Path) -> list[Finding]:
    """Every object of a file backend (.pulumi/…), as an S3 reader lists them."""
    found = []
    for path in sorted(p for p in (root / ".pulumi").rglob("*") if p.is_file()):
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # gzip'd checkpoints (PULUMI_DIY_BACKEND_GZIP) are read by the S3 scan
            continue
        found += scan_document(str(path.relative_to(root)), text)
    return found
