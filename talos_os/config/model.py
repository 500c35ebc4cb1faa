"""The machine config ("userdata") v1 as a typed, strictly validated model.

Python attributes are snake_case; the YAML keys are their camelCase aliases. Validation reports every
problem at once: field checks come from pydantic, checks across fields are collected per model, and the
rules that depend on the machine type or install mode are checked on the raw input by
:class:`MachineConfig` itself, so they show up even when other parts of the document are broken.
"""

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Network
from typing import Annotated, Any, Literal, Self

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails

from talos_os.config.errors import invalid, message_for
from talos_os.config.keys import load_certificate, load_private_key
from talos_os.config.kinds import MachineType
from talos_os.config.rules import SUGGESTED, Loc, allowed_keys, mode_problems, role_problems
from talos_os.config.types import (
    CIDR,
    AESCBCSecret,
    ArgName,
    CertificatePEM,
    ClusterName,
    DiskPath,
    DNSDomain,
    Duration,
    EnvName,
    FileMode,
    Hostname,
    HttpsEndpoint,
    HttpURL,
    ImageRef,
    InterfaceName,
    IPAddressField,
    KernelArg,
    KubernetesVersion,
    Network,
    PrivateKeyPEM,
    RegistryHost,
    ScalarStr,
    SubjectAltName,
    SysctlName,
    Token,
    VarPath,
)
from talos_os.kubernetes import versions

# The Kubernetes this release bakes into its images: a node has no other to run.
DEFAULT_KUBERNETES_VERSION = versions.KUBERNETES
DEFAULT_ETCD_IMAGE = f"{versions.REGISTRY}/etcd:{versions.ETCD}"
DEFAULT_COREDNS_IMAGE = f"{versions.REGISTRY}/coredns/coredns:{versions.COREDNS}"
DEFAULT_PAUSE_IMAGE = versions.pause_image()


class FileOp(StrEnum):
    """Whether a file entry replaces the file or appends to it."""

    CREATE = "create"
    APPEND = "append"


class _Model(BaseModel):
    """Common settings: camelCase YAML keys, unknown keys rejected, no type coercion, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )


class _Problems:
    """Collects cross-field problems of one model so they are raised together, each at its own path."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[InitErrorDetails] = []

    def add(self, loc: Loc, message: str, value: object = None) -> None:
        self.lines.append(InitErrorDetails(type=invalid(message), loc=loc, input=value))

    def raise_any(self) -> None:
        if self.lines:
            raise ValidationError.from_exception_data(self.title, self.lines)


def _public_bytes(key: PublicKeyTypes | CertificatePublicKeyTypes) -> bytes:
    """A public key in one canonical encoding, so keys of a certificate and a private key compare."""
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


# --- machine -----------------------------------------------------------------------------------


class CertAndKey(_Model):
    """A CA or leaf certificate with its private key, each the base64 of PEM text (as Talos does)."""

    crt: CertificatePEM
    key: PrivateKeyPEM | None = None

    @model_validator(mode="after")
    def _key_matches_certificate(self) -> Self:
        key = self.private_key()
        if key is not None and _public_bytes(key.public_key()) != _public_bytes(
            self.certificate().public_key()
        ):
            problems = _Problems(type(self).__name__)
            problems.add(("key",), "expected the private key of the certificate in crt, got a different key")
            problems.raise_any()
        return self

    @property
    def crt_pem(self) -> bytes:
        """The certificate as PEM bytes."""
        return self.certificate().public_bytes(Encoding.PEM)

    def certificate(self) -> x509.Certificate:
        """The parsed certificate."""
        return load_certificate(self.crt)

    def private_key(self) -> PrivateKeyTypes | None:
        """The parsed private key, or None when the config carries only the certificate."""
        return None if self.key is None else load_private_key(self.key)


class KeyPair(CertAndKey):
    """A certificate whose private key must be present (a server identity)."""

    key: PrivateKeyPEM


class Trustd(_Model):
    """Where this node finds trustd to get its certificates signed."""

    endpoints: list[HttpsEndpoint] = []


class Route(_Model):
    """A static route; without a gateway the network is reached directly on the link."""

    network: Network
    gateway: IPAddressField | None = None
    metric: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None

    @model_validator(mode="after")
    def _same_family(self) -> Self:
        if self.gateway is not None and self.gateway.version != self.network.version:
            problems = _Problems("Route")
            problems.add(
                ("gateway",),
                f"expected an IPv{self.network.version} gateway for network {self.network}, "
                f"got {self.gateway}",
                str(self.gateway),
            )
            problems.raise_any()
        return self


class NetworkInterface(_Model):
    """One link: configured either by DHCP or with a static address, never both."""

    name: InterfaceName
    dhcp: bool | None = None
    cidr: CIDR | None = None
    mtu: Annotated[int, Field(ge=68, le=9216)] | None = None
    routes: list[Route] = []

    @model_validator(mode="after")
    def _dhcp_xor_cidr(self) -> Self:
        problems = _Problems("NetworkInterface")
        if self.dhcp and self.cidr is not None:
            problems.add(("cidr",), f"expected either dhcp: true or a cidr, got both (cidr {self.cidr})")
        elif not self.dhcp and self.cidr is None:
            problems.add((), "expected either dhcp: true or a cidr, got neither")
        problems.raise_any()
        return self


class MachineNetwork(_Model):
    """Host name, links and resolvers of the node."""

    hostname: Hostname | None = None
    dhcp_timeout: Duration | None = None
    interfaces: list[NetworkInterface] = []
    nameservers: list[IPAddressField] = []

    @model_validator(mode="after")
    def _unique_interfaces(self) -> Self:
        problems = _Problems("MachineNetwork")
        first: dict[str, int] = {}
        for index, interface in enumerate(self.interfaces):
            if interface.name in first:
                problems.add(
                    ("interfaces", index, "name"),
                    f"expected a unique interface name, got {interface.name!r} "
                    f"again (already at interfaces[{first[interface.name]}])",
                    interface.name,
                )
            first.setdefault(interface.name, index)
        problems.raise_any()
        return self


class Install(_Model):
    """How the node installs itself onto a disk (bare metal)."""

    disk: DiskPath | None = None
    wipe: bool = False
    extra_kernel_args: list[KernelArg] = []


class MachineFile(_Model):
    """A file written at boot; only /var is writable on the immutable root."""

    path: VarPath
    content: str
    permissions: FileMode = 0o644
    op: Annotated[FileOp, Field(strict=False)] = FileOp.CREATE


class Machine(_Model):
    """Everything about this node: its role, OS PKI, network, install and host tweaks."""

    type: Annotated[MachineType, Field(strict=False)]
    token: Token
    ca: CertAndKey
    identity: KeyPair | None = None
    cert_sans: list[SubjectAltName] = Field(default=[], alias="certSANs")
    trustd: Trustd | None = None
    network: MachineNetwork | None = None
    install: Install | None = None
    files: list[MachineFile] = []
    env: dict[EnvName, ScalarStr] = {}
    sysctls: dict[SysctlName, ScalarStr] = {}

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = _Problems("Machine")
        if self.identity is not None:
            try:
                self.identity.certificate().verify_directly_issued_by(self.ca.certificate())
            except Exception:  # ValueError (issuer name), InvalidSignature, TypeError (key type)
                problems.add(
                    ("identity", "crt"),
                    "expected a certificate signed by machine.ca, got one that machine.ca did not issue",
                )
        created: dict[str, int] = {}
        for index, file in enumerate(self.files):
            if file.op is FileOp.CREATE:
                if file.path in created:
                    problems.add(
                        ("files", index, "path"),
                        f"expected each path to be created once, got {file.path!r} again "
                        f"(already created by files[{created[file.path]}])",
                        file.path,
                    )
                created.setdefault(file.path, index)
        problems.raise_any()
        return self


# --- cluster -----------------------------------------------------------------------------------


class ControlPlane(_Model):
    """How nodes reach the Kubernetes API server."""

    endpoint: HttpsEndpoint


NODE_CIDR_MASK = {4: 24, 6: 64}  # the controller manager's --node-cidr-mask-size defaults
SERVICE_MIN_PREFIX = {4: 12, 6: 108}  # kube-apiserver refuses a service range with more than 2^20 addresses


class ClusterNetwork(_Model):
    """Cluster DNS domain and the pod and service address ranges (which must not overlap)."""

    dns_domain: DNSDomain = "cluster.local"
    pod_subnets: Annotated[list[Network], Field(min_length=1)] = [IPv4Network("10.244.0.0/16")]
    service_subnets: Annotated[list[Network], Field(min_length=1)] = [IPv4Network("10.96.0.0/12")]

    @model_validator(mode="after")
    def _no_overlap(self) -> Self:
        problems = _Problems("ClusterNetwork")
        for index, pod in enumerate(self.pod_subnets):
            most = NODE_CIDR_MASK[pod.version]
            if pod.prefixlen > most:
                problems.add(
                    ("podSubnets", index),
                    f"expected a range of /{most} or larger (each node takes a /{most} of it), got {pod}",
                    str(pod),
                )
        for index, service in enumerate(self.service_subnets):
            least = SERVICE_MIN_PREFIX[service.version]
            if service.prefixlen < least:
                problems.add(
                    ("serviceSubnets", index),
                    f"expected a range of /{least} or smaller (the API server refuses larger ones), got {service}",
                    str(service),
                )
        for index, service in enumerate(self.service_subnets):
            for pod_index, pod in enumerate(self.pod_subnets):
                if service.version == pod.version and service.overlaps(pod):
                    problems.add(
                        ("serviceSubnets", index),
                        f"expected a range apart from the pod subnets, got {service} "
                        f"which overlaps podSubnets[{pod_index}] {pod}",
                        str(service),
                    )
        problems.raise_any()
        return self


class KubernetesImages(_Model):
    """Image overrides; anything left out follows the Kubernetes version (see ``effective_images``)."""

    api_server: ImageRef | None = None
    controller_manager: ImageRef | None = None
    scheduler: ImageRef | None = None
    proxy: ImageRef | None = None
    kubelet: ImageRef | None = None
    etcd: ImageRef | None = None
    coredns: ImageRef | None = None
    pause: ImageRef | None = None


@dataclass(frozen=True)
class EffectiveImages:
    """The image each component really runs: the override when given, else the default for the version."""

    api_server: str
    controller_manager: str
    scheduler: str
    proxy: str
    kubelet: str
    etcd: str
    coredns: str
    pause: str


class ExtraArgs(_Model):
    """Extra command-line flags per component, flag name (without dashes) to value."""

    kubelet: dict[ArgName, ScalarStr] = {}
    api_server: dict[ArgName, ScalarStr] = {}
    controller_manager: dict[ArgName, ScalarStr] = {}
    scheduler: dict[ArgName, ScalarStr] = {}


class Kubernetes(_Model):
    """Kubernetes version, images, registry mirrors, API certificate names and extra flags."""

    version: KubernetesVersion = DEFAULT_KUBERNETES_VERSION
    images: KubernetesImages = KubernetesImages()
    registry_mirrors: dict[RegistryHost, Annotated[list[HttpURL], Field(min_length=1)]] = {}
    cert_sans: list[SubjectAltName] = Field(default=[], alias="certSANs")
    extra_args: ExtraArgs = ExtraArgs()

    @model_validator(mode="after")
    def _baked_version(self) -> Self:
        if self.version != versions.KUBERNETES:
            problems = _Problems("Kubernetes")
            problems.add(
                ("version",),
                f"expected {versions.KUBERNETES} (the Kubernetes this talos-os release carries), got {self.version}",
                self.version,
            )
            problems.raise_any()
        return self

    @property
    def effective_images(self) -> EffectiveImages:
        """Image references after applying the version-derived defaults."""
        version, given = self.version, self.images
        return EffectiveImages(
            api_server=given.api_server or f"registry.k8s.io/kube-apiserver:{version}",
            controller_manager=given.controller_manager
            or f"registry.k8s.io/kube-controller-manager:{version}",
            scheduler=given.scheduler or f"registry.k8s.io/kube-scheduler:{version}",
            proxy=given.proxy or f"registry.k8s.io/kube-proxy:{version}",
            kubelet=given.kubelet or f"ghcr.io/siderolabs/kubelet:{version}",
            etcd=given.etcd or DEFAULT_ETCD_IMAGE,
            coredns=given.coredns or DEFAULT_COREDNS_IMAGE,
            pause=given.pause or DEFAULT_PAUSE_IMAGE,
        )


class ServiceAccount(_Model):
    """The key that signs service account tokens."""

    key: PrivateKeyPEM


class Cluster(_Model):
    """Everything shared by the nodes of one cluster; the private keys only on control planes."""

    name: ClusterName
    control_plane: ControlPlane
    network: ClusterNetwork = ClusterNetwork()
    token: Token
    aescbc_encryption_secret: AESCBCSecret | None = None
    ca: CertAndKey
    service_account: ServiceAccount | None = None
    front_proxy_ca: CertAndKey | None = Field(default=None, alias="frontProxyCA")
    etcd_ca: CertAndKey | None = Field(default=None, alias="etcdCA")
    kubernetes: Kubernetes = Kubernetes()


# --- the document ------------------------------------------------------------------------------


class MachineConfig(_Model):
    """A whole machine config document (version v1).

    Validate with a ``{"mode": Mode.METAL}`` context (``loads(..., mode=...)`` does) to also apply the
    rules of an install mode.
    """

    version: Literal["v1"]
    debug: bool = False
    machine: Machine
    cluster: Cluster

    @property
    def is_control_plane(self) -> bool:
        """True for init and controlplane nodes."""
        return self.machine.type.is_control_plane

    @model_validator(mode="wrap")
    @classmethod
    def _validate_everything(
        cls, data: Any, handler: ModelWrapValidatorHandler[Self], info: ValidationInfo
    ) -> Self:
        """Run field validation and the role/mode rules, and report all their problems together."""
        if isinstance(data, cls):
            return handler(data)
        context = info.context if isinstance(info.context, dict) else {}
        extra = [*role_problems(data), *mode_problems(data, context.get("mode"))]
        errors: list[InitErrorDetails] = []
        result: Self | None = None
        try:
            result = handler(data)
        except ValidationError as exc:
            for index, error in enumerate(exc.errors()):
                # Suggestions (difflib) only for the errors anyone will read: a document of
                # thousands of unknown keys must not cost seconds.
                allowed = allowed_keys(cls, error["loc"][:-1]) if index < SUGGESTED else None
                message = message_for(error, allowed)
                errors.append(
                    InitErrorDetails(
                        type=invalid(message, error["type"]), loc=error["loc"], input=error["input"]
                    )
                )
        if result is not None and not extra:
            return result
        errors.extend(InitErrorDetails(type=invalid(msg), loc=loc, input=None) for loc, msg in extra)
        raise ValidationError.from_exception_data(cls.__name__, errors)
