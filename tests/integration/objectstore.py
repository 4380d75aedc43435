"""The shared state backend, as the operators will use it: a real S3 object store on loopback.

The store is the Versity S3 gateway (Apache-2.0), built by scripts/install-objectstore.sh. It keeps objects as
plain files under a directory (its posix backend), their metadata and the bucket policy in a sidecar
directory, and its users in a JSON file (its internal IAM, `--iam-dir`), all on disk. It enforces a bucket
policy whose statements name users by access key and objects by key pattern (versitygw auth/bucket_policy.go,
auth/access-control.go); once a bucket has a policy, a user is allowed only what the policy allows.

Every request is signed here with AWS Signature Version 4 from the standard library alone, so neither boto3
nor the AWS CLI is needed; users are made with the store's own admin CLI (`versitygw admin create-user`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional
from xml.etree import ElementTree
from xml.sax.saxutils import escape as xml_escape

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-objectstore.sh"
REGION = "us-east-1"
HOST = "127.0.0.1"
# The diy backend's only file outside a stack's own keys. It writes it itself only into an empty bucket
# (pulumi pkg/backend/diy/meta.go, ensurePulumiMeta), which no operator may do, so the bucket's admin writes
# it when it makes the bucket. Version 1 is the project-scoped layout (pkg/backend/diy/backend.go).
META_KEY = ".pulumi/meta.yaml"
META_BODY = b"version: 1\n"
# Stack names are per project: the diy backend's fully qualified name is organization/<project>/<stack>
# (pkg/backend/diy/backend.go, FullyQualifiedName), and its locks sit under that path.
DIY_ORGANIZATION = "organization"


# --- the binary --------------------------------------------------------------------------------------

def pinned_version() -> str:
    """The version scripts/install-objectstore.sh pins: one pin for the script and the tests."""
    found = re.search(r"^VERSITYGW_VERSION=(\S+)$", INSTALL_SCRIPT.read_text(), re.MULTILINE)
    if not found:
        raise RuntimeError(f"no VERSITYGW_VERSION= line in {INSTALL_SCRIPT}")
    return found.group(1)


def tools_cache() -> Path:
    """The install scripts' cache: ${CRDB_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crdb-federation}."""
    if os.environ.get("CRDB_TOOLS_CACHE"):
        return Path(os.environ["CRDB_TOOLS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crdb-federation"


def cached_binary() -> Optional[Path]:
    """Where scripts/install-objectstore.sh puts the store, if it is there."""
    binary = tools_cache() / "objectstore" / f"versitygw-v{pinned_version()}" / "bin" / "versitygw"
    return binary if os.access(binary, os.X_OK) else None


# --- Signature Version 4 -----------------------------------------------------------------------------

def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def _query(query: dict[str, str]) -> str:
    # One encoding for the signature and the request line, so the store recomputes the same signature.
    return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed_headers(method: str, path: str, query: dict[str, str], body: bytes, host: str, access: str,
                   secret: str, extra: Optional[dict[str, str]] = None,
                   now: Optional[datetime.datetime] = None) -> dict[str, str]:
    """The headers that authenticate one S3 request (AWS Signature Version 4, service `s3`), extra ones
    included: the store refuses an x-amz-* header left out of the signature."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    headers = {**{k.lower(): v for k, v in (extra or {}).items()},
               "host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
    names = ";".join(sorted(headers))
    canonical = "\n".join([
        method, _quote(path, safe="/-_.~"), _query(query),
        "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), names, payload])
    scope = f"{day}/{REGION}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = b"AWS4" + secret.encode()
    for part in (day, REGION, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={names}, "
                                f"Signature={signature}")
    return headers


# --- a small S3 client -------------------------------------------------------------------------------

class S3Error(Exception):
    """A refusal from the store, with its own words: the HTTP status, the S3 error code and message."""

    def __init__(self, status: int, code: str, message: str, body: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.body = status, code, message, body


def _error_of(status: int, body: bytes) -> S3Error:
    text = body.decode(errors="replace")
    try:
        tree = ElementTree.fromstring(text)
        return S3Error(status, tree.findtext("{*}Code") or "", tree.findtext("{*}Message") or "", text)
    except ElementTree.ParseError:
        return S3Error(status, "", text, text)


@dataclass
class S3Client:
    """One user's view of the store: every request signed with that user's key pair."""
    port: int
    access: str
    secret: str = field(repr=False)

    def request(self, method: str, bucket: str, key: str = "", query: Optional[dict[str, str]] = None,
                body: bytes = b"", headers: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
        path = f"/{bucket}" + (f"/{key}" if key else "")
        query = query or {}
        all_headers = signed_headers(method, path, query, body, f"{HOST}:{self.port}", self.access, self.secret,
                                     headers)
        target = _quote(path, safe="/-_.~") + (f"?{_query(query)}" if query else "")
        connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            connection.request(method, target, body=body, headers=all_headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def call(self, method: str, bucket: str, key: str = "", **kwargs) -> bytes:
        """A request that must succeed; a refusal raises S3Error with the store's own answer."""
        status, body = self.request(method, bucket, key, **kwargs)
        if status >= 300:
            raise _error_of(status, body)
        return body

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.call("PUT", bucket, key, body=body)

    def get(self, bucket: str, key: str) -> bytes:
        return self.call("GET", bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        self.call("DELETE", bucket, key)

    def copy(self, bucket: str, source: str, target: str) -> None:
        self.call("PUT", bucket, target, headers={"x-amz-copy-source": _quote(f"/{bucket}/{source}", "/-_.~")})

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under prefix (ListObjectsV2, following continuation tokens)."""
        found, token = [], None
        while True:
            query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
            tree = ElementTree.fromstring(self.call("GET", bucket, query=query))
            found += [e.text for e in tree.iterfind("{*}Contents/{*}Key")]
            token = tree.findtext("{*}NextContinuationToken")
            if not token:
                return found

    def delete_many(self, bucket: str, keys: Iterable[str]) -> list[tuple[str, str, str]]:
        """DeleteObjects: it answers 200 even when it refuses some keys, so return (key, code, message)
        for each refused one."""
        objects = "".join(f"<Object><Key>{xml_escape(k)}</Key></Object>" for k in keys)
        body = f"<Delete><Quiet>true</Quiet>{objects}</Delete>".encode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        answer = self.call("POST", bucket, query={"delete": ""}, body=body, headers={"Content-MD5": md5})
        tree = ElementTree.fromstring(answer)
        return [(e.findtext("{*}Key"), e.findtext("{*}Code"), e.findtext("{*}Message"))
                for e in tree.iterfind("{*}Error")]

    def put_policy(self, bucket: str, policy: dict) -> None:
        self.call("PUT", bucket, query={"policy": ""}, body=json.dumps(policy).encode())

    def get_policy(self, bucket: str) -> dict:
        return json.loads(self.call("GET", bucket, query={"policy": ""}))

    def delete_policy(self, bucket: str) -> None:
        self.call("DELETE", bucket, query={"policy": ""})


# --- the per-operator policy -------------------------------------------------------------------------

@dataclass(frozen=True)
class Operator:
    """One operator's object store user and the one stack it may write."""
    access: str
    secret: str = field(repr=False)
    project: str
    stack: str


def own_keys(project: str, stack: str) -> list[str]:
    """The key patterns the diy backend writes for one stack (pulumi v3.259.0 pkg/backend/diy):
    store.go StackBasePath .pulumi/stacks/<project>/<stack> plus state.go's `.json` and its `.json.bak`
    (backupTarget) and stack_tags.go's `.pulumi-tags`; store.go HistoryDir and BackupDir; lock.go
    stackLockDir .pulumi/locks/organization/<project>/<stack>/<lock id>.json. A trailing `/*` cannot reach
    another stack's keys: stack names have no `/`."""
    base = f".pulumi/stacks/{project}/{stack}"
    return [f"{base}.json", f"{base}.json.bak", f"{base}.pulumi-tags",
            f".pulumi/history/{project}/{stack}/*", f".pulumi/backups/{project}/{stack}/*",
            f".pulumi/locks/{DIY_ORGANIZATION}/{project}/{stack}/*"]


# What writing a stack takes: multipart uploads (large states) end in an AbortMultipartUpload on failure.
WRITE_ACTIONS = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def operator_policy(bucket: str, operators: Iterable[Operator]) -> dict:
    """Every operator reads the whole bucket; each writes and deletes only its own stack's keys.

    The Allow statements alone suffice on versitygw: once a bucket has a policy, it consults no ACL for a
    user, so what the policy does not allow is refused (auth/access-control.go, verifyResourceAccess). The
    Deny statements make the bucket policy the last word elsewhere too: on AWS an identity policy may allow
    what a bucket policy does not, but never what one explicitly denies. Principals are access keys,
    versitygw's names for its internal users (auth/bucket_policy_principals.go, matchFor); on AWS they are
    IAM ARNs."""
    operators = list(operators)
    everyone = [o.access for o in operators]
    arn = f"arn:aws:s3:::{bucket}"
    statements = [
        _statement("EveryOperatorReadsEveryStack", "Allow", everyone, ["s3:GetObject", "s3:ListBucket"],
                   [arn, f"{arn}/*"]),
        _statement("NoOperatorRewritesTheLayout", "Deny", everyone, WRITE_ACTIONS, [f"{arn}/{META_KEY}"]),
        _statement("NoOperatorRewritesThePolicy", "Deny", everyone,
                   ["s3:PutBucketPolicy", "s3:DeleteBucketPolicy"], [arn]),
    ]
    for o in operators:
        own = [f"{arn}/{key}" for key in own_keys(o.project, o.stack)]
        statements.append(_statement(f"{_sid(o.stack)}WritesItsOwnStack", "Allow", [o.access], WRITE_ACTIONS, own))
        others = [access for access in everyone if access != o.access]
        if others:
            statements.append(_statement(f"NoOtherOperatorWrites{_sid(o.stack)}", "Deny", others, WRITE_ACTIONS, own))
    return {"Version": "2012-10-17", "Statement": statements}


def _statement(sid: str, effect: str, principals: list[str], actions: list[str], resources: list[str]) -> dict:
    return {"Sid": sid, "Effect": effect, "Principal": {"AWS": principals}, "Action": actions,
            "Resource": resources}


def _sid(stack: str) -> str:
    # A statement id is alphanumeric on AWS.
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", stack) if part)


# --- the store's process -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class ObjectStore:
    """One versitygw process on 127.0.0.1 with everything on disk under directory: objects in data/,
    their metadata and bucket policies in meta/ (a sidecar: no extended attributes needed), users in iam/."""
    binary: Path
    directory: Path
    port: int = 0
    root: S3Client = field(init=False)
    _process: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)
    _root_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 20) -> "ObjectStore":
        for sub in ("data", "meta", "iam"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.root = S3Client(self.port, "crdb-root", self._root_secret)
        log = open(self.directory / "versitygw.log", "ab")
        # Root credentials through the environment: never on a command line others can read.
        env = {**os.environ, "ROOT_ACCESS_KEY_ID": self.root.access, "ROOT_SECRET_ACCESS_KEY": self._root_secret}
        self._process = subprocess.Popen(
            [str(self.binary), "--port", f"{HOST}:{self.port}", "--iam-dir", str(self.directory / "iam"),
             "posix", "--sidecar", str(self.directory / "meta"), str(self.directory / "data")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"versitygw exited ({self._process.returncode}): "
                                   + (self.directory / "versitygw.log").read_text()[-2000:])
            try:
                if self.root.request("GET", "")[0] == 200:  # ListBuckets as root
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"versitygw did not answer on {self.endpoint} within {timeout:.0f} s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> "ObjectStore":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- what the bucket's admin does, with root's credentials ---

    def create_user(self, access: str, secret: str) -> None:
        """A plain `user` (not `userplus`): it cannot make buckets, and reaches this one only through its
        policy (versitygw auth/access-control.go, VerifyCreateBucketAccess)."""
        env = {**os.environ, "ADMIN_ACCESS_KEY_ID": self.root.access, "ADMIN_SECRET_ACCESS_KEY": self._root_secret,
               "ADMIN_ENDPOINT_URL": self.endpoint}
        done = subprocess.run([str(self.binary), "admin", "create-user", "--access", access, "--secret", secret,
                               "--role", "user"], env=env, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"versitygw admin create-user {access}: {done.stdout}{done.stderr}")

    def provision(self, bucket: str, operators: Iterable[Operator]) -> dict:
        """The shared bucket: made, its diy layout fixed (meta.yaml), every operator a user of its own, and the
        per-operator policy applied. Returns the policy, as the store holds it."""
        operators = list(operators)
        self.root.call("PUT", bucket)
        self.root.put(bucket, META_KEY, META_BODY)
        for o in operators:
            self.create_user(o.access, o.secret)
        self.root.put_policy(bucket, operator_policy(bucket, operators))
        return self.root.get_policy(bucket)

    def client(self, operator: Operator) -> S3Client:
        return S3Client(self.port, operator.access, operator.secret)

    def backend_url(self, bucket: str) -> str:
        return backend_url(bucket, self.endpoint)


def backend_url(bucket: str, endpoint: str) -> str:
    """PULUMI_BACKEND_URL for an S3-compatible store. gocloud.dev's s3blob, at the version pulumi v3.259.0
    requires (v0.46.1-0.20260810195832-b5401c07b5f1), reads `endpoint` and `region` (aws/aws.go,
    V2ConfigFromURLParams) and `use_path_style` (blob/s3blob/s3blob.go; `s3ForcePathStyle` is its older
    name). The scheme in `endpoint` decides http or https; `disableSSL` is only a v1-era name that pulumi
    translates (pkg/backend/diy/backend.go, translateLegacyS3Params)."""
    query = urllib.parse.urlencode({"endpoint": endpoint, "use_path_style": "true", "region": REGION})
    return f"s3://{bucket}?{query}"


# Variables that would hand a Pulumi process credentials or a backend other than the operator's own.
_FOREIGN = re.compile(r"^(AWS_.*|PULUMI_BACKEND_URL|PULUMI_ACCESS_TOKEN|PULUMI_CONFIG_PASSPHRASE.*)$")


def pulumi_env(base: dict[str, str], store_endpoint: str, bucket: str, operator: Operator) -> dict[str, str]:
    """The environment of a Pulumi CLI process acting as one operator: base without any other AWS or backend
    credentials, plus this operator's key pair and the shared backend's URL. No shared AWS config files
    (another user's profile must not leak in) and no instance metadata lookup (it would dial 169.254.169.254)."""
    env = {k: v for k, v in base.items() if not _FOREIGN.match(k)}
    env.update({
        "PULUMI_BACKEND_URL": backend_url(bucket, store_endpoint),
        "AWS_ACCESS_KEY_ID": operator.access,
        "AWS_SECRET_ACCESS_KEY": operator.secret,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
    })
    return env
