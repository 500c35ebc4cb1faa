"""``talos-bake aws --ami``: bake (same options as ``talos-bake raw``) or take ``--image``, then publish.

AWS's host half: ``register`` adds the command to ``talos-bake`` (the plugin names this module).
stdout gets the AMI id or the
dry-run plan, or with ``-o json|yaml`` one document of either; progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bakery.bake_options import bake_options, parse_size
from bakery.bake_run import run_bake
from bakery.errors import BakeError
from bakery.progress import Progress
from platforms.image_source import (
    drop_platform_option,
    force_platform_option,
    image_or_bake,
    preflight_image,
    set_bake_platform,
)
from talos_os import output as out_fmt

if TYPE_CHECKING:
    from platforms.aws.publish import AmiRequest

PLATFORM = "aws"
EXAMPLES = """\b
Examples:
  talos-bake aws --ami --region eu-west-1 --name talos-0.1.0 --dry-run -o json
  talos-bake aws --ami --region eu-west-1 --name talos-0.1.0 --image _out/talos-aws.raw
"""


METHODS = ("ebs", "import")  # platforms.aws.publish.METHODS, without importing boto3 for every talos-bake


def preflight(ctx: click.Context, kw: dict[str, Any], request: AmiRequest) -> None:
    """Everything checkable offline, before a bake or an upload: name, method, regions, the image, and
    (for a real run) that credentials exist."""
    from platforms.aws.clients import check_credentials, make_session
    from platforms.aws.publish import check_request, regions

    check_request(request, need_image=False)
    session = make_session(request.profile)
    regions(session, request)
    if kw["image"] is not None:
        facts = preflight_image(ctx, kw, PLATFORM)
        if facts is not None and facts.format != "raw":
            raise BakeError(
                f"--image {kw['image']} is {facts.format}: AWS takes the raw image (qemu-img convert -O raw)"
            )
    if not kw["dry_run"]:
        check_credentials(session)


def command() -> click.Command:
    """The ``aws`` click command (boto3 is imported when it runs, not when talos-bake starts)."""

    @click.command(PLATFORM, epilog=EXAMPLES)
    @click.option("--ami", is_flag=True, help="Publish the image as an EC2 AMI (required: the AWS target).")
    @click.option(
        "--region", default=None, help="Region to publish in (default: AWS_REGION or the profile's)."
    )
    @click.option("--name", required=True, help="AMI name; an AMI of that name already there is reused.")
    @click.option("--copy-to-regions", default="", help="Comma-separated regions to copy the AMI to.")
    @click.option(
        "--method",
        type=click.Choice(METHODS),
        default="ebs",
        show_default=True,
        help="ebs: EBS direct APIs (fast, sparse); import: S3 + ImportSnapshot (needs --bucket).",
    )
    @click.option("--bucket", default=None, help="S3 bucket for --method import (in the same region).")
    @click.option("--dry-run", is_flag=True, help="Print the plan; bake, upload, register and copy nothing.")
    @click.option(
        "--image",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Publish this raw talos-os image (baked for aws) instead of baking one.",
    )
    @force_platform_option()
    @click.option("--profile", default=None, help="AWS profile (default: AWS_PROFILE or the default chain).")
    @click.option(
        "--jobs",
        type=click.IntRange(1, 64),
        default=8,
        show_default=True,
        help="Blocks uploaded in parallel.",
    )
    @click.option(
        "--endpoint-url", default=None, hidden=True, help="AWS endpoint (tests: a local moto server)."
    )
    @bake_options
    @click.pass_context
    def aws(ctx: click.Context, /, **kw: Any) -> None:
        """Publish a talos-os image to AWS as an AMI (bakes it first unless --image is given)."""
        if not kw["ami"]:
            raise click.UsageError("say what to publish: --ami (an EC2 image) is the AWS target")
        from platforms.aws.publish import AmiRequest, plan_lines, plan_record, publish_ami, result_record

        request = AmiRequest(
            image=kw["image"] or kw["out"] / f"talos-{PLATFORM}.raw",
            name=kw["name"],
            region=kw["region"],
            copy_to=tuple(r.strip() for r in kw["copy_to_regions"].split(",") if r.strip()),
            method=kw["method"],
            bucket=kw["bucket"],
            profile=kw["profile"],
            endpoint_url=kw["endpoint_url"],
            workers=kw["jobs"],
        )
        try:
            preflight(ctx, kw, request)
            if kw["dry_run"]:
                note: str | None = None
                if kw["image"]:
                    record = plan_record(request)
                else:
                    set_bake_platform(ctx, kw, PLATFORM)  # refuses another --platform as a bake would
                    note = f"baked first into {request.image} with the talos-bake raw options"
                    record = plan_record(request, bake_note=note, disk_size=parse_size(kw["disk_size"]))
                out_fmt.echo(kw["output"], record, plan_lines(record, note))
                return
            image = image_or_bake(ctx, kw, PLATFORM, run_bake)
            result = publish_ami(dataclasses.replace(request, image=image), progress=Progress())
        except BakeError as exc:
            raise click.ClickException(str(exc)) from None
        for region, copied in result.copies.items():
            click.echo(f"copy in {region}: {copied}", err=True)
        request = dataclasses.replace(request, image=image)
        out_fmt.echo(kw["output"], result_record(request, result), result.image_id)

    return drop_platform_option(aws, PLATFORM)


def register(group: click.Group) -> None:
    """This platform's host half: its ``talos-bake`` command."""
    group.add_command(command())
