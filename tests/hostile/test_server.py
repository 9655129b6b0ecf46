"""The README's command (`streamlit run app/main.py`, config from .streamlit/config.toml) serves
on the loopback interface only, hides tracebacks from the browser and caps uploads."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from tests.streamlit_server import free_port, served_app

ROOT = Path(__file__).resolve().parents[2]


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, from /proc/net/tcp{,6} (Linux)."""
    out = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, p = fields[1].split(":")
            if int(p, 16) == port and fields[3] == "0A":  # 0A = LISTEN
                out.add(addr)
    return out


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_config_defaults():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["client"]["showErrorDetails"] == "none"
    from estimators.validation import MAX_JSON_BYTES
    assert cfg["server"]["maxUploadSize"] * 1024 * 1024 <= MAX_JSON_BYTES


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_real_server_binds_loopback_only(tmp_path):
    port = free_port()
    # exactly the README's command, plus a free port: the address comes from config.toml
    with served_app(tmp_path / "streamlit.log", port=port):
        addrs = _listening_addresses(port)
        assert addrs == {"0100007F"}, addrs  # 127.0.0.1 only (no 0.0.0.0, no ::)
        ip = _non_loopback_ip()
        if ip is not None:
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=2).close()
