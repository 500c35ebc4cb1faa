"""Publishing AMIs against a moto server on 127.0.0.1 (never AWS).

What moto 5.2 keeps is checked by reading it back (snapshot blocks, tags, names, copies); what
it drops (RegisterImage keeps only Name and Description) is checked on the request that went
over the wire. Failures are injected at the HTTP layer (botocore's before-send hook answers
instead of the server), so the code under test sees exactly what a failing AWS would send.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from click.testing import CliRunner
from fakeimage import make_image
from moto.server import ThreadedMotoServer

from bakery.cli import cli
from bakery.errors import BakeError
from bakery.image import BakeResult
from bakery.progress import Progress
from platforms.aws.blocks import BLOCK_SIZE, ZERO_BLOCK, scan
from platforms.aws.clients import transient
from platforms.aws.publish import AmiRequest, plan, publish_ami
from platforms.aws.retrying import RetryPolicy
from platforms.aws.s3import import import_state, upload_to_s3

REGION = "eu-west-1"
OTHER_REGION = "us-west-2"
FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05)
QUIET = Progress(quiet=True)
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_EC2_METADATA_DISABLED": "true",  # boto3 must never probe the instance metadata service
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
}
UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """One moto server for the run, on loopback and a free port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A clean moto (all state reset) and an environment with fake credentials only (moto's backends,
    rebuilt lazily after the reset, read MOTO_EC2_LOAD_DEFAULT_AMIS from it)."""
    for key, value in FAKE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in UNSET:
        monkeypatch.delenv(key, raising=False)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10)
    return moto_server


def aws(moto: str, service: str, region: str = REGION) -> Any:
    return boto3.Session(region_name=region).client(service, endpoint_url=moto)


def request(image: Path, moto: str, **kw: Any) -> AmiRequest:
    return AmiRequest(
        image=image,
        name=kw.pop("name", "talos-test"),
        region=REGION,
        endpoint_url=moto,
        retry=FAST,
        poll=0.01,
        timeout=30,
        **kw,
    )


def write_sparse_image(path: Path) -> Path:
    """2 GiB, mostly holes: random data at aligned and unaligned offsets, one allocated all-zero block,
    one block whose only non-zero byte is its last, and data up to the very end."""
    with open(path, "wb") as f:
        f.truncate(2 << 30)
        for offset, size in ((0, (1 << 20) + 100), ((64 << 20) + 4096, 2 << 20), ((1 << 30) - 1000, 5000)):
            f.seek(offset)
            f.write(os.urandom(size))
        f.seek(512 << 20)
        f.write(ZERO_BLOCK)  # allocated, but zeros: must not be sent
        f.seek((700 << 20) + BLOCK_SIZE - 1)
        f.write(b"\x01")
        f.seek((2 << 30) - (300 << 10))
        f.write(os.urandom(300 << 10))
    return path


@pytest.fixture(scope="module")
def sparse_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the tests of this module, which only read it."""
    return write_sparse_image(tmp_path_factory.mktemp("aws") / "sparse.raw")


@pytest.fixture(scope="module")
def sparse_blocks(sparse_image: Path) -> dict[int, bytes]:
    return nonzero_blocks(sparse_image)


def nonzero_blocks(path: Path) -> dict[int, bytes]:
    """The reference: read the whole file the plain way (holes too), keep the blocks that are not all zero."""
    chunk = 64 * BLOCK_SIZE
    zero_chunk = bytes(chunk)
    blocks: dict[int, bytes] = {}
    with open(path, "rb") as f:
        base = 0
        while data := f.read(chunk):
            if data != zero_chunk[: len(data)]:
                for i in range(0, len(data), BLOCK_SIZE):
                    block = data[i : i + BLOCK_SIZE].ljust(BLOCK_SIZE, b"\0")
                    if block != ZERO_BLOCK:
                        blocks[base + i // BLOCK_SIZE] = block
            base += len(data) // BLOCK_SIZE
    return blocks


def snapshot_blocks(moto: str, snapshot_id: str) -> dict[int, bytes]:
    """Every block the snapshot holds, read back through the EBS direct APIs."""
    ebs = aws(moto, "ebs")
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    return {
        b["BlockIndex"]: ebs.get_snapshot_block(
            SnapshotId=snapshot_id, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"]
        )["BlockData"].read()
        for b in listed
    }


def own_snapshots(moto: str, region: str = REGION, *, ours: bool = False) -> list[dict[str, Any]]:
    """All snapshots of the account, or (``ours``) only those talos-bake made: moto adds one per AMI."""
    filters = [{"Name": "tag:talos-os:published-by", "Values": ["talos-bake"]}] if ours else []
    return list(aws(moto, "ec2", region).describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"])


def own_images(moto: str, region: str = REGION) -> list[dict[str, Any]]:
    return list(aws(moto, "ec2", region).describe_images(Owners=["self"])["Images"])


class _Body:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def aws_error(status: int, code: str, message: str = "injected") -> AWSResponse:
    """A REST-JSON error response as an AWS service sends it."""
    body = json.dumps({"message": message}).encode()
    headers = {"x-amzn-ErrorType": code, "Content-Type": "application/json"}
    return AWSResponse("http://injected.invalid", status, headers, _Body(body))


class Injector:
    """Answers some requests itself instead of the server: ``decide(n)`` gets the 1-based request number."""

    def __init__(self, decide: Callable[[int], AWSResponse | None]) -> None:
        self.decide, self.calls, self.lock = decide, 0, threading.Lock()

    def __call__(self, **_: Any) -> AWSResponse | None:
        with self.lock:
            self.calls += 1
            n = self.calls
        return self.decide(n)


def session_with(event: str, handler: Callable[..., Any]) -> boto3.Session:
    session = boto3.Session()
    session.events.register(event, handler)
    return session


# --- blocks -------------------------------------------------------------------------------------------


def test_scan_skips_holes_without_reading_them_and_finds_every_nonzero_block(
    sparse_image: Path, sparse_blocks: dict[int, bytes]
) -> None:
    found = scan(sparse_image)
    assert found.size == 2 << 30 and found.total_blocks == 4096
    expected = sparse_blocks
    assert set(expected) <= set(found.candidates)  # no data block is lost to hole skipping
    assert len(found.candidates) < 30  # and the ~4070 hole blocks are not even candidates
    assert (512 << 20) // BLOCK_SIZE in found.candidates  # the allocated zero block is a candidate...
    assert (512 << 20) // BLOCK_SIZE not in expected  # ...that holds only zeros
    assert (700 << 20) // BLOCK_SIZE in expected  # a single non-zero byte counts


# --- the EBS direct upload ----------------------------------------------------------------------------


def test_publish_uploads_exactly_the_nonzero_blocks_and_registers_the_ami(
    moto: str, sparse_image: Path, sparse_blocks: dict[int, bytes]
) -> None:
    sent: list[dict[str, list[str]]] = []

    def capture(request: Any, **_: Any) -> None:
        sent.append(
            urllib.parse.parse_qs(request.body.decode() if isinstance(request.body, bytes) else request.body)
        )

    result = publish_ami(
        request(sparse_image, moto),
        session=session_with("before-send.ec2.RegisterImage", capture),
        progress=QUIET,
    )

    assert result.image_id.startswith("ami-") and not result.existed and result.snapshot_id
    expected = sparse_blocks
    assert snapshot_blocks(moto, result.snapshot_id) == expected  # zero blocks were never put
    assert result.stats and result.stats.sent_blocks == len(expected)
    assert result.stats.zero_blocks == 1 and result.stats.hole_blocks + 1 + len(expected) == 4096

    (snap,) = own_snapshots(moto, ours=True)
    assert snap["SnapshotId"] == result.snapshot_id and snap["State"] == "completed"
    assert {t["Key"]: t["Value"] for t in snap["Tags"]}["Name"] == "talos-test"
    (image,) = own_images(moto)
    assert image["ImageId"] == result.image_id and image["Name"] == "talos-test"
    assert {t["Key"]: t["Value"] for t in image["Tags"]}["talos-os:image"] == "sparse.raw"

    (params,) = sent  # moto keeps only the name: the attributes are checked as sent
    wire = {k: v[0] for k, v in params.items()}
    assert wire["Architecture"] == "x86_64" and wire["VirtualizationType"] == "hvm"
    assert wire["EnaSupport"] == "true" and wire["SriovNetSupport"] == "simple"
    assert wire["BootMode"] == "uefi-preferred" and wire["ImdsSupport"] == "v2.0"
    assert wire["RootDeviceName"] == "/dev/xvda"
    assert wire["BlockDeviceMapping.1.DeviceName"] == "/dev/xvda"
    assert wire["BlockDeviceMapping.1.Ebs.SnapshotId"] == result.snapshot_id
    assert wire["BlockDeviceMapping.1.Ebs.VolumeType"] == "gp3"
    assert wire["BlockDeviceMapping.1.Ebs.VolumeSize"] == "2"
    assert wire["BlockDeviceMapping.1.Ebs.DeleteOnTermination"] == "true"


def test_a_size_off_the_block_grid_is_padded_with_zeros(moto: str, tmp_path: Path) -> None:
    image = tmp_path / "odd.raw"
    tail = os.urandom(1000)
    image.write_bytes(os.urandom(3 << 20) + tail)
    result = publish_ami(request(image, moto), progress=QUIET)
    assert result.snapshot_id
    blocks = snapshot_blocks(moto, result.snapshot_id)
    assert sorted(blocks) == [0, 1, 2, 3, 4, 5, 6]
    assert blocks[6] == tail + bytes(BLOCK_SIZE - len(tail))


def test_publishing_again_returns_the_same_ami_and_uploads_nothing(moto: str, sparse_image: Path) -> None:
    first = publish_ami(request(sparse_image, moto), progress=QUIET)
    ebs_calls = Injector(lambda n: None)
    again = publish_ami(
        request(sparse_image, moto), session=session_with("before-send.ebs", ebs_calls), progress=QUIET
    )
    assert again.image_id == first.image_id and again.existed
    assert ebs_calls.calls == 0
    assert len(own_snapshots(moto, ours=True)) == 1 and len(own_images(moto)) == 1


def test_a_disabled_ami_of_that_name_is_an_error_not_a_result(moto: str, tmp_path: Path) -> None:
    image = tmp_path / "small.raw"
    image.write_bytes(os.urandom(1 << 20))
    first = publish_ami(request(image, moto), progress=QUIET)
    aws(moto, "ec2").disable_image(ImageId=first.image_id)
    with pytest.raises(BakeError, match=f"is disabled: deregister it .*--image-id {first.image_id}"):
        publish_ami(request(image, moto), progress=QUIET)


def test_a_failure_mid_upload_deletes_the_snapshot(moto: str, sparse_image: Path) -> None:
    # the first 5 blocks go through, then the service fails for good
    broken = Injector(lambda n: aws_error(500, "InternalServerException") if n > 5 else None)
    with pytest.raises(BakeError, match="PutSnapshotBlock failed") as failed:
        publish_ami(
            request(sparse_image, moto),
            session=session_with("before-send.ebs.PutSnapshotBlock", broken),
            progress=QUIET,
        )
    assert "\n" not in str(failed.value)
    assert broken.calls > 5 + FAST.attempts - 1  # the failing block was retried, then the upload stopped
    assert own_snapshots(moto) == [] and own_images(moto) == []


def test_throttling_is_retried_and_the_upload_still_completes(
    moto: str, sparse_image: Path, sparse_blocks: dict[int, bytes]
) -> None:
    flaky = Injector(lambda n: aws_error(429, "ThrottlingException") if n in (2, 3, 7) else None)
    result = publish_ami(
        request(sparse_image, moto),
        session=session_with("before-send.ebs.PutSnapshotBlock", flaky),
        progress=QUIET,
    )
    assert result.stats and result.stats.retries == 3
    assert result.snapshot_id and snapshot_blocks(moto, result.snapshot_id) == sparse_blocks


def test_ebs_access_denied_is_not_retried_and_suggests_import(moto: str, sparse_image: Path) -> None:
    denied = Injector(
        lambda n: aws_error(403, "AccessDeniedException", "not authorized to ebs:StartSnapshot")
    )
    with pytest.raises(BakeError, match="--method import") as failed:
        publish_ami(
            request(sparse_image, moto),
            session=session_with("before-send.ebs.StartSnapshot", denied),
            progress=QUIET,
        )
    assert "EBS direct APIs is denied" in str(failed.value)
    assert denied.calls == 1 and own_snapshots(moto) == []


def test_retry_classification() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    def client_error(status: int, code: str) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutSnapshotBlock"
        )

    assert transient(client_error(503, "ServiceUnavailable")) and transient(
        client_error(400, "ThrottlingException")
    )
    assert transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not transient(client_error(403, "AccessDeniedException"))
    assert not transient(client_error(400, "ValidationException"))


# --- copy, import, dry run, errors --------------------------------------------------------------------


def test_copy_to_regions_makes_the_image_in_the_other_region_once(moto: str, tmp_path: Path) -> None:
    image = tmp_path / "small.raw"
    image.write_bytes(os.urandom(1 << 20))
    first = publish_ami(request(image, moto, copy_to=(OTHER_REGION, REGION)), progress=QUIET)
    (copied,) = own_images(moto, OTHER_REGION)
    assert first.copies == {OTHER_REGION: copied["ImageId"]} and copied["Name"] == "talos-test"
    assert {t["Key"]: t["Value"] for t in copied["Tags"]}["Name"] == "talos-test"
    again = publish_ami(request(image, moto, copy_to=(OTHER_REGION,)), progress=QUIET)
    assert again.copies == first.copies and len(own_images(moto, OTHER_REGION)) == 1


def test_s3_upload_of_the_import_method_round_trips(moto: str, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom((130 << 20) + 7))  # more than two 64 MiB parts: a real multipart upload
    s3 = aws(moto, "s3")
    s3.create_bucket(Bucket="images", CreateBucketConfiguration={"LocationConstraint": REGION})
    upload_to_s3(s3, image, "images", "k.raw", quiet=True)
    assert s3.get_object(Bucket="images", Key="k.raw")["Body"].read() == image.read_bytes()


def test_import_method_stops_at_what_moto_lacks_and_cleans_up(moto: str, tmp_path: Path) -> None:
    """moto 5.2 has no ImportSnapshot (nor DescribeImportSnapshotTasks, CancelImportTask): it answers
    HTTP 500. Everything before that is real: the S3 upload, then the call; the object is removed."""
    image = tmp_path / "img.raw"
    image.write_bytes(os.urandom(2 << 20))
    s3 = aws(moto, "s3")
    s3.create_bucket(Bucket="images", CreateBucketConfiguration={"LocationConstraint": REGION})
    uploads = Injector(lambda n: None)
    with pytest.raises(
        BakeError, match="ImportSnapshot failed: the endpoint's answer is not an AWS response"
    ):
        publish_ami(
            request(image, moto, method="import", bucket="images"),
            session=session_with("before-send.s3.PutObject", uploads),
            progress=QUIET,
        )
    assert uploads.calls == 1  # the image went to S3 first
    assert s3.list_objects_v2(Bucket="images").get("KeyCount") == 0
    assert own_snapshots(moto) == [] and own_images(moto) == []


def test_import_task_states() -> None:
    assert import_state({"SnapshotTaskDetail": {"Status": "active", "Progress": "42"}}) is None
    assert import_state({"SnapshotTaskDetail": {"Status": "completed", "SnapshotId": "snap-1"}}) == "snap-1"
    with pytest.raises(BakeError, match="vmimport"):
        import_state({"ImportTaskId": "import-snap-1", "SnapshotTaskDetail": {"Status": "deleted"}})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dry_run_prints_the_plan_and_touches_nothing(moto: str, sparse_image: Path, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would fail the run
    image = make_image(tmp_path / "talos-aws.raw", "aws")
    args = ["aws", "--ami", "--dry-run", "--image", str(image), "--region", REGION, "--name", "talos-test",
            "--copy-to-regions", OTHER_REGION, "--endpoint-url", dead]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "= 32 blocks of 512 KiB" in result.stdout and "hole + " in result.stdout
    assert "4096 blocks" in "\n".join(plan(request(sparse_image, moto)))
    assert "uefi-preferred" in result.stdout and f"copy to: {OTHER_REGION}" in result.stdout
    assert own_snapshots(moto) == [] and own_images(moto) == []
    assert plan(request(sparse_image, moto))[0].startswith("plan (dry run")
    refused = CliRunner().invoke(cli, [*args, "--config-url", "http://127.0.0.1:1/config.yaml"])
    assert refused.exit_code == 1 and "--config-url only applies when baking" in refused.stderr


def test_cli_json_names_the_ami_its_snapshot_and_regions(moto: str, tmp_path: Path) -> None:
    """``-o json``: one document on stdout (AMI, snapshot, regions, copies), progress on stderr only."""
    image = make_image(tmp_path / "talos-aws.raw", "aws")
    args = ["aws", "--ami", "--image", str(image), "--region", REGION, "--name", "talos-json",
            "--copy-to-regions", OTHER_REGION, "--endpoint-url", moto, "-o", "json"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (ami_image,) = own_images(moto)
    assert doc["image_id"] == ami_image["ImageId"] and doc["name"] == "talos-json" and doc["existed"] is False
    assert doc["region"] == REGION and doc["regions"] == [REGION, OTHER_REGION]
    assert set(doc["copies"]) == {OTHER_REGION} and doc["copies"][OTHER_REGION].startswith("ami-")
    (snap,) = own_snapshots(moto, ours=True)
    assert doc["snapshot_id"] == snap["SnapshotId"] and doc["image"] == str(image)
    assert doc["upload"]["total_blocks"] == 32 and doc["upload"]["sent_blocks"] >= 1
    again = CliRunner().invoke(cli, [*args[:-1], "yaml"])  # published already: found, not uploaded
    assert again.exit_code == 0, again.output
    assert "image_id: " + doc["image_id"] in again.stdout and "existed: true" in again.stdout


def test_dry_run_without_image_bakes_nothing(moto: str, tmp_path: Path) -> None:
    args = ["aws", "--ami", "--dry-run", "--region", REGION, "--name", "talos-test", "--out", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "baked first into" in result.stdout and "gp3 2 GiB" in result.stdout
    assert not (tmp_path / "out").exists()
    refused = CliRunner().invoke(cli, [*args, "--platform", "kvm"])  # it only bakes for aws
    assert (
        refused.exit_code == 2 and "talos-bake aws only bakes aws images: drop --platform" in refused.stderr
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"region": "xx-nowhere-9"}, "unknown AWS region 'xx-nowhere-9'"),
        ({"copy_to": ("mars-north-1",)}, "unknown AWS region 'mars-north-1'"),
        ({"name": "a"}, "AMI name 'a' is not allowed"),
        ({"image": Path("/nonexistent/talos.raw")}, "image /nonexistent/talos.raw not found"),
        ({"method": "import"}, "--method import needs --bucket"),
    ],
)
def test_bad_requests_fail_in_one_sentence(
    moto: str, sparse_image: Path, change: dict[str, Any], message: str
) -> None:
    req = request(sparse_image, moto)
    req = dataclasses.replace(req, **change)
    with pytest.raises(BakeError, match=message) as failed:
        publish_ami(req, progress=QUIET)
    assert "\n" not in str(failed.value)


def test_no_credentials(moto: str, sparse_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    with pytest.raises(BakeError, match="no AWS credentials found"):
        publish_ami(request(sparse_image, moto), progress=QUIET)


def test_unreachable_endpoint(moto: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        cli,
        [
            "aws",
            "--ami",
            "--image",
            str(make_image(tmp_path / "talos-aws.raw", "aws")),
            "--region",
            REGION,
            "--name",
            "talos-test",
            "--endpoint-url",
            dead,
        ],
    )
    assert result.exit_code == 1
    assert f"cannot reach {dead}" in result.stderr and "Traceback" not in result.output


# --- the real image ----------------------------------------------------------------------------------


@pytest.mark.e2e
def test_cli_publishes_the_baked_image(moto: str, baked_image: BakeResult) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "aws",
            "--ami",
            "--image",
            str(baked_image.raw),
            "--region",
            REGION,
            "--name",
            "talos-baked",
            "--endpoint-url",
            moto,
            "--force-platform",  # the default image is baked for kvm; the upload is what is tested here
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warning: talos-kvm.raw was baked for kvm" in result.stderr
    ami_id = result.stdout.strip().splitlines()[-1]
    assert "uploading [" in result.stderr and "MB/s" in result.stderr  # the progress bar and the summary
    (image,) = own_images(moto)
    assert image["ImageId"] == ami_id and image["Name"] == "talos-baked"
    (snap,) = own_snapshots(moto, ours=True)
    assert snapshot_blocks(moto, snap["SnapshotId"]) == nonzero_blocks(baked_image.raw)


@pytest.mark.e2e
def test_cli_bakes_then_publishes(moto: str, test_lock: Path) -> None:
    """No --image: the command bakes (for platform aws, the command's default) with raw's options first."""
    out = test_lock.parent / "aws-publish"  # next to the run's other bakes (TALOS_TEST_BUILD)
    shutil.rmtree(out, ignore_errors=True)
    result = CliRunner().invoke(
        cli,
        [
            "aws",
            "--ami",
            "--region",
            REGION,
            "--name",
            "talos-fresh",
            "--out",
            str(out),
            "--lock",
            str(test_lock),
            "--endpoint-url",
            moto,
        ],
    )
    assert result.exit_code == 0, result.output
    raw = out / "talos-aws.raw"
    assert json.loads((out / "talos-aws.raw.manifest.json").read_text())["platform"] == "aws"
    (image,) = own_images(moto)
    assert image["ImageId"] == result.stdout.strip().splitlines()[-1]
    (snap,) = own_snapshots(moto, ours=True)
    assert snapshot_blocks(moto, snap["SnapshotId"]) == nonzero_blocks(raw)
