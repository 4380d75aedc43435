"""An s3:// diy backend as the Pulumi CLI opens it, reduced to the four calls the stack's lock needs.

pulumi v3.259.0 opens such a URL in three steps, imitated here: pkg/backend/diy/backend.go massageBlobPath ->
translateLegacyS3Params rewrites v1-era query parameters; gocloud.dev (the version pulumi pins,
v0.46.1-0.20260810195832-b5401c07b5f1) opens the bucket: blob/blob.go applyPrefixParam takes `prefix`,
blob/s3blob/s3blob.go URLOpener.OpenBucketURL takes the S3 options and aws/aws.go V2ConfigFromURLParams the
client's; then backend.go newDIYBackend prefixes every key with the URL's path (blob.PrefixedBucket). The
credentials are the operator's own, from the AWS SDK's default chain (environment, AWS_PROFILE or `profile`,
shared config files), which boto3 resolves as the Go SDK does.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit, urlunsplit

SCHEME = "s3"

# Go's strconv.ParseBool, which gocloud and pulumi parse every flag with.
_TRUE, _FALSE = {"1", "t", "T", "TRUE", "true", "True"}, {"0", "f", "F", "FALSE", "false", "False"}

# Query parameters the CLI accepts that change nothing for the four calls here: aws/aws.go ignores `awssdk`, and
# `rate_limiter_capacity` only throttles retries.
_IGNORED = {"awssdk", "rate_limiter_capacity"}
# Everything else gocloud accepts (role, anonymous, hostname_immutable, dualstack, fips, accelerate, key) the tool
# does not imitate: such a backend is refused (UnsupportedBackend), and its lock is left to the CLI.
_KNOWN = {"endpoint", "region", "profile", "prefix", "use_path_style", "s3ForcePathStyle", "disable_https",
          "request_checksum_calculation", "response_checksum_validation", "ssetype", "kmskeyid", *_IGNORED}


class UnsupportedBackend(ValueError):
    """An s3:// URL with a query parameter the tool cannot honour as the CLI does."""


@dataclass(frozen=True)
class Location:
    """Where an s3:// backend keeps its objects and how to reach them (pure data, from parse())."""

    url: str  # the URL as the CLI uses it, after translateLegacyS3Params: its lock URLs are built from it
    bucket: str
    prefix: str = ""  # gocloud's `prefix` parameter, then the URL's path (with a trailing "/")
    path_prefix: str = ""  # the URL's path alone: the part of `prefix` the CLI's lock URLs show
    endpoint: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None
    path_style: bool = False
    disable_https: bool = False
    checksums: dict[str, str] = field(default_factory=dict)  # botocore Config's request/response checksum modes
    encryption: dict[str, str] = field(default_factory=dict)  # PutObject's ServerSideEncryption, SSEKMSKeyId


def _bool(name: str, value: str) -> bool:
    if value not in _TRUE | _FALSE:
        raise UnsupportedBackend(f"invalid value for query parameter {name!r}: {value!r}")
    return value in _TRUE


def translate_legacy(url: str) -> str:
    """pulumi backend.go translateLegacyS3Params: `disableSSL` (its last value) becomes `disable_https`; an
    endpoint without a scheme gets http:// or https:// by it; with an endpoint, `request_checksum_calculation`
    defaults to when_required unless set in the URL or AWS_REQUEST_CHECKSUM_CALCULATION. The URL is returned
    unchanged when nothing changed, else with its query re-encoded sorted, as Go's url.Values.Encode does."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    changed = False
    disable_ssl = False
    if "disableSSL" in query:
        disable_ssl = _bool("disableSSL", query.pop("disableSSL")[-1])
        query["disable_https"] = [str(disable_ssl).lower()]
        changed = True
    endpoint = query.get("endpoint", [""])[0]
    if endpoint:
        if "://" not in endpoint:
            query["endpoint"] = [("http" if disable_ssl else "https") + "://" + endpoint]
            changed = True
        if not query.get("request_checksum_calculation", [""])[0] and not os.environ.get(
                "AWS_REQUEST_CHECKSUM_CALCULATION"):
            query["request_checksum_calculation"] = ["when_required"]
            changed = True
    if not changed:
        return url
    return urlunsplit(parts._replace(query=urlencode(sorted(query.items()), doseq=True)))


def parse(url: str) -> Optional[Location]:
    """The backend an s3:// URL names (pure but for AWS_REQUEST_CHECKSUM_CALCULATION, see translate_legacy);
    None for another scheme. The host is the bucket (s3blob.go OpenBucketURL: u.Host). Parameters take their
    first value, as gocloud's q.Get and V2ConfigFromURLParams (values[0]) do."""
    if urlsplit(url).scheme != SCHEME:
        return None
    url = translate_legacy(url)
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise UnsupportedBackend(f"the tool does not hold a stack's lock on a backend with {', '.join(unknown)} "
                                 f"in its URL ({parts.scheme}://{parts.netloc})")
    # backend.go newDIYBackend: bucketSubDir, the URL's path without leading "/", with a trailing one.
    path_prefix = unquote(parts.path).lstrip("/")
    if path_prefix and not path_prefix.endswith("/"):
        path_prefix += "/"
    # s3blob.go: use_path_style, else its v1 name s3ForcePathStyle (the loop lets the latter have the last word).
    path_style = False
    for name in ("use_path_style", "s3ForcePathStyle"):
        if query.get(name):
            path_style = _bool(name, query[name])
    checksums = {k: query[k] for k in ("request_checksum_calculation", "response_checksum_validation")
                 if query.get(k)}
    encryption = {}
    if query.get("ssetype"):
        encryption["ServerSideEncryption"] = query["ssetype"]
    if query.get("kmskeyid"):
        encryption["SSEKMSKeyId"] = query["kmskeyid"]
    disable_https = _bool("disable_https", query["disable_https"]) if query.get("disable_https") else False
    return Location(url=url, bucket=parts.netloc, prefix=query.get("prefix", "") + path_prefix,
                    path_prefix=path_prefix, endpoint=query.get("endpoint") or None,
                    region=query.get("region") or None, profile=query.get("profile") or None, path_style=path_style,
                    disable_https=disable_https, checksums=checksums, encryption=encryption)


def lock_url(location: Location, key: str) -> str:
    """The URL the CLI names a lock object by (pulumi lock.go lockURLForError): the backend's URL, as massaged,
    with the key joined to its path (Go's URL.String puts a "/" between host and a relative path)."""
    parts = urlsplit(location.url)
    path = "/" + posixpath.join(location.path_prefix, key)
    return urlunsplit(parts._replace(path=quote(path, safe="/-_.~!$&'()*+,;=:@")))


def key_of(location: Location, url: str) -> Optional[str]:
    """The key, relative to the backend, of a lock URL the CLI printed (the inverse of lock_url); None for a URL
    of another bucket or outside the backend's path."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME or parts.netloc != location.bucket:
        return None
    path = unquote(parts.path).lstrip("/")
    return path[len(location.path_prefix):] if path.startswith(location.path_prefix) else None


@dataclass
class Bucket:
    """The backend's objects under its prefix, with keys relative to it, through boto3."""

    location: Location
    _client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._client is None:
            import boto3
            from botocore.config import Config

            location = self.location
            # profile: aws.go config.WithSharedConfigProfile; like it, a named profile outranks AWS_* keys in the
            # environment (botocore drops its environment provider for an explicit profile).
            session = boto3.Session(profile_name=location.profile)
            # Without use_path_style the Go SDK asks the S3 endpoint rules both SDKs share (virtual-hosted, path
            # for an IP endpoint or a bucket name no host can carry): botocore's "virtual" does, its "auto" takes
            # path style for any custom endpoint. The standard retryer is aws.go's retry.NewStandard (3 attempts).
            config = Config(s3={"addressing_style": "path" if location.path_style else "virtual"},
                            retries={"mode": "standard"}, **location.checksums)
            # The Go SDK reads AWS_REGION, botocore only AWS_DEFAULT_REGION (and both read the profile's).
            region = location.region or os.environ.get("AWS_REGION") or None
            self._client = session.client("s3", endpoint_url=location.endpoint, region_name=region,
                                          use_ssl=not location.disable_https, config=config)

    def _key(self, key: str) -> str:
        return self.location.prefix + key

    def list(self, prefix: str) -> list[str]:
        """The keys directly under prefix, not those of its "subdirectories" (pulumi bucket.go listBucket:
        Delimiter "/")."""
        keys: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self._key(prefix), Delimiter="/")
        for page in pages:
            keys += [o["Key"][len(self.location.prefix):] for o in page.get("Contents", [])]
        return keys

    def get(self, key: str) -> bytes:
        """FileNotFoundError for a key that is not there (deleted since it was listed), as a file's read says."""
        try:
            return self._client.get_object(Bucket=self.location.bucket, Key=self._key(key))["Body"].read()
        except self._client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.url(key)) from None

    def put(self, key: str, body: bytes) -> None:
        self._client.put_object(Bucket=self.location.bucket, Key=self._key(key), Body=body,
                                **self.location.encryption)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.location.bucket, Key=self._key(key))

    def url(self, key: str) -> str:
        return lock_url(self.location, key)

    def key_of(self, url: str) -> Optional[str]:
        return key_of(self.location, url)


def open_bucket(url: str) -> Optional[Bucket]:
    """The bucket of an s3:// backend URL; None for another scheme; UnsupportedBackend for a URL the tool cannot
    honour."""
    location = parse(url)
    return None if location is None else Bucket(location)

