"""Raw image -> EBS snapshot through S3 and ``import_snapshot``, for accounts without EBS direct access.

Slower than the direct upload (the whole image, zeros included, goes to S3, and VM Import then
reads it) and it needs the ``vmimport`` service role, but it only uses S3 and EC2 permissions.
The S3 object is a temporary: it is deleted whether the import succeeds or not, and a failed
import is cancelled and its snapshot (if one appeared) deleted.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from bakery.errors import BakeError
from bakery.progress import Progress
from platforms.aws.bar import Bar
from platforms.aws.clients import describe, explained
from platforms.aws.retrying import RetryPolicy, wait_until
from platforms.aws.snapshot import delete_snapshot

PART_SIZE = 64 << 20
ACTIVE = ("active", "pending")


def upload_to_s3(
    s3: Any, path: Path, bucket: str, key: str, *, workers: int = 8, quiet: bool = False
) -> None:
    """Multipart upload of the image file, with a progress bar."""
    size = path.stat().st_size
    bar = Bar("uploading to S3", size, " MiB", scale=1 << 20, quiet=quiet)
    config = TransferConfig(
        multipart_chunksize=PART_SIZE, multipart_threshold=PART_SIZE, max_concurrency=workers
    )
    with explained(f"S3 upload to s3://{bucket}/{key}"):
        s3.upload_file(str(path), bucket, key, Config=config, Callback=bar.advance)
    bar.finish()


def import_state(task: dict[str, Any]) -> str | None:
    """The snapshot id once an import task has completed, None while it runs; BakeError if it failed."""
    detail = task.get("SnapshotTaskDetail", {})
    status = detail.get("Status", "active")
    if status == "completed":
        if not detail.get("SnapshotId"):
            raise BakeError(
                f"import task {task.get('ImportTaskId')} completed without a snapshot: publish again"
            )
        return str(detail["SnapshotId"])
    if status in ACTIVE:
        return None
    message = detail.get("StatusMessage", "")
    raise BakeError(
        f"import task {task.get('ImportTaskId')} ended {status!r} ({message}): check that the vmimport "
        "role can read the bucket, then publish again"
    )


class S3Import:
    """One import's lifecycle; ``run`` returns the snapshot id, or cleans up and raises."""

    def __init__(
        self,
        s3: Any,
        ec2: Any,
        bucket: str,
        *,
        workers: int = 8,
        policy: RetryPolicy | None = None,
        poll: float = 15.0,
        timeout: float = 7200.0,
        progress: Progress | None = None,
    ) -> None:
        self.s3, self.ec2, self.bucket, self.workers = s3, ec2, bucket, workers
        self.policy = policy or RetryPolicy()
        self.poll, self.timeout = poll, timeout
        self.progress = progress or Progress(quiet=True)

    def run(self, path: Path, *, name: str, description: str, tags: list[dict[str, str]]) -> str:
        token = str(uuid.uuid4())
        key = f"talos-os-import/{name.replace(' ', '_')}-{token}.raw"
        task_id: str | None = None
        snapshot_id: str | None = None
        try:
            upload_to_s3(self.s3, path, self.bucket, key, workers=self.workers, quiet=self.progress.quiet)
            with explained("EC2 ImportSnapshot"):
                task_id = str(
                    self.ec2.import_snapshot(
                        ClientToken=token,
                        Description=description,
                        DiskContainer={
                            "Description": description,
                            "Format": "RAW",
                            "UserBucket": {"S3Bucket": self.bucket, "S3Key": key},
                        },
                        TagSpecifications=[{"ResourceType": "import-snapshot-task", "Tags": tags}],
                    )["ImportTaskId"]
                )
            self.progress.say(f"import task {task_id} started")
            snapshot_id = self._wait(task_id)
            with explained("EC2 CreateTags"):
                self.ec2.create_tags(Resources=[snapshot_id], Tags=tags)
            return snapshot_id
        except BaseException:
            self._abandon(task_id, snapshot_id)
            raise
        finally:
            self._delete_object(key)

    def _wait(self, task_id: str) -> str:
        found: list[str] = []

        def done() -> bool:
            with explained("EC2 DescribeImportSnapshotTasks"):
                tasks = self.ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])[
                    "ImportSnapshotTasks"
                ]
            snapshot_id = import_state(tasks[0]) if tasks else None
            if snapshot_id:
                found.append(snapshot_id)
            return bool(snapshot_id)

        wait_until(done, what=f"import task {task_id}", timeout=self.timeout, poll=self.poll)
        return found[0]

    def _abandon(self, task_id: str | None, snapshot_id: str | None) -> None:
        if task_id and not snapshot_id:
            try:
                self.ec2.cancel_import_task(ImportTaskId=task_id, CancelReason="talos-bake publish failed")
            except Exception as exc:
                self.progress.say(
                    f"could not cancel import task {task_id}: {describe(exc, 'EC2 CancelImportTask')}"
                )
        if snapshot_id:
            problem = delete_snapshot(self.ec2, snapshot_id, self.policy)
            if problem:
                self.progress.say(f"could not delete snapshot {snapshot_id}: {problem}")

    def _delete_object(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            self.progress.say(
                f"could not delete s3://{self.bucket}/{key}: {describe(exc, 'S3 DeleteObject')}"
            )
