"""Listeners bind 127.0.0.1 unless configured otherwise."""

from __future__ import annotations

import re
from pathlib import Path

from engine.cli.main import _serve_overrides, build_parser
from engine.config import DEFAULT_ADMIN_ADDRESS, DEFAULT_INGRESS_ADDRESS, EngineConfig, load_config, split_address
from engine.server import Engine, _is_loopback

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_loopback() -> None:
    config = EngineConfig()
    assert split_address(config.ingress_http.address) == ("127.0.0.1", 8080)
    assert split_address(config.admin.address) == ("127.0.0.1", 9070)
    assert load_config(environ={}).ingress_http.address == DEFAULT_INGRESS_ADDRESS
    # `capstan serve` without address flags adds no override
    args = build_parser().parse_args(["serve"])
    assert "ingress_http" not in _serve_overrides(args) and "admin" not in _serve_overrides(args)


async def test_engine_listens_on_the_default_host_only(tmp_path: Path) -> None:
    host_in, _ = split_address(DEFAULT_INGRESS_ADDRESS)
    host_admin, _ = split_address(DEFAULT_ADMIN_ADDRESS)
    config = load_config(
        environ={},
        overrides={
            "data_dir": str(tmp_path / "data"),
            "ingress_http": {"address": f"{host_in}:0"},
            "admin": {"address": f"{host_admin}:0"},
        },
    )
    engine = await Engine.open(config)
    try:
        bound = [address for runner in engine._runners for address in runner.addresses]
        assert len(bound) == 2
        assert {address[0] for address in bound} == {"127.0.0.1"}
    finally:
        await engine.aclose()


def test_no_wildcard_address_in_the_code() -> None:
    wildcard = re.compile(r"""["'](0\.0\.0\.0|::)["':]""")
    for package in ("engine", "ingress_kafka", "subscriptions"):
        for path in (REPO / package).rglob("*.py"):
            assert not wildcard.search(path.read_text()), path


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::") and not _is_loopback("10.1.2.3")
    assert not _is_loopback("example.org")
