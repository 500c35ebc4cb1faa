"""AWS host half: publish a raw image as an AMI (``talos-bake aws --ami``).

``publish_ami`` reads top to bottom: check the request offline (name, image, region) -> find an
AMI of that name (publishing is idempotent: an existing one is returned, nothing is uploaded) ->
upload the image into a snapshot (EBS direct APIs, or S3 + ImportSnapshot) -> register it ->
tag -> wait until available -> copy to the other regions. Until the AMI is available a failure
removes what this run created (image, snapshot); a failed copy leaves the primary AMI, which a
re-run finds and copies again. ``plan`` is the dry run: it reads the image, never the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from bakery.errors import BakeError
from bakery.progress import Progress
from platforms.aws import ami
from platforms.aws.blocks import BLOCK_SIZE, count_zero_blocks, scan
from platforms.aws.clients import (
    check_credentials,
    check_region,
    client,
    describe,
    make_session,
    resolve_region,
)
from platforms.aws.retrying import RetryPolicy
from platforms.aws.s3import import S3Import
from platforms.aws.snapshot import SnapshotUpload, UploadStats, delete_snapshot, volume_gib
from talos_os import __version__

METHODS = ("ebs", "import")


@dataclass(frozen=True)
class AmiRequest:
    """Everything a publish depends on; region and credentials default to boto3's chain."""

    image: Path
    name: str
    region: str | None = None
    copy_to: tuple[str, ...] = ()
    method: str = "ebs"
    bucket: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    workers: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    poll: float = 5.0
    timeout: float = 3600.0


@dataclass
class AmiResult:
    """The AMI (new or found), where it is, and what the upload did."""

    image_id: str
    region: str
    existed: bool = False
    snapshot_id: str | None = None
    stats: UploadStats | None = None
    copies: dict[str, str] = field(default_factory=dict)


def description(req: AmiRequest) -> str:
    return f"talos-os {__version__} ({req.name})"


def tags(req: AmiRequest) -> list[dict[str, str]]:
    """Tags on the snapshot and on every image: what it is and which release made it."""
    return [
        {"Key": "Name", "Value": req.name},
        {"Key": "talos-os:version", "Value": __version__},
        {"Key": "talos-os:image", "Value": req.image.name},
        {"Key": "talos-os:published-by", "Value": "talos-bake"},
    ]


def check_request(req: AmiRequest, *, need_image: bool = True) -> None:
    """Offline checks, each failing with one sentence."""
    ami.check_name(req.name)
    if req.method not in METHODS:
        raise BakeError(f"unknown upload method {req.method!r}: use ebs or import")
    if req.method == "import" and not req.bucket:
        raise BakeError(
            "--method import needs --bucket: an S3 bucket in the region that the vmimport role can read"
        )
    if need_image and not req.image.is_file():
        raise BakeError(
            f"image {req.image} not found: bake it with `talos-bake raw --platform aws` or drop --image"
        )
    if need_image and req.image.stat().st_size == 0:
        raise BakeError(f"image {req.image} is empty: bake it again")


def regions(session: boto3.Session, req: AmiRequest) -> tuple[str, list[str]]:
    """The primary region and the distinct other regions to copy to, all checked."""
    region = resolve_region(session, req.region)
    others = [check_region(session, r) for r in dict.fromkeys(r.strip() for r in req.copy_to if r.strip())]
    return region, [r for r in others if r != region]


def plan_record(
    req: AmiRequest,
    *,
    session: boto3.Session | None = None,
    bake_note: str | None = None,
    disk_size: int | None = None,
) -> dict[str, Any]:
    """What ``publish_ami`` would do, as plain values (``-o json``); reads the image (if there is one) and
    nothing remote. With ``bake_note`` the image does not exist yet (it would be baked, ``disk_size`` bytes)."""
    check_request(req, need_image=bake_note is None)
    region, others = regions(session or make_session(req.profile), req)
    gib: int | None = volume_gib(disk_size) if disk_size else None
    image: dict[str, Any] = {"path": req.image.resolve()}
    upload: dict[str, Any] = {"method": req.method, "region": region}
    if bake_note is None:
        found = scan(req.image)
        gib = volume_gib(found.size)
        zeros = count_zero_blocks(found)
        data = len(found.candidates) - zeros
        image.update(size_bytes=found.size, blocks=found.total_blocks, block_bytes=BLOCK_SIZE)
        if req.method == "ebs":
            upload.update(
                snapshot_gib=gib,
                data_blocks=data,
                data_bytes=data * BLOCK_SIZE,
                hole_blocks=found.hole_blocks,
                zero_blocks=zeros,
                workers=req.workers,
            )
    else:
        image.update(baked_first=True, size_bytes=disk_size)
    if req.method == "import":
        upload.update(bucket=req.bucket, prefix="talos-os-import/")
    return {
        "dry_run": True,
        "endpoint": req.endpoint_url,
        "name": req.name,
        "region": region,
        "image": image,
        "upload": upload,
        "register": {
            "architecture": "x86_64",
            "virtualization": "hvm",
            "ena": True,
            "sriov": "simple",
            "boot_mode": "uefi-preferred",
            "imds": "v2.0",
            "root_device": ami.ROOT_DEVICE,
            "volume_type": "gp3",
            "volume_gib": gib,
            "delete_on_termination": True,
        },
        "tags": {t["Key"]: t["Value"] for t in tags(req)},
        "copy_to": others,
    }


def plan_lines(record: dict[str, Any], bake_note: str | None = None) -> list[str]:
    """The plan of :func:`plan_record` for people (``bake_note``: how an image not there yet is made)."""
    image, upload, reg, region = record["image"], record["upload"], record["register"], record["region"]
    gib = reg["volume_gib"] if reg["volume_gib"] is not None else "?"
    lines = ["plan (dry run: nothing is uploaded, registered or copied):"]
    if record["endpoint"]:
        lines.append(f"  endpoint: {record['endpoint']}")
    if image.get("baked_first"):
        lines.append(f"  image: {bake_note or 'baked first into ' + str(image['path'])}")
    else:
        lines.append(
            f"  image: {image['path']} ({image['size_bytes']} bytes = {image['blocks']} blocks of "
            f"{image['block_bytes'] >> 10} KiB)"
        )
        if upload["method"] == "ebs":
            skipped = upload["hole_blocks"] + upload["zero_blocks"]
            lines.append(
                f"  upload: EBS direct APIs into a new {gib} GiB snapshot in {region}: {upload['data_blocks']} "
                f"blocks ({upload['data_bytes'] / 2**20:.1f} MiB) to send, {upload['hole_blocks']} hole + "
                f"{upload['zero_blocks']} zero blocks skipped ({skipped / max(1, image['blocks']):.1%}), "
                f"{upload['workers']} in parallel"
            )
    if upload["method"] == "import":
        lines.append(
            f"  upload: the whole image to s3://{upload['bucket']}/{upload['prefix']} in {region}, then EC2 "
            "ImportSnapshot (the S3 object is deleted afterwards)"
        )
    lines += [
        f"  register: AMI {record['name']!r} in {region}: {reg['architecture']}, {reg['virtualization']}, ENA, "
        f"sriov {reg['sriov']}, boot mode {reg['boot_mode']}, IMDS {reg['imds']} only, root {reg['root_device']} "
        f"{reg['volume_type']} {gib} GiB delete-on-termination",
        "  tags (snapshot and image): " + ", ".join(f"{k}={v}" for k, v in record["tags"].items()),
    ]
    if record["copy_to"]:
        lines.append(f"  copy to: {', '.join(record['copy_to'])}")
    lines.append(
        f"  an AMI already named {record['name']!r} in a region is reported and reused, not duplicated"
    )
    return lines


def plan(
    req: AmiRequest,
    *,
    session: boto3.Session | None = None,
    bake_note: str | None = None,
    disk_size: int | None = None,
) -> list[str]:
    """What ``publish_ami`` would do, as lines (see :func:`plan_record`)."""
    return plan_lines(plan_record(req, session=session, bake_note=bake_note, disk_size=disk_size), bake_note)


def result_record(req: AmiRequest, result: AmiResult) -> dict[str, Any]:
    """What ``publish_ami`` did, as plain values (``-o json``)."""
    stats = result.stats
    return {
        "image_id": result.image_id,
        "name": req.name,
        "region": result.region,
        "regions": [result.region, *result.copies],
        "existed": result.existed,
        "snapshot_id": result.snapshot_id,
        "copies": dict(result.copies),
        "image": req.image.resolve(),
        "method": req.method,
        "upload": None
        if stats is None
        else {
            "total_blocks": stats.total_blocks,
            "sent_blocks": stats.sent_blocks,
            "sent_bytes": stats.sent_bytes,
            "hole_blocks": stats.hole_blocks,
            "zero_blocks": stats.zero_blocks,
            "retries": stats.retries,
            "seconds": round(stats.seconds, 2),
        },
    }


def publish_ami(
    req: AmiRequest, *, session: boto3.Session | None = None, progress: Progress | None = None
) -> AmiResult:
    """Publish ``req.image`` as an AMI (or find the one already published under that name)."""
    progress = progress or Progress()
    check_request(req)
    session = session or make_session(req.profile)
    region, others = regions(session, req)
    check_credentials(session)
    ec2 = client(session, "ec2", region, req.endpoint_url)

    existing = ami.find_image(ec2, req.name)
    if existing:
        progress.say(
            f"AMI {req.name!r} already exists in {region} as {existing['ImageId']}: not uploading again"
        )
        result = AmiResult(image_id=str(existing["ImageId"]), region=region, existed=True)
    else:
        result = _create(req, session, ec2, region, progress)
    if others:
        result.copies = _copy(req, session, result.image_id, region, others, progress)
    return result


def _upload(
    req: AmiRequest, session: boto3.Session, ec2: Any, region: str, progress: Progress
) -> tuple[str, UploadStats | None]:
    if req.method == "import":
        s3 = client(session, "s3", region, req.endpoint_url)
        importer = S3Import(
            s3,
            ec2,
            req.bucket or "",
            workers=req.workers,
            policy=req.retry,
            poll=req.poll,
            timeout=req.timeout,
            progress=progress,
        )
        with progress.step("importing the image through S3"):
            return importer.run(req.image, name=req.name, description=description(req), tags=tags(req)), None
    ebs = client(session, "ebs", region, req.endpoint_url, retries=1, pool=req.workers + 2)
    upload = SnapshotUpload(
        ebs, ec2, workers=req.workers, policy=req.retry, poll=req.poll, timeout=req.timeout, progress=progress
    )
    with progress.step("uploading the image to an EBS snapshot"):
        snapshot_id = upload.run(req.image, description=description(req), tags=tags(req))
    return snapshot_id, upload.stats


def _create(req: AmiRequest, session: boto3.Session, ec2: Any, region: str, progress: Progress) -> AmiResult:
    snapshot_id, stats = _upload(req, session, ec2, region, progress)
    image_id: str | None = None
    try:
        params = ami.register_params(
            req.name, snapshot_id, volume_gib(req.image.stat().st_size), description(req)
        )
        image_id = ami.register(ec2, params)
        if image_id is None:  # registered by someone else since we looked: theirs stands, ours goes
            found = ami.find_image(ec2, req.name)
            if not found:
                raise BakeError(
                    f"AMI name {req.name!r} is taken in {region} but no image of that name is visible"
                )
            progress.say(f"AMI {req.name!r} appeared meanwhile as {found['ImageId']}: using it")
            _rollback(ec2, None, snapshot_id, req.retry, progress)
            return AmiResult(image_id=str(found["ImageId"]), region=region, existed=True, stats=stats)
        progress.say(f"registered {image_id} in {region}")
        ami.tag(ec2, [image_id], tags(req), req.retry)
        ami.wait_available(ec2, image_id, timeout=req.timeout, poll=req.poll)
    except BaseException:
        _rollback(ec2, image_id, snapshot_id, req.retry, progress)
        raise
    return AmiResult(image_id=image_id, region=region, snapshot_id=snapshot_id, stats=stats)


def _rollback(
    ec2: Any, image_id: str | None, snapshot_id: str, policy: RetryPolicy, progress: Progress
) -> None:
    """Remove what this run created; report (not raise) what could not be removed."""
    if image_id:
        try:
            ec2.deregister_image(ImageId=image_id)
        except Exception as exc:
            progress.say(f"could not deregister {image_id}: {describe(exc, 'EC2 DeregisterImage')}")
    problem = delete_snapshot(ec2, snapshot_id, policy)
    progress.say(
        f"could not delete snapshot {snapshot_id}: {problem}"
        if problem
        else f"deleted snapshot {snapshot_id}"
    )


def _copy(
    req: AmiRequest, session: boto3.Session, image_id: str, region: str, others: list[str], progress: Progress
) -> dict[str, str]:
    """Copy to each region that has no AMI of this name yet; wait for all copies together."""
    copies: dict[str, str] = {}
    started: dict[str, Any] = {}
    for other in others:
        dest = client(session, "ec2", other, req.endpoint_url)
        found = ami.find_image(dest, req.name)
        if found:
            copies[other] = str(found["ImageId"])
            progress.say(f"AMI {req.name!r} already exists in {other} as {copies[other]}")
            continue
        copies[other] = ami.copy(
            dest, source_region=region, image_id=image_id, name=req.name, description=description(req)
        )
        started[other] = dest
        ami.tag(dest, [copies[other]], tags(req), req.retry)
        progress.say(f"copying {image_id} to {other} as {copies[other]}")
    for other, dest in started.items():
        with progress.step(f"waiting for the copy in {other}"):
            ami.wait_available(dest, copies[other], timeout=req.timeout, poll=req.poll)
    return copies
