"""One test per validation rule: the issue names the exact YAML path and says what was expected."""

import base64
from typing import Any

import pytest
import yaml

from talos_os.config import ConfigIssue, Mode, loads

D = object()  # placeholder replaced by the conftest DELETE sentinel
# A well-formed PEM block whose content is not a DER certificate.
BAD_DER_CERT = base64.b64encode(
    b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n"
).decode()


def _check(
    helpers: Any,
    base: dict[str, Any],
    edits: dict[str, Any],
    path: str,
    fragment: str,
    mode: Mode | None = None,
) -> ConfigIssue:
    edits = {k: (helpers.DELETE if v is D else v) for k, v in edits.items()}
    issues = helpers.issues_of(helpers.edit(base, edits), mode=mode)
    matching = [i for i in issues if i.path == path]
    assert matching, f"no issue at {path}; got {[str(i) for i in issues]}"
    assert any(fragment in i.message for i in matching), [str(i) for i in matching]
    return matching[0]


# (edits applied to the valid controlplane config, expected path, message fragment)
CONTROLPLANE_RULES: list[tuple[str, dict[str, Any], str, str]] = [
    # document
    ("version-missing", {"version": D}, "version", "missing required key 'version'"),
    ("version-other", {"version": "v2"}, "version", "expected one of 'v1', got 'v2'"),
    ("version-int", {"version": 1}, "version", "got integer 1"),
    ("debug-not-bool", {"debug": "yes"}, "debug", "expected true or false, got 'yes'"),
    ("unknown-top-key", {"extra": 1}, "extra", "unknown key 'extra'"),
    ("machine-missing", {"machine": D}, "machine", "missing required key 'machine'"),
    ("machine-not-mapping", {"machine": "worker"}, "machine", "expected a mapping, got 'worker'"),
    ("cluster-list", {"cluster": [1]}, "cluster", "expected a mapping, got a list of 1 item"),
    ("unknown-key-typo", {"machine.certSans": []}, "machine.certSans", "did you mean 'certSANs'?"),
    (
        "unknown-nested-key",
        {"machine.network.interfaces[0].ip": "x"},
        "machine.network.interfaces[0].ip",
        "unknown key 'ip'",
    ),
    # machine.type / token
    (
        "type-bad",
        {"machine.type": "master"},
        "machine.type",
        "expected one of 'init', 'controlplane' or 'worker'",
    ),
    ("type-missing", {"machine.type": D}, "machine.type", "missing required key 'type'"),
    ("token-bad", {"machine.token": "ABCDEF.0123456789abcdef"}, "machine.token", "[a-z0-9]{6}.[a-z0-9]{16}"),
    ("token-missing", {"machine.token": D}, "machine.token", "missing required key"),
    ("token-int", {"machine.token": 5}, "machine.token", "got integer 5"),
    # certificates and keys
    ("crt-missing", {"machine.ca.crt": D}, "machine.ca.crt", "missing required key 'crt'"),
    ("crt-not-base64", {"machine.ca.crt": "not base64!"}, "machine.ca.crt", "not valid base64"),
    ("crt-raw-pem", {"machine.ca.crt": "-----BEGIN CERTIFICATE-----\nabc"}, "machine.ca.crt", "raw PEM"),
    ("crt-not-pem", {"machine.ca.crt": "aGVsbG8="}, "machine.ca.crt", "no PEM certificate block"),
    (
        "crt-bad-der",
        {"machine.ca.crt": BAD_DER_CERT},
        "machine.ca.crt",
        "does not parse",
    ),
    ("key-not-key", {"machine.ca.key": "aGVsbG8="}, "machine.ca.key", "base64 of a PEM private key"),
    (
        "cluster-crt-int",
        {"cluster.ca.crt": 12},
        "cluster.ca.crt",
        "expected base64 of a PEM certificate, got integer 12",
    ),
    ("ca-missing", {"cluster.ca": D}, "cluster.ca", "missing required key 'ca'"),
    ("identity-no-key", {"machine.identity.key": D}, "machine.identity.key", "missing required key 'key'"),
    # lists of names
    (
        "certsans-bad",
        {"machine.certSANs": ["10.5.0.2", "not a name"]},
        "machine.certSANs[1]",
        "IP address or DNS name",
    ),
    (
        "certsans-not-list",
        {"machine.certSANs": "10.5.0.2"},
        "machine.certSANs",
        "expected a list, got '10.5.0.2'",
    ),
    (
        "k8s-certsans-bad",
        {"cluster.kubernetes.certSANs": ["-x-"]},
        "cluster.kubernetes.certSANs[0]",
        "DNS name",
    ),
    # endpoints
    (
        "trustd-http",
        {"machine.trustd.endpoints": ["http://10.5.0.2:50001"]},
        "machine.trustd.endpoints[0]",
        "scheme must be https",
    ),
    (
        "trustd-no-port",
        {"machine.trustd.endpoints": ["https://10.5.0.2"]},
        "machine.trustd.endpoints[0]",
        "no explicit port",
    ),
    (
        "endpoint-path",
        {"cluster.controlPlane.endpoint": "https://a.b:6443/x"},
        "cluster.controlPlane.endpoint",
        "must not have a path",
    ),
    (
        "endpoint-no-port",
        {"cluster.controlPlane.endpoint": "https://10.5.0.2"},
        "cluster.controlPlane.endpoint",
        "an https URL with an explicit port",
    ),
    (
        "endpoint-bad-port",
        {"cluster.controlPlane.endpoint": "https://10.5.0.2:99999"},
        "cluster.controlPlane.endpoint",
        "cannot be parsed",
    ),
    (
        "endpoint-missing",
        {"cluster.controlPlane": {}},
        "cluster.controlPlane.endpoint",
        "missing required key",
    ),
    # machine network
    (
        "hostname-bad",
        {"machine.network.hostname": "-node-"},
        "machine.network.hostname",
        "RFC 1123 host name",
    ),
    ("hostname-long-label", {"machine.network.hostname": "a" * 64}, "machine.network.hostname", "RFC 1123"),
    (
        "hostname-too-long",
        {"machine.network.hostname": ".".join(["a" * 60] * 5)},
        "machine.network.hostname",
        "RFC 1123",
    ),
    (
        "timeout-no-unit",
        {"machine.network.dhcpTimeout": "30"},
        "machine.network.dhcpTimeout",
        "duration like 300ms",
    ),
    (
        "timeout-int",
        {"machine.network.dhcpTimeout": 30},
        "machine.network.dhcpTimeout",
        "got integer 30 (add a unit)",
    ),
    (
        "timeout-zero",
        {"machine.network.dhcpTimeout": "0s"},
        "machine.network.dhcpTimeout",
        "a positive duration",
    ),
    ("timeout-negative", {"machine.network.dhcpTimeout": "-5s"}, "machine.network.dhcpTimeout", "positive"),
    (
        "ifname-slash",
        {"machine.network.interfaces[0].name": "eth/0"},
        "machine.network.interfaces[0].name",
        "interface name",
    ),
    (
        "ifname-long",
        {"machine.network.interfaces[0].name": "a" * 16},
        "machine.network.interfaces[0].name",
        "1 to 15",
    ),
    (
        "ifname-space",
        {"machine.network.interfaces[0].name": "eth 0"},
        "machine.network.interfaces[0].name",
        "without",
    ),
    (
        "ifname-missing",
        {"machine.network.interfaces[1].name": D},
        "machine.network.interfaces[1].name",
        "missing",
    ),
    (
        "cidr-bad",
        {"machine.network.interfaces[0].cidr": "foo"},
        "machine.network.interfaces[0].cidr",
        "expected an IPv4 or IPv6 address with prefix length like 10.5.0.3/24, got 'foo'",
    ),
    (
        "cidr-no-prefix",
        {"machine.network.interfaces[0].cidr": "10.5.0.3"},
        "machine.network.interfaces[0].cidr",
        "with prefix length",
    ),
    (
        "cidr-bad-prefix",
        {"machine.network.interfaces[0].cidr": "10.5.0.3/33"},
        "machine.network.interfaces[0].cidr",
        "got '10.5.0.3/33'",
    ),
    (
        "dhcp-and-cidr",
        {"machine.network.interfaces[0].dhcp": True},
        "machine.network.interfaces[0].cidr",
        "got both",
    ),
    (
        "dhcp-nor-cidr",
        {"machine.network.interfaces[0].cidr": D},
        "machine.network.interfaces[0]",
        "got neither",
    ),
    (
        "dhcp-false-nor-cidr",
        {"machine.network.interfaces[1].dhcp": False},
        "machine.network.interfaces[1]",
        "either dhcp: true or a cidr",
    ),
    (
        "dhcp-string",
        {"machine.network.interfaces[1].dhcp": "true"},
        "machine.network.interfaces[1].dhcp",
        "expected true or false, got 'true'",
    ),
    (
        "mtu-low",
        {"machine.network.interfaces[0].mtu": 20},
        "machine.network.interfaces[0].mtu",
        "at least 68, got integer 20",
    ),
    (
        "mtu-high",
        {"machine.network.interfaces[0].mtu": 10000},
        "machine.network.interfaces[0].mtu",
        "at most 9216",
    ),
    (
        "mtu-string",
        {"machine.network.interfaces[0].mtu": "1500"},
        "machine.network.interfaces[0].mtu",
        "expected an integer, got '1500'",
    ),
    (
        "mtu-bool",
        {"machine.network.interfaces[0].mtu": True},
        "machine.network.interfaces[0].mtu",
        "got boolean true",
    ),
    (
        "route-host-bits",
        {"machine.network.interfaces[0].routes[0].network": "10.1.2.3/8"},
        "machine.network.interfaces[0].routes[0].network",
        "did you mean 10.0.0.0/8?",
    ),
    (
        "route-network-missing",
        {"machine.network.interfaces[0].routes[0].network": D},
        "machine.network.interfaces[0].routes[0].network",
        "missing",
    ),
    (
        "route-gateway-bad",
        {"machine.network.interfaces[0].routes[0].gateway": "10.5.0.1/24"},
        "machine.network.interfaces[0].routes[0].gateway",
        "takes no /prefix",
    ),
    (
        "route-gateway-family",
        {"machine.network.interfaces[0].routes[0].gateway": "fd00::1"},
        "machine.network.interfaces[0].routes[0].gateway",
        "expected an IPv4 gateway",
    ),
    (
        "route-metric-negative",
        {"machine.network.interfaces[0].routes[0].metric": -1},
        "machine.network.interfaces[0].routes[0].metric",
        "at least 0",
    ),
    (
        "interface-duplicate",
        {"machine.network.interfaces[1].name": "eth0"},
        "machine.network.interfaces[1].name",
        "unique interface name, got 'eth0' again",
    ),
    (
        "nameserver-bad",
        {"machine.network.nameservers": ["1.1.1"]},
        "machine.network.nameservers[0]",
        "IPv4 or IPv6 address",
    ),
    # install
    (
        "disk-relative",
        {"machine.install.disk": "sda"},
        "machine.install.disk",
        "absolute device path under /dev/",
    ),
    ("disk-escape", {"machine.install.disk": "/dev/../etc/passwd"}, "machine.install.disk", "under /dev/"),
    ("disk-bare-dev", {"machine.install.disk": "/dev/"}, "machine.install.disk", "under /dev/"),
    (
        "kernel-arg-space",
        {"machine.install.extraKernelArgs": ["a b"]},
        "machine.install.extraKernelArgs[0]",
        "without spaces",
    ),
    ("wipe-not-bool", {"machine.install.wipe": "no"}, "machine.install.wipe", "expected true or false"),
    # files
    (
        "file-relative",
        {"machine.files[0].path": "etc/foo"},
        "machine.files[0].path",
        "absolute path under /var/",
    ),
    ("file-outside-var", {"machine.files[0].path": "/etc/foo"}, "machine.files[0].path", "read-only"),
    ("file-dotdot", {"machine.files[0].path": "/var/../etc/foo"}, "machine.files[0].path", "under /var/"),
    (
        "file-op",
        {"machine.files[0].op": "delete"},
        "machine.files[0].op",
        "expected one of 'create' or 'append'",
    ),
    (
        "file-mode-high",
        {"machine.files[0].permissions": 0o10000},
        "machine.files[0].permissions",
        "0 to 0o7777",
    ),
    (
        "file-mode-text",
        {"machine.files[0].permissions": "rw-r--r--"},
        "machine.files[0].permissions",
        "like 0o644",
    ),
    (
        "file-content-int",
        {"machine.files[0].content": 5},
        "machine.files[0].content",
        "expected a string, got integer 5",
    ),
    (
        "file-content-missing",
        {"machine.files[0].content": D},
        "machine.files[0].content",
        "missing required key",
    ),
    (
        "file-created-twice",
        {"machine.files[1]": {"path": "/var/etc/foo.conf", "content": ""}},
        "machine.files[1].path",
        "created once",
    ),
    # env and sysctls
    ("env-key", {'machine.env["1BAD"]': "x"}, 'machine.env["1BAD"]', "environment variable name"),
    ("env-value-list", {"machine.env.HTTP_PROXY": ["a"]}, "machine.env.HTTP_PROXY", "expected a string"),
    ("env-value-float", {"machine.env.HTTP_PROXY": 1.5}, "machine.env.HTTP_PROXY", "(quote it)"),
    ("env-not-mapping", {"machine.env": ["A=b"]}, "machine.env", "expected a mapping"),
    ("sysctl-key-upper", {'machine.sysctls["Net.IPv4"]': "1"}, 'machine.sysctls["Net.IPv4"]', "sysctl name"),
    (
        "sysctl-key-dotdot",
        {'machine.sysctls["net/../../x"]': "1"},
        'machine.sysctls["net/../../x"]',
        "sysctl name",
    ),
    (
        "sysctl-value-null",
        {'machine.sysctls["net.ipv4.ip_forward"]': None},
        'machine.sysctls["net.ipv4.ip_forward"]',
        "got null",
    ),
    # cluster
    ("cluster-name", {"cluster.name": "Demo_1"}, "cluster.name", "got 'Demo_1'"),
    ("cluster-name-long", {"cluster.name": "a" * 64}, "cluster.name", "at most 63"),
    ("cluster-name-list", {"cluster.name": ["demo"]}, "cluster.name", "got a list of 1 item"),
    ("cluster-token", {"cluster.token": "short.token"}, "cluster.token", "a token of the form"),
    (
        "pod-subnet-host-bits",
        {"cluster.network.podSubnets": ["10.244.0.1/16"]},
        "cluster.network.podSubnets[0]",
        "host bits set",
    ),
    (
        "pod-subnets-empty",
        {"cluster.network.podSubnets": []},
        "cluster.network.podSubnets",
        "at least 1 item",
    ),
    (
        "service-subnet-bad",
        {"cluster.network.serviceSubnets": ["10.96.0.0"]},
        "cluster.network.serviceSubnets[0]",
        "CIDR network",
    ),
    (
        "subnets-overlap",
        {"cluster.network.serviceSubnets": ["10.244.128.0/20"]},
        "cluster.network.serviceSubnets[0]",
        "overlaps podSubnets[0]",
    ),
    (
        "dns-domain",
        {"cluster.network.dnsDomain": "cluster..local"},
        "cluster.network.dnsDomain",
        "DNS domain",
    ),
    (
        "aescbc-length",
        {"cluster.aescbcEncryptionSecret": "AAAAAAAAAAAAAAAAAAAAAA=="},
        "cluster.aescbcEncryptionSecret",
        "holding 16 bytes",
    ),
    (
        "aescbc-not-base64",
        {"cluster.aescbcEncryptionSecret": "%%%"},
        "cluster.aescbcEncryptionSecret",
        "not valid base64",
    ),
    ("sa-key-missing", {"cluster.serviceAccount": {}}, "cluster.serviceAccount.key", "missing required key"),
    (
        "k8s-version",
        {"cluster.kubernetes.version": "1.30.2"},
        "cluster.kubernetes.version",
        "vMAJOR.MINOR.PATCH",
    ),
    (
        "k8s-version-float",
        {"cluster.kubernetes.version": 1.3},
        "cluster.kubernetes.version",
        "got number 1.3",
    ),
    (
        "image-no-tag",
        {"cluster.kubernetes.images.apiServer": "registry.k8s.io/kube-apiserver"},
        "cluster.kubernetes.images.apiServer",
        "with a tag or digest",
    ),
    (
        "image-bad-digest",
        {"cluster.kubernetes.images.etcd": "registry.k8s.io/etcd@sha256:abc"},
        "cluster.kubernetes.images.etcd",
        "image reference",
    ),
    (
        "image-upper",
        {"cluster.kubernetes.images.pause": "registry.k8s.io/Pause:3.9"},
        "cluster.kubernetes.images.pause",
        "image reference",
    ),
    (
        "image-unknown",
        {"cluster.kubernetes.images.kubeProxy": "a/b:c"},
        "cluster.kubernetes.images.kubeProxy",
        "unknown key 'kubeProxy'",
    ),
    (
        "mirror-scheme",
        {"cluster.kubernetes.registryMirrors": {"docker.io": ["ftp://m:1"]}},
        'cluster.kubernetes.registryMirrors["docker.io"][0]',
        "http or https URL",
    ),
    (
        "mirror-empty",
        {"cluster.kubernetes.registryMirrors": {"docker.io": []}},
        'cluster.kubernetes.registryMirrors["docker.io"]',
        "at least 1 item",
    ),
    (
        "mirror-host",
        {"cluster.kubernetes.registryMirrors": {"docker io": ["https://m"]}},
        'cluster.kubernetes.registryMirrors["docker io"]',
        "registry host",
    ),
    (
        "extra-arg-dashes",
        {"cluster.kubernetes.extraArgs.kubelet": {"--v": "2"}},
        'cluster.kubernetes.extraArgs.kubelet["--v"]',
        "drop the leading dashes",
    ),
    (
        "extra-arg-component",
        {"cluster.kubernetes.extraArgs.etcd": {}},
        "cluster.kubernetes.extraArgs.etcd",
        "unknown key 'etcd'",
    ),
    (
        "extra-arg-value",
        {"cluster.kubernetes.extraArgs.kubelet": {"v": {"a": 1}}},
        "cluster.kubernetes.extraArgs.kubelet.v",
        "expected a string",
    ),
]


@pytest.mark.parametrize(
    ("edits", "path", "fragment"),
    [pytest.param(e, p, f, id=i) for i, e, p, f in CONTROLPLANE_RULES],
)
def test_controlplane_rule(
    helpers: Any, controlplane: dict[str, Any], edits: dict[str, Any], path: str, fragment: str
) -> None:
    _check(helpers, controlplane, edits, path, fragment)


def test_key_must_match_certificate(helpers: Any, controlplane: dict[str, Any], pki: Any) -> None:
    issue = _check(
        helpers, controlplane, {"cluster.ca.key": pki.os_ca.key}, "cluster.ca.key", "different key"
    )
    assert "private key of the certificate in crt" in issue.message


def test_encrypted_key_rejected(helpers: Any, controlplane: dict[str, Any], pki: Any) -> None:
    _check(helpers, controlplane, {"machine.ca.key": pki.encrypted_key}, "machine.ca.key", "encrypted key")


def test_identity_must_be_signed_by_machine_ca(helpers: Any, controlplane: dict[str, Any], pki: Any) -> None:
    # other_ca has the same subject as the OS CA, so only the signature check can tell them apart.
    edits = {"machine.ca": pki.other_ca.as_dict()}
    _check(helpers, controlplane, edits, "machine.identity.crt", "signed by machine.ca")


def test_identity_from_unrelated_issuer(helpers: Any, controlplane: dict[str, Any], pki: Any) -> None:
    _check(
        helpers,
        controlplane,
        {"machine.identity": pki.k8s_ca.as_dict()},
        "machine.identity.crt",
        "did not issue",
    )


def test_secret_values_are_not_echoed(helpers: Any, controlplane: dict[str, Any], pki: Any) -> None:
    secret = pki.service_account_key[:40] + "!"
    issue = _check(
        helpers, controlplane, {"cluster.serviceAccount.key": secret}, "cluster.serviceAccount.key", ""
    )
    assert secret[:20] not in issue.message
    assert "41-character string" in issue.message


# --- roles -------------------------------------------------------------------------------------

WORKER_FORBIDDEN = [
    ("machine.ca.key", "OS CA private key"),
    ("cluster.ca.key", "Kubernetes CA private key"),
    ("cluster.serviceAccount", "service account key"),
    ("cluster.aescbcEncryptionSecret", "secrets encryption key"),
    ("cluster.frontProxyCA", "front proxy CA"),
    ("cluster.etcdCA", "etcd CA"),
]


@pytest.mark.parametrize(("path", "what"), WORKER_FORBIDDEN)
def test_worker_must_not_carry_control_plane_secrets(
    helpers: Any, worker: dict[str, Any], controlplane: dict[str, Any], path: str, what: str
) -> None:
    steps = helpers.parse_path(path)
    value: Any = controlplane
    for step in steps:
        value = value[step]
    issue = _check(helpers, worker, {path: value}, path, f"expected no {what} on a worker node")
    assert issue.line is not None


@pytest.mark.parametrize("role", ["init", "controlplane"])
@pytest.mark.parametrize(
    ("path", "what"),
    [
        *WORKER_FORBIDDEN,
        ("cluster.frontProxyCA.key", "front proxy CA key"),
        ("cluster.etcdCA.key", "etcd CA key"),
    ],
)
def test_control_planes_require_secrets(
    helpers: Any, controlplane: dict[str, Any], role: str, path: str, what: str
) -> None:
    edits = {"machine.type": role, path: D}
    _check(helpers, controlplane, edits, path, f"missing {what}, which {role} nodes require")


def test_worker_with_all_secrets_reports_each(helpers: Any, controlplane: dict[str, Any]) -> None:
    issues = helpers.issues_of(helpers.edit(controlplane, {"machine.type": "worker"}))
    assert sorted(i.path for i in issues) == sorted(p for p, _ in WORKER_FORBIDDEN)


def test_valid_worker_and_init(worker: dict[str, Any], controlplane: dict[str, Any], helpers: Any) -> None:
    assert loads(yaml.safe_dump(worker)).machine.ca.key is None
    init = helpers.edit(controlplane, {"machine.type": "init"})
    assert loads(yaml.safe_dump(init)).is_control_plane


# --- install mode ------------------------------------------------------------------------------


def test_metal_requires_install_disk(helpers: Any, controlplane: dict[str, Any]) -> None:
    _check(
        helpers,
        controlplane,
        {"machine.install": D},
        "machine.install.disk",
        "metal mode requires",
        Mode.METAL,
    )


def test_metal_requires_disk_inside_install(helpers: Any, worker: dict[str, Any]) -> None:
    _check(
        helpers,
        worker,
        {"machine.install.disk": D},
        "machine.install.disk",
        "missing install disk",
        Mode.METAL,
    )


def test_metal_accepts_disk(controlplane: dict[str, Any]) -> None:
    assert loads(yaml.safe_dump(controlplane), mode=Mode.METAL).machine.install is not None


@pytest.mark.parametrize("mode", [Mode.CLOUD, None])
def test_other_modes_need_no_disk(helpers: Any, controlplane: dict[str, Any], mode: Mode | None) -> None:
    config = helpers.edit(controlplane, {"machine.install": helpers.DELETE})
    assert loads(yaml.safe_dump(config), mode=mode).machine.install is None
