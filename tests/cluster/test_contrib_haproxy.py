"""contrib/haproxy.cfg, the production example: HAProxy itself accepts it,
and it has the shape the brokers need."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from broker.certs import init_dev_pki
from tests.cluster.harness import haproxy_binary

CONFIG = Path(__file__).parents[2] / "contrib" / "haproxy.cfg"


def test_haproxy_accepts_the_example_config(tmp_path: Path) -> None:
    ca = init_dev_pki(tmp_path / "certs").ca_cert
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.read_text().replace("/etc/consentry/ca.crt", str(ca)))
    result = subprocess.run([haproxy_binary(), "-c", "-f", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_passes_tls_through_with_proxy_v2_and_checks_healthz() -> None:
    text = "\n".join(line.split("#", 1)[0] for line in CONFIG.read_text().splitlines())
    assert re.search(r"^\s*mode tcp$", text, re.M)
    assert not re.search(r"\bssl crt\b|^\s*mode http", text, re.M)  # TLS is not ended here
    assert "balance leastconn" in text
    servers = re.findall(r"^\s*(?:server|default-server)\b.*$", text, re.M)
    checked = [s for s in servers if "check-ssl" in s]
    assert checked and all("send-proxy-v2" in s and "check-send-proxy" in s and "ca-file" in s
                           for s in checked)
    assert "uri /healthz" in text and "expect status 200" in text
