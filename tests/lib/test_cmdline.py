"""Kernel command line parsing, checked against what the kernel's next_arg() does."""

from __future__ import annotations

from pathlib import Path

from talos_os.lib import cmdline


def test_flags_values_and_order() -> None:
    c = cmdline.parse("BOOT_IMAGE=/vmlinuz root=/dev/vda2 ro quiet console=tty0 console=ttyS0,115200n8\n")
    assert c.params == (
        ("BOOT_IMAGE", "/vmlinuz"),
        ("root", "/dev/vda2"),
        ("ro", None),
        ("quiet", None),
        ("console", "tty0"),
        ("console", "ttyS0,115200n8"),
    )
    assert c.get("console") == "ttyS0,115200n8"  # the last one wins
    assert c.get_all("console") == ["tty0", "ttyS0,115200n8"]
    assert "quiet" in c and c.has("ro") and "missing" not in c
    assert c.get("quiet") is None and c.get("quiet", "dflt") == "dflt"
    assert c.get("missing", "x") == "x"


def test_dotted_keys_and_urls_with_equals() -> None:
    c = cmdline.parse("talos.platform=kvm talos.config=http://10.0.0.1:8080/c.yaml?a=1&b=2")
    assert c.get("talos.platform") == "kvm"
    assert c.get("talos.config") == "http://10.0.0.1:8080/c.yaml?a=1&b=2"


def test_quotes() -> None:
    c = cmdline.parse('a="hello world" "b=x y" c="unterminated d e=1')
    assert c.get("a") == "hello world"
    assert c.get("b") == "x y"
    assert c.get("c") == "unterminated d e=1"  # an open quote runs to the end, as in the kernel
    c2 = cmdline.parse('"quoted flag" k=mid"dle q"uote')
    assert c2.params == (("quoted flag", None), ("k", 'mid"dle q"uote'))


def test_empty_value_and_whitespace() -> None:
    c = cmdline.parse("  \t key=  flag\n\n")
    assert c.params == (("key", ""), ("flag", None))
    assert cmdline.parse("").params == ()


def test_init_args_after_double_dash() -> None:
    c = cmdline.parse('ro -- single "two words" x=1')
    assert c.params == (("ro", None),)
    assert c.init_args == ("single", "two words", "x=1")


def test_as_dict_and_iter() -> None:
    c = cmdline.parse("a=1 b a=2")
    assert c.as_dict() == {"a": "2", "b": None}
    assert list(c) == [("a", "1"), ("b", None), ("a", "2")]


def test_read_from_file(tmp_path: Path) -> None:
    p = tmp_path / "cmdline"
    p.write_text("talos.platform=xen\n")
    assert cmdline.read(p).get("talos.platform") == "xen"
