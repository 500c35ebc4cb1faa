"""The init's control-socket failures carry a code, and osd turns the code (never the message) into
the gRPC status the client sees."""

from __future__ import annotations

import grpc
import pytest

from talos_os.init.control import dispatch
from talos_os.lib import control
from talos_os.osd.initcall import STATUS_OF, control_status


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"not json", control.BAD_REQUEST),
        (b'{"no": "op"}', control.BAD_REQUEST),
        (b'{"op": "launch"}', control.BAD_REQUEST),
        (b'{"op": "missing"}', control.NOT_FOUND),
        (b'{"op": "refuse"}', control.INVALID),
        (b'{"op": "later"}', control.FAILED_PRECONDITION),
        (b'{"op": "crash"}', control.INTERNAL),
    ],
)
def test_every_refusal_has_its_code(line: bytes, code: str) -> None:
    def missing(_req: dict[str, object]) -> object:
        raise KeyError("no service named 'x'")

    def refuse(_req: dict[str, object]) -> object:
        raise control.ControlError("config is invalid: machine.type", control.INVALID)

    def later(_req: dict[str, object]) -> object:
        raise control.ControlError("reset is not available on this node")

    def crash(_req: dict[str, object]) -> object:
        raise RuntimeError("disk on fire")

    handlers = {"missing": missing, "refuse": refuse, "later": later, "crash": crash}
    answer = dispatch(handlers, line)
    assert answer["ok"] is False and answer["code"] == code and answer["error"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (control.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
        (control.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (control.INVALID, grpc.StatusCode.INVALID_ARGUMENT),
        (control.FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION),
        (control.DENIED, grpc.StatusCode.PERMISSION_DENIED),
        (control.INTERNAL, grpc.StatusCode.INTERNAL),
        ("from-a-newer-init", grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_osd_maps_codes_not_messages(code: str, status: grpc.StatusCode) -> None:
    assert control_status({"ok": False, "error": "no service named 'x'", "code": code}) == status


def test_every_code_has_a_status() -> None:
    assert set(STATUS_OF) == set(control.CODES)
