"""Register a snapshot as an AMI, find one by name (idempotent publishing), copy it to other regions.

The AMI is what talos-os needs on EC2: x86_64, HVM, ENA and SR-IOV networking, UEFI when the
instance type has it (legacy BIOS otherwise: the image boots both), IMDSv2 only, and a gp3 root
volume at /dev/xvda that goes away with the instance.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from botocore.exceptions import ClientError

from bakery.errors import BakeError
from platforms.aws.clients import error_code, explained, transient
from platforms.aws.retrying import RetryPolicy, wait_until
from talos_os.lib.retry import retry

ROOT_DEVICE = "/dev/xvda"
NAME_RULE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
FAILED_STATES = ("failed", "error", "disabled", "deregistered")


def check_name(name: str) -> str:
    """AMI names: 3-128 characters of letters, digits, spaces and ( ) [ ] . / - ' @ _."""
    if not NAME_RULE.match(name):
        raise BakeError(
            f"AMI name {name!r} is not allowed: use 3-128 letters, digits, spaces or ( ) [ ] . / - ' @ _"
        )
    return name


def register_params(name: str, snapshot_id: str, size_gib: int, description: str) -> dict[str, Any]:
    """The RegisterImage request (pure: the dry run prints it, a test checks it on the wire)."""
    return {
        "Name": name,
        "Description": description,
        "Architecture": "x86_64",
        "VirtualizationType": "hvm",
        "EnaSupport": True,
        "SriovNetSupport": "simple",
        "BootMode": "uefi-preferred",
        "ImdsSupport": "v2.0",
        "RootDeviceName": ROOT_DEVICE,
        "BlockDeviceMappings": [
            {
                "DeviceName": ROOT_DEVICE,
                "Ebs": {
                    "SnapshotId": snapshot_id,
                    "VolumeSize": size_gib,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                },
            }
        ],
    }


def find_image(ec2: Any, name: str) -> dict[str, Any] | None:
    """This account's usable image called ``name`` in the client's region, if there is one.

    A failed or disabled one still holds the name, and reusing it would publish an image that
    cannot launch: that is an error that says how to free the name."""
    with explained("EC2 DescribeImages"):
        images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])["Images"]
    live = [i for i in images if i.get("State") != "deregistered"]
    if not live:
        return None
    image = dict(live[0])
    if image.get("State") in FAILED_STATES:
        raise BakeError(
            f"AMI {name!r} ({image['ImageId']}) is {image.get('State')}: deregister it with "
            f"`aws ec2 deregister-image --image-id {image['ImageId']}` or choose another --name"
        )
    return image


def register(ec2: Any, params: dict[str, Any]) -> str | None:
    """Register the image; None when an image of that name appeared meanwhile (a concurrent publish)."""
    with explained("EC2 RegisterImage"):
        try:
            return str(ec2.register_image(**params)["ImageId"])
        except ClientError as exc:
            if error_code(exc) == "InvalidAMIName.Duplicate":
                return None
            raise


def tag(ec2: Any, resource_ids: list[str], tags: list[dict[str, str]], policy: RetryPolicy) -> None:
    """Tag resources, retrying while EC2 does not see a just-created one yet (eventual consistency)."""

    def not_yet_visible(exc: BaseException) -> bool:
        return error_code(exc).endswith(".NotFound") or transient(exc)

    with explained("EC2 CreateTags"):
        retry(
            lambda: ec2.create_tags(Resources=resource_ids, Tags=tags),
            attempts=policy.attempts,
            base=policy.base,
            cap=policy.cap,
            retry_if=not_yet_visible,
        )


def wait_available(ec2: Any, image_id: str, *, timeout: float, poll: float) -> None:
    """Poll until the image is ``available``; ``failed`` is an error."""

    def available() -> bool:
        with explained("EC2 DescribeImages"):
            try:
                images = ec2.describe_images(ImageIds=[image_id])["Images"]
            except ClientError as exc:
                if error_code(exc) == "InvalidAMIID.NotFound":
                    return False
                raise
        state = images[0].get("State") if images else "pending"
        if state in FAILED_STATES:
            reason = (images[0].get("StateReason") or {}).get("Message", "") if images else ""
            raise BakeError(f"image {image_id} ended in state {state!r} ({reason}): publish again")
        return state == "available"

    wait_until(available, what=f"image {image_id}", timeout=timeout, poll=poll)


def copy_token(image_id: str, region: str) -> str:
    """The same source image and destination always give the same token: a retried copy is one copy."""
    return hashlib.sha256(f"{image_id}:{region}".encode()).hexdigest()[:64]


def copy(ec2_dest: Any, *, source_region: str, image_id: str, name: str, description: str) -> str:
    """Start copying ``image_id`` into the destination client's region; the new image id."""
    with explained("EC2 CopyImage"):
        copied = ec2_dest.copy_image(
            SourceImageId=image_id,
            SourceRegion=source_region,
            Name=name,
            Description=description,
            ClientToken=copy_token(image_id, ec2_dest.meta.region_name),
        )
    return str(copied["ImageId"])
