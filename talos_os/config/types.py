"""Field types of the machine config.

Each type checks one YAML value itself (no pydantic coercion) so that a mistake is reported as
"expected <what the format wants>, got <what the file has>" at the exact path of the value.
"""

import datetime
import ipaddress
import posixpath
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, NoReturn, TypeAlias
from urllib.parse import urlsplit

from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from talos_os.config.errors import describe, describe_secret, invalid
from talos_os.config.keys import decode_b64, parse_certificate_pem, parse_private_key_pem

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface: TypeAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TOKEN_RE = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
_CLUSTER_NAME_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_K8S_VERSION_RE = re.compile(r"v(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)(?:-[0-9A-Za-z.-]+)?")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYSCTL_KEY_RE = re.compile(r"[a-z0-9_][a-z0-9_./-]*")
_ARG_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_OCTAL_RE = re.compile(r"0o?[0-7]{1,4}")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS_US = {
    "ns": Decimal("0.001"),
    "us": Decimal(1),
    "µs": Decimal(1),
    "μs": Decimal(1),
    "ms": Decimal(1000),
    "s": Decimal(1_000_000),
    "m": Decimal(60_000_000),
    "h": Decimal(3_600_000_000),
}

# distribution/reference grammar (https://github.com/distribution/reference), ASCII-only.
_ALNUM = r"[a-z0-9]+"
_PATH_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_IMAGE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}))?"
)


def _need_str(value: object, expected: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"expected {expected}, got {describe(value)}")
    return value


def _fail(expected: str, value: object, *, secret: bool = False, hint: str = "") -> NoReturn:
    got = describe_secret(value) if secret else describe(value)
    raise invalid(f"expected {expected}, got {got}{hint}")


def is_dns_name(name: str, *, wildcard: bool = False) -> bool:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner dashes, 253 characters max."""
    if wildcard and name.startswith("*."):
        name = name[2:]
    return len(name) <= 253 and _DNS_NAME_RE.fullmatch(name) is not None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- tokens and names --------------------------------------------------------------------------

_TOKEN_EXPECTED = "a token of the form [a-z0-9]{6}.[a-z0-9]{16} like abcdef.0123456789abcdef"


def _token(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        _fail(_TOKEN_EXPECTED, value, secret=True)
    return value


_HOSTNAME_EXPECTED = "an RFC 1123 host name like node-1 (letters, digits, inner dashes, dot-separated)"


def _hostname(value: object) -> str:
    text = _need_str(value, _HOSTNAME_EXPECTED)
    if not is_dns_name(text):
        _fail(_HOSTNAME_EXPECTED, text)
    return text


_DNS_DOMAIN_EXPECTED = "a DNS domain like cluster.local"


def _dns_domain(value: object) -> str:
    text = _need_str(value, _DNS_DOMAIN_EXPECTED)
    if not is_dns_name(text):
        _fail(_DNS_DOMAIN_EXPECTED, text)
    return text


_SAN_EXPECTED = "an IP address or DNS name like 10.5.0.2 or node1.example"


def _san(value: object) -> str:
    text = _need_str(value, _SAN_EXPECTED)
    if not (_is_ip(text) or is_dns_name(text, wildcard=True)):
        _fail(_SAN_EXPECTED, text)
    return text


_CLUSTER_NAME_EXPECTED = "a cluster name of lowercase letters, digits and inner dashes (at most 63) like demo"


def _cluster_name(value: object) -> str:
    text = _need_str(value, _CLUSTER_NAME_EXPECTED)
    if len(text) > 63 or not _CLUSTER_NAME_RE.fullmatch(text):
        _fail(_CLUSTER_NAME_EXPECTED, text)
    return text


_IFNAME_EXPECTED = "a network interface name of 1 to 15 characters without '/', ':' or spaces like eth0"


def _ifname(value: object) -> str:
    text = _need_str(value, _IFNAME_EXPECTED)
    bad_char = any(c in "/:" or c.isspace() or not c.isprintable() for c in text)
    if not 1 <= len(text) <= 15 or text in (".", "..") or bad_char or not text.isascii():
        _fail(_IFNAME_EXPECTED, text)
    return text


_K8S_VERSION_EXPECTED = "a Kubernetes version vMAJOR.MINOR.PATCH like v1.36.3"


def _k8s_version(value: object) -> str:
    text = _need_str(value, _K8S_VERSION_EXPECTED)
    if not _K8S_VERSION_RE.fullmatch(text):
        _fail(_K8S_VERSION_EXPECTED, text)
    return text


_IMAGE_EXPECTED = (
    "an image reference with a tag or digest like registry.k8s.io/kube-apiserver:v1.36.3 "
    "or registry/repo@sha256:<64 hex digits>"
)


def _image(value: object) -> str:
    text = _need_str(value, _IMAGE_EXPECTED)
    match = _IMAGE_RE.fullmatch(text)
    if match is None or len(match["name"]) > 255 or not (match["tag"] or match["digest"]):
        _fail(_IMAGE_EXPECTED, text)
    return text


_KERNEL_ARG_EXPECTED = "a kernel argument without spaces like console=ttyS1"


def _kernel_arg(value: object) -> str:
    text = _need_str(value, _KERNEL_ARG_EXPECTED)
    if not text or not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        _fail(_KERNEL_ARG_EXPECTED, text)
    return text


_ENV_KEY_EXPECTED = "an environment variable name like HTTP_PROXY ([A-Za-z_][A-Za-z0-9_]*)"


def _env_key(value: object) -> str:
    text = _need_str(value, _ENV_KEY_EXPECTED)
    if not _ENV_KEY_RE.fullmatch(text):
        _fail(_ENV_KEY_EXPECTED, text)
    return text


_SYSCTL_KEY_EXPECTED = (
    "a sysctl name like net.ipv4.ip_forward (lowercase letters, digits, '_', '.', '-', '/')"
)


def _sysctl_key(value: object) -> str:
    text = _need_str(value, _SYSCTL_KEY_EXPECTED)
    # '/' separates the parts of names holding dots (net/ipv4/conf/eth0.100/forwarding); forbid empty
    # and parent parts so a name can never point outside /proc/sys.
    parts = re.split(r"[./]", text)
    if not _SYSCTL_KEY_RE.fullmatch(text) or "" in parts or ".." in text:
        _fail(_SYSCTL_KEY_EXPECTED, text)
    return text


_ARG_NAME_EXPECTED = "a flag name without leading dashes like feature-gates"


def _arg_name(value: object) -> str:
    text = _need_str(value, _ARG_NAME_EXPECTED)
    if not _ARG_NAME_RE.fullmatch(text):
        hint = " (drop the leading dashes)" if text.startswith("-") else ""
        _fail(_ARG_NAME_EXPECTED, text, hint=hint)
    return text


_SCALAR_EXPECTED = "a string (integers and booleans are accepted and turned into strings)"


def _scalar_str(value: object) -> str:
    # env, sysctl and flag values are strings on the node, but `ip_forward: 1` is too common to reject.
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    hint = " (quote it)" if isinstance(value, float) else ""
    return _fail(_SCALAR_EXPECTED, value, hint=hint)


# --- paths -------------------------------------------------------------------------------------

_DISK_EXPECTED = "an absolute device path under /dev/ like /dev/sda"


def _disk(value: object) -> str:
    text = _need_str(value, _DISK_EXPECTED)
    if not _clean_path_under(text, "/dev/"):
        _fail(_DISK_EXPECTED, text)
    return text


_VAR_PATH_EXPECTED = "an absolute path under /var/ like /var/etc/foo.conf (the rest of the root is read-only)"


def _var_path(value: object) -> str:
    text = _need_str(value, _VAR_PATH_EXPECTED)
    if not _clean_path_under(text, "/var/"):
        _fail(_VAR_PATH_EXPECTED, text)
    return text


def _clean_path_under(path: str, prefix: str) -> bool:
    """True for a normalised absolute path strictly below ``prefix`` (no '..', '//', trailing '/')."""
    return (
        path.startswith(prefix)
        and len(path) > len(prefix)
        and posixpath.normpath(path) == path
        and "\x00" not in path
        and path.isprintable()
    )


_PERMISSIONS_EXPECTED = "file permissions as an integer from 0 to 0o7777 like 0o644"


def _permissions(value: object) -> int:
    # YAML 1.1 reads 0644 as an integer but 0o644 as a string; both spellings mean the same mode.
    if isinstance(value, str) and _OCTAL_RE.fullmatch(value):
        return int(value.replace("o", ""), 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        _fail(_PERMISSIONS_EXPECTED, value)
    return value


# --- networking --------------------------------------------------------------------------------

_IP_EXPECTED = "an IPv4 or IPv6 address like 10.5.0.1"


def _ip(value: object) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    text = _need_str(value, _IP_EXPECTED)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        hint = " (an address takes no /prefix)" if "/" in text else ""
        return _fail(_IP_EXPECTED, text, hint=hint)


_CIDR_EXPECTED = "an IPv4 or IPv6 address with prefix length like 10.5.0.3/24"


def _cidr(value: object) -> IPInterface:
    if isinstance(value, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return value
    text = _need_str(value, _CIDR_EXPECTED)
    if "/" in text:
        try:
            return ipaddress.ip_interface(text)
        except ValueError:
            pass
    return _fail(_CIDR_EXPECTED, text)


_NETWORK_EXPECTED = "a CIDR network like 10.244.0.0/16"


def _network(value: object) -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    text = _need_str(value, _NETWORK_EXPECTED)
    if "/" in text:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                fixed = ipaddress.ip_network(text, strict=False)
            except ValueError:
                pass
            else:
                _fail(_NETWORK_EXPECTED, text, hint=f" with host bits set (did you mean {fixed}?)")
    return _fail(_NETWORK_EXPECTED, text)


def _url_problem(text: str, *, schemes: tuple[str, ...], need_port: bool, allow_path: bool) -> str | None:
    """Why ``text`` is not an acceptable URL, or None when it is."""
    if not text.isprintable() or any(c.isspace() for c in text):
        return "contains spaces or control characters"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        return f"cannot be parsed ({exc})"
    if parts.scheme not in schemes:
        return f"scheme must be {' or '.join(schemes)}"
    host = parts.hostname or ""
    if not host or not (_is_ip(host) or is_dns_name(host)):
        return "has no valid host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if need_port and port is None:
        return "has no explicit port"
    if port == 0:
        return "has port 0"
    if not allow_path and (parts.path not in ("", "/") or parts.query or parts.fragment):
        return "must not have a path, query or fragment"
    return None


_ENDPOINT_EXPECTED = "an https URL with an explicit port like https://10.5.0.2:6443"


def _https_endpoint(value: object) -> str:
    text = _need_str(value, _ENDPOINT_EXPECTED)
    problem = _url_problem(text, schemes=("https",), need_port=True, allow_path=False)
    if problem:
        _fail(_ENDPOINT_EXPECTED, text, hint=f" ({problem})")
    return text


_URL_EXPECTED = "an http or https URL like https://mirror.local:5000"


def _http_url(value: object) -> str:
    text = _need_str(value, _URL_EXPECTED)
    problem = _url_problem(text, schemes=("http", "https"), need_port=False, allow_path=True)
    if problem:
        _fail(_URL_EXPECTED, text, hint=f" ({problem})")
    return text


_REGISTRY_EXPECTED = "a registry host like docker.io or mirror.local:5000 (or * for every registry)"


def _registry_host(value: object) -> str:
    text = _need_str(value, _REGISTRY_EXPECTED)
    if text == "*":
        return text
    problem = _url_problem(f"https://{text}", schemes=("https",), need_port=False, allow_path=False)
    if problem or "/" in text or "@" in text:
        _fail(_REGISTRY_EXPECTED, text)
    return text


# --- durations ---------------------------------------------------------------------------------

_DURATION_EXPECTED = "a positive duration like 300ms, 30s, 5m or 1h30m"


def parse_duration(text: str) -> datetime.timedelta | None:
    """Parse a Go-style duration ("1h30m", "1.5s"); None when the text is not one."""
    pos, micros = 0, Decimal(0)
    if not text:
        return None
    while pos < len(text):
        match = _DURATION_PART_RE.match(text, pos)
        if match is None:
            return None
        try:
            micros += Decimal(match[1]) * _DURATION_UNITS_US[match[2]]
        except InvalidOperation:
            return None
        pos = match.end()
    try:
        return datetime.timedelta(microseconds=int(micros))
    except OverflowError:
        return None


def format_duration(value: datetime.timedelta) -> str:
    """Write a timedelta the way Go would accept it back: 1h30m, 300ms, 1s500ms."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    out = ""
    for unit, size in (("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000), ("ms", 1000), ("us", 1)):
        count, micros = divmod(micros, size)
        if count:
            out += f"{count}{unit}"
    return out or "0s"


def _duration(value: object) -> datetime.timedelta:
    parsed: datetime.timedelta | None = None
    if isinstance(value, datetime.timedelta):
        parsed = value
    elif isinstance(value, str):
        parsed = parse_duration(value)
    if parsed is None or parsed <= datetime.timedelta(0):
        hint = " (add a unit)" if isinstance(value, int | float) and not isinstance(value, bool) else ""
        _fail(_DURATION_EXPECTED, value, hint=hint)
    return parsed


# --- key material ------------------------------------------------------------------------------


def _pem_of(value: object, what: str, needle: bytes) -> tuple[str, bytes]:
    """The field text and its decoded PEM, or a pydantic error explaining what is wrong with it."""
    expected = f"base64 of a PEM {what}"
    text = _need_str(value, expected)
    if text.lstrip().startswith("-----BEGIN"):
        _fail(expected, value, secret=True, hint=" holding raw PEM text (base64-encode it)")
    try:
        pem = decode_b64(text)
    except ValueError:
        _fail(expected, value, secret=True, hint=" that is not valid base64")
    if needle not in pem:
        _fail(expected, value, secret=True, hint=f" whose decoded text has no PEM {what} block")
    return text, pem


def _certificate(value: object) -> str:
    text, pem = _pem_of(value, "certificate", b"-----BEGIN CERTIFICATE-----")
    try:
        parse_certificate_pem(pem).public_key()  # the key is parsed lazily: an unknown key type fails here
    except Exception as exc:  # cryptography raises several types for malformed input
        _fail("base64 of a PEM certificate", value, secret=True, hint=f" that does not parse ({exc})")
    return text


def _private_key(value: object) -> str:
    text, pem = _pem_of(value, "private key", b"PRIVATE KEY-----")
    expected = "base64 of an unencrypted PEM private key"
    if b"ENCRYPTED" in pem:
        _fail(expected, value, secret=True, hint=" holding an encrypted key")
    try:
        parse_private_key_pem(pem)
    except Exception:  # cryptography raises ValueError, TypeError or UnsupportedAlgorithm
        _fail(expected, value, secret=True, hint=" that does not parse as a private key")
    return text


_AESCBC_EXPECTED = "base64 of 32 random bytes"


def _aescbc_secret(value: object) -> str:
    text = _need_str(value, _AESCBC_EXPECTED)
    try:
        size = len(decode_b64(text))
    except ValueError:
        return _fail(_AESCBC_EXPECTED, text, secret=True, hint=" that is not valid base64")
    if size != 32:
        _fail(_AESCBC_EXPECTED, text, secret=True, hint=f" holding {size} bytes")
    return text


# --- the annotated types -----------------------------------------------------------------------
# Each is the Python type the model holds, the function that checks the YAML value, and the JSON Schema
# an editor should use for it (pydantic cannot derive one from a plain validator).


def _anchored(regex: re.Pattern[str], *, repeated: bool = False) -> str:
    """The JSON Schema pattern of a validator's expression: the same text, anchored (fullmatch).

    Derived rather than copied, so the editor's schema and the loader can never drift apart.
    """
    return f"^(?:{regex.pattern}){'+' if repeated else ''}$"


def _schema(pattern: str | None = None, **extra: Any) -> WithJsonSchema:
    schema: dict[str, Any] = {"type": "string", **extra}
    if pattern is not None:
        schema["pattern"] = pattern
    return WithJsonSchema(schema)


_AS_STR = PlainSerializer(str, when_used="json")

Token = Annotated[str, PlainValidator(_token), _schema(_anchored(_TOKEN_RE))]
Hostname = Annotated[str, PlainValidator(_hostname), _schema(maxLength=253)]
DNSDomain = Annotated[str, PlainValidator(_dns_domain), _schema(maxLength=253)]
SubjectAltName = Annotated[str, PlainValidator(_san), _schema(description="IP address or DNS name")]
ClusterName = Annotated[
    str, PlainValidator(_cluster_name), _schema(_anchored(_CLUSTER_NAME_RE), maxLength=63)
]
InterfaceName = Annotated[str, PlainValidator(_ifname), _schema(minLength=1, maxLength=15)]
KubernetesVersion = Annotated[str, PlainValidator(_k8s_version), _schema(_anchored(_K8S_VERSION_RE))]
ImageRef = Annotated[
    str, PlainValidator(_image), _schema(description="OCI image reference with tag or digest")
]
KernelArg = Annotated[str, PlainValidator(_kernel_arg), _schema(r"^\S+$")]
EnvName = Annotated[str, PlainValidator(_env_key), _schema(_anchored(_ENV_KEY_RE))]
SysctlName = Annotated[str, PlainValidator(_sysctl_key), _schema(_anchored(_SYSCTL_KEY_RE))]
ArgName = Annotated[str, PlainValidator(_arg_name), _schema(_anchored(_ARG_NAME_RE))]
ScalarStr = Annotated[
    str, PlainValidator(_scalar_str), WithJsonSchema({"type": ["string", "integer", "boolean"]})
]
DiskPath = Annotated[str, PlainValidator(_disk), _schema(r"^/dev/.+")]
VarPath = Annotated[str, PlainValidator(_var_path), _schema(r"^/var/.+")]
FileMode = Annotated[
    int,
    PlainValidator(_permissions),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 0o7777},
                {"type": "string", "pattern": _anchored(_OCTAL_RE)},
            ]
        }
    ),
]
IPAddressField = Annotated[IPAddress, PlainValidator(_ip), _AS_STR, _schema(description="IP address")]
CIDR = Annotated[IPInterface, PlainValidator(_cidr), _AS_STR, _schema(r"/", description="address/prefix")]
Network = Annotated[IPNetwork, PlainValidator(_network), _AS_STR, _schema(r"/", description="network/prefix")]
HttpsEndpoint = Annotated[str, PlainValidator(_https_endpoint), _schema(r"^https://.+:[0-9]+/?$")]
HttpURL = Annotated[str, PlainValidator(_http_url), _schema(r"^https?://.+")]
RegistryHost = Annotated[str, PlainValidator(_registry_host), _schema()]
Duration = Annotated[
    datetime.timedelta,
    PlainValidator(_duration),
    PlainSerializer(format_duration, when_used="json"),
    _schema(_anchored(_DURATION_PART_RE, repeated=True)),
]
CertificatePEM = Annotated[
    str,
    PlainValidator(_certificate),
    _schema(contentEncoding="base64", description="base64 of a PEM certificate"),
]
PrivateKeyPEM = Annotated[
    str,
    PlainValidator(_private_key),
    _schema(contentEncoding="base64", description="base64 of a PEM private key"),
]
AESCBCSecret = Annotated[
    str,
    PlainValidator(_aescbc_secret),
    _schema(contentEncoding="base64", description="base64 of 32 random bytes"),
]
