"""Raw image -> EBS snapshot with the EBS direct APIs; a failed upload leaves no snapshot behind.

Lifecycle: ``start_snapshot`` (with a client token, so a retried start cannot make two) ->
data blocks put in parallel, each with its SHA256 -> ``complete_snapshot`` with the count of
blocks put -> poll EC2 until the snapshot is ``completed``. Any failure or interrupt on the
way deletes the snapshot. The uploader never holds more than ``2 * workers`` blocks in memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakery.errors import BakeError
from bakery.progress import Progress
from platforms.aws.bar import Bar
from platforms.aws.blocks import BLOCK_SIZE, ImageScan, read_block, scan
from platforms.aws.clients import describe, error_code, explained
from platforms.aws.retrying import RetryPolicy, wait_until

GIB = 1 << 30
SNAPSHOT_TIMEOUT_MINUTES = 360  # EBS marks an uncompleted snapshot 'error' after this


@dataclass
class UploadStats:
    """What the upload did, for the progress line and the bench."""

    total_blocks: int
    hole_blocks: int
    zero_blocks: int = 0
    sent_blocks: int = 0
    sent_bytes: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def skipped_fraction(self) -> float:
        """Blocks never sent (holes and all-zero blocks), as a fraction of all blocks."""
        return (self.hole_blocks + self.zero_blocks) / max(1, self.total_blocks)

    @property
    def mb_per_s(self) -> float:
        """Bytes actually sent per second, in MB/s (10^6)."""
        return self.sent_bytes / max(self.seconds, 1e-9) / 1e6

    def summary(self) -> str:
        return (
            f"sent {self.sent_blocks} blocks ({self.sent_bytes / 2**20:.1f} MiB) in {self.seconds:.1f} s "
            f"({self.mb_per_s:.1f} MB/s); skipped {self.hole_blocks} hole + {self.zero_blocks} zero blocks "
            f"of {self.total_blocks} ({self.skipped_fraction:.1%}); {self.retries} retries"
        )


def volume_gib(size: int) -> int:
    """The EBS volume size (whole GiB, at least 1) that holds ``size`` bytes."""
    return max(1, -(-size // GIB))


def upload_blocks(
    image: ImageScan,
    put: Callable[[int, bytes], int],
    *,
    workers: int = 8,
    bar: Bar | None = None,
) -> UploadStats:
    """Read the candidate blocks in ``workers`` threads and ``put`` the non-zero ones.

    ``put(index, data)`` returns how many retries it needed. The first failure stops the rest
    (queued blocks are cancelled, running ones finish) and is raised.
    """
    stats = UploadStats(total_blocks=image.total_blocks, hole_blocks=image.hole_blocks)
    stop = threading.Event()
    fd = os.open(image.path, os.O_RDONLY)
    started = time.monotonic()

    def work(index: int) -> tuple[int, int]:
        if stop.is_set():
            return -1, 0
        data = read_block(fd, index)
        if data is None:
            return 0, 0
        return len(data), put(index, data)

    def drain(pending: set[Future[tuple[int, int]]], how: str) -> set[Future[tuple[int, int]]]:
        done, rest = wait(pending, return_when=how)
        for future in done:
            sent, retries = future.result()
            if sent == 0:
                stats.zero_blocks += 1
            elif sent > 0:
                stats.sent_blocks += 1
                stats.sent_bytes += sent
            stats.retries += retries
            if bar:
                bar.advance(
                    1, f"{stats.sent_bytes / 2**20:.0f} MiB sent, {stats.zero_blocks} zero blocks skipped"
                )
        return rest

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ebs-put") as pool:
            pending: set[Future[tuple[int, int]]] = set()
            try:
                for index in image.candidates:
                    pending.add(pool.submit(work, index))
                    if len(pending) >= 2 * workers:
                        pending = drain(pending, FIRST_COMPLETED)
                drain(pending, ALL_COMPLETED)
            except BaseException:
                stop.set()
                for future in pending:
                    future.cancel()
                raise
    finally:
        os.close(fd)
    stats.seconds = time.monotonic() - started
    if bar:
        bar.finish(f"{stats.sent_bytes / 2**20:.0f} MiB sent, {stats.zero_blocks} zero blocks skipped")
    return stats


def block_putter(ebs: Any, snapshot_id: str, policy: RetryPolicy) -> Callable[[int, bytes], int]:
    """``put(index, data)`` for one snapshot: SHA256 checksum, bounded jittered retries."""

    def put(index: int, data: bytes) -> int:
        checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
        retries = 0

        def count(_attempt: int, _exc: BaseException, _delay: float) -> None:
            nonlocal retries
            retries += 1

        policy.call(
            lambda: ebs.put_snapshot_block(
                SnapshotId=snapshot_id,
                BlockIndex=index,
                BlockData=data,
                DataLength=BLOCK_SIZE,
                Checksum=checksum,
                ChecksumAlgorithm="SHA256",
            ),
            on_retry=count,
        )
        return retries

    return put


def snapshot_state(ec2: Any, snapshot_id: str) -> str:
    """The EC2 view of the snapshot: pending, completed, error...; 'pending' while EC2 cannot see it yet."""
    try:
        found = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except Exception as exc:
        if error_code(exc) == "InvalidSnapshot.NotFound":  # eventual consistency right after the start
            return "pending"
        raise
    return str(found[0]["State"]) if found else "pending"


def delete_snapshot(ec2: Any, snapshot_id: str, policy: RetryPolicy) -> str | None:
    """Delete a snapshot, retrying while EC2 has not caught up with it; the problem, if any, as text."""
    try:
        policy.call(lambda: ec2.delete_snapshot(SnapshotId=snapshot_id))
    except Exception as exc:
        if error_code(exc) == "InvalidSnapshot.NotFound":
            return None
        return describe(exc, "EC2 DeleteSnapshot")
    return None


class SnapshotUpload:
    """One snapshot's lifecycle; ``run`` returns its id, or deletes it and raises."""

    def __init__(
        self,
        ebs: Any,
        ec2: Any,
        *,
        workers: int = 8,
        policy: RetryPolicy | None = None,
        poll: float = 5.0,
        timeout: float = 3600.0,
        progress: Progress | None = None,
    ) -> None:
        self.ebs, self.ec2, self.workers = ebs, ec2, workers
        self.policy = policy or RetryPolicy()
        self.poll, self.timeout = poll, timeout
        self.progress = progress or Progress(quiet=True)
        self.stats: UploadStats | None = None

    def run(self, path: Path, *, description: str, tags: list[dict[str, str]]) -> str:
        image = scan(path)
        token = str(uuid.uuid4())
        with explained("EBS StartSnapshot"):
            started = self.policy.call(
                lambda: self.ebs.start_snapshot(
                    VolumeSize=volume_gib(image.size),
                    ClientToken=token,
                    Description=description,
                    Tags=tags,
                    Timeout=SNAPSHOT_TIMEOUT_MINUTES,
                )
            )
        snapshot_id = str(started["SnapshotId"])
        self.progress.say(f"started snapshot {snapshot_id} ({volume_gib(image.size)} GiB)")
        try:
            self._fill(image, snapshot_id)
        except BaseException as exc:
            problem = delete_snapshot(self.ec2, snapshot_id, self.policy)
            if problem is None:
                self.progress.say(f"deleted the partial snapshot {snapshot_id}")
            elif isinstance(exc, BakeError):
                raise BakeError(
                    f"{exc}; the partial snapshot {snapshot_id} could not be deleted ({problem}): "
                    f"delete it with `aws ec2 delete-snapshot --snapshot-id {snapshot_id}`"
                ) from exc
            raise
        return snapshot_id

    def _fill(self, image: ImageScan, snapshot_id: str) -> None:
        bar = Bar("uploading", len(image.candidates), " blocks", quiet=self.progress.quiet)
        with explained("EBS PutSnapshotBlock"):
            self.stats = upload_blocks(
                image, block_putter(self.ebs, snapshot_id, self.policy), workers=self.workers, bar=bar
            )
        self.progress.say(self.stats.summary())
        sent = self.stats.sent_blocks
        with explained("EBS CompleteSnapshot"):
            status = self.policy.call(
                lambda: self.ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=sent)
            )["Status"]
        if status == "error":
            raise BakeError(f"EBS refused to complete snapshot {snapshot_id} (status error): publish again")

        def completed() -> bool:
            with explained("EC2 DescribeSnapshots"):
                state = snapshot_state(self.ec2, snapshot_id)
            if state == "error":
                raise BakeError(f"snapshot {snapshot_id} ended in state {state!r}: publish again")
            return state == "completed"

        wait_until(completed, what=f"snapshot {snapshot_id}", timeout=self.timeout, poll=self.poll)
        self.progress.say(f"snapshot {snapshot_id} completed")
