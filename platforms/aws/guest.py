"""AWS guest half: user data and hostname from the instance metadata service, IMDSv2 only.

The endpoint is ``http://169.254.169.254`` unless ``talos.aws.imds=URL`` says otherwise (tests
hand the guest a loopback server through QEMU's user network and keep the default).
"""

from __future__ import annotations

import re

from platforms.aws.imds import DEFAULT_ENDPOINT, ImdsClient, fetch_aws_config
from talos_os.lib.fetch import ConfigRef
from talos_os.plugins.guest import GuestContext, Probe

# EC2 product UUIDs start with "ec2"; some firmware shows the first field little-endian ("xxxx2?ec").
_EC2_UUID = re.compile(r"^(ec2|[0-9a-f]{4}2[0-9a-f]ec)", re.IGNORECASE)


class AwsGuest:
    """Talks to IMDS with one client (and so one token) for the whole boot."""

    def __init__(self) -> None:
        self._client: ImdsClient | None = None

    def client(self, ctx: GuestContext) -> ImdsClient:
        if self._client is None:
            endpoint = ctx.cmdline.get("talos.aws.imds") or DEFAULT_ENDPOINT

            def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
                ctx.log(f"aws: instance metadata at {endpoint}: {exc}; retry {attempt} in {delay:.1f} s")

            self._client = ImdsClient(endpoint, on_retry=on_retry)
        return self._client

    def detect(self, probe: Probe) -> str | None:
        """EC2: the DMI vendor, an EC2 product UUID (some firmware shows its first field little-endian)
        or, on older Xen-based instances, the hypervisor UUID."""
        uuid, hv_uuid = probe.dmi("product_uuid"), probe.read("sys/hypervisor/uuid")
        if probe.dmi("sys_vendor") == "Amazon EC2":
            return "DMI sys_vendor is 'Amazon EC2'"
        if uuid and _EC2_UUID.match(uuid):
            return f"DMI product_uuid {uuid} looks like an EC2 instance"
        if hv_uuid.lower().startswith("ec2"):
            return f"/sys/hypervisor/uuid {hv_uuid} looks like an EC2 instance"
        return None

    def find_config(self, ctx: GuestContext) -> ConfigRef | None:
        client = self.client(ctx)
        if "instance-id" not in ctx.facts:  # once: find_config is polled until a config arrives
            instance = client.instance_id()
            if instance:
                ctx.facts["instance-id"] = instance
                ctx.log(f"aws: instance {instance}")
        return fetch_aws_config(client)

    def hostname(self, ctx: GuestContext) -> str | None:
        name = self.client(ctx).hostname()
        return name.split(".", 1)[0] if name else None
