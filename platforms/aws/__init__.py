"""AWS: config from IMDSv2 user data; images published as AMIs."""

from platforms.aws.guest import AwsGuest
from talos_os.plugins import PlatformPlugin

PLUGIN = PlatformPlugin(
    name="aws",
    description="Amazon EC2 (config from IMDSv2 user data; published as an AMI)",
    guest=AwsGuest(),
    aliases=("ec2",),
    detect_order=10,
    host="platforms.aws.cli",
)
