"""boto3 sessions and clients for publishing, and botocore failures told as one sentence.

Credentials and region come from boto3's normal chain (environment, ``AWS_PROFILE`` or
``--profile``, the shared config files, SSO...). The endpoint is a parameter (tests and the
bench point it at a moto server on loopback); boto3 also honours ``AWS_ENDPOINT_URL`` itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.parsers import ResponseParserError

from bakery.errors import BakeError

EBS_OPERATIONS = frozenset({"StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot"})
ACCESS_DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}
)
BAD_CREDENTIALS = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "InternalError",
        "InternalServerError",
        "InternalServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE (or pass --profile), set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, or run `aws configure`"
)


def make_session(profile: str | None = None, region: str | None = None) -> boto3.Session:
    """A boto3 session from the normal chain, optionally for a named profile."""
    try:
        return boto3.Session(profile_name=profile, region_name=region)
    except ProfileNotFound:
        raise BakeError(
            f"AWS profile {profile!r} is not in the AWS config files: list them with `aws configure list-profiles`"
        ) from None


def known_regions(session: boto3.Session) -> set[str]:
    """Every EC2 region botocore knows, in every partition (read from botocore's data, no network)."""
    return {r for p in session.get_available_partitions() for r in session.get_available_regions("ec2", p)}


def check_region(session: boto3.Session, region: str) -> str:
    """``region`` if botocore knows it, else a one-sentence error."""
    if region not in known_regions(session):
        raise BakeError(
            f"unknown AWS region {region!r}: use one such as us-east-1 or eu-west-1 "
            "(or upgrade boto3 if the region is new)"
        )
    return region


def resolve_region(session: boto3.Session, region: str | None) -> str:
    """``--region``, else the session's (AWS_REGION, AWS_DEFAULT_REGION, the profile), checked."""
    name = region or session.region_name
    if not name:
        raise BakeError(
            "no AWS region given: pass --region or set AWS_REGION (or a region in your AWS profile)"
        )
    return check_region(session, name)


def check_credentials(session: boto3.Session) -> None:
    """Fail early, in one sentence, when the chain finds no credentials at all."""
    try:
        found = session.get_credentials()
    except BotoCoreError as exc:
        raise BakeError(
            f"AWS credentials could not be loaded ({exc}): fix the profile or the environment"
        ) from None
    if found is None:
        raise BakeError(NO_CREDENTIALS)


def client(
    session: boto3.Session,
    service: str,
    region: str,
    endpoint_url: str | None,
    *,
    retries: int = 5,
    pool: int = 10,
) -> Any:
    """A client for ``service``; ``retries=1`` leaves retrying to the caller (the block uploader)."""
    config = Config(
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=pool,
        retries={"mode": "standard", "total_max_attempts": retries},
        s3={"addressing_style": "path"} if endpoint_url else None,
    )
    return session.client(service, region_name=region, endpoint_url=endpoint_url, config=config)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, else ''."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, 5xx, a dropped or refused connection, a garbled answer."""
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return error_code(exc) in TRANSIENT_CODES or status == 429 or status >= 500
    return isinstance(exc, BotoConnectionError | HTTPClientError | ResponseParserError)


def _message(exc: ClientError) -> str:
    text = str(exc.response.get("Error", {}).get("Message", "") or "").strip().splitlines()
    return text[0].rstrip(".") if text else ""


def describe(exc: BaseException, action: str) -> str:
    """One sentence that names what failed and what to do about it."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return NO_CREDENTIALS
    if isinstance(exc, EndpointConnectionError | BotoConnectionError | ConnectionClosedError):
        where = getattr(exc, "kwargs", {}).get("endpoint_url", "the AWS endpoint")
        return f"{action} failed: cannot reach {where}: check the network, --endpoint-url or AWS_ENDPOINT_URL"
    if isinstance(exc, ResponseParserError):
        return (
            f"{action} failed: the endpoint's answer is not an AWS response "
            "(a local emulator such as moto may not implement this call)"
        )
    if isinstance(exc, ClientError):
        code, message = error_code(exc), _message(exc)
        if code in ACCESS_DENIED and exc.operation_name in EBS_OPERATIONS:
            return (
                f"access to the EBS direct APIs is denied ({code} on {exc.operation_name}): "
                "publish with --method import --bucket BUCKET instead, or grant ebs:StartSnapshot, "
                "ebs:PutSnapshotBlock and ebs:CompleteSnapshot"
            )
        if code in ACCESS_DENIED:
            return f"{action} was denied ({code}: {message}): grant that permission to these AWS credentials"
        if code in BAD_CREDENTIALS:
            return f"AWS rejected the credentials during {action} ({code}): refresh them (aws configure / aws sso login)"
        if code == "OptInRequired":
            return f"{action} failed: the region is not enabled for this account: enable it or pick another --region"
        return f"{action} failed ({code}: {message})"
    if isinstance(exc, BakeError):
        return str(exc)
    return f"{action} failed: {exc}"


@contextlib.contextmanager
def explained(action: str) -> Iterator[None]:
    """Turn botocore failures inside the block into a one-sentence BakeError."""
    try:
        yield
    except BakeError:
        raise
    except (BotoCoreError, ClientError, ResponseParserError) as exc:
        raise BakeError(describe(exc, action)) from exc
