"""`serf-handle reconcile` against real agents: RPC auth, gossip encryption, missing peers."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from support.processes import SERF_HANDLE, Agent, Processes, cluster_sees, free_port, require, wait_until

pytestmark = pytest.mark.integration

KEY = base64.b64encode(bytes(range(32))).decode()


def reconcile(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SERF_")}
    return subprocess.run(
        [SERF_HANDLE, "--config", str(config), "reconcile", *args],
        capture_output=True, text=True, timeout=30,
        env={**clean, **(env or {}), "PYTHONPATH": str(Path(__file__).parent)},
    )


@pytest.fixture
def secured(procs: Processes, tmp_path: Path):
    """Two encrypted agents; the lb's RPC requires a token."""
    require("serf")
    agent_config = tmp_path / "lb.json"
    agent_config.write_text(json.dumps({"rpc_auth": "s3cret"}))
    lb = Agent(
        procs, "lb", {"role": "lb"}, extra=["-encrypt", KEY, "-config-file", str(agent_config)], rpc_auth="s3cret"
    )
    Agent(procs, "web1", {"role": "web", "port": "8081", "note": "a,b"}, join=lb, extra=["-encrypt", KEY])
    wait_until(cluster_sees(lb, ["lb", "web1"]), what="the encrypted cluster")
    out = tmp_path / "members.txt"
    config = tmp_path / "config.yml"
    config.write_text(f"handlers:\n  - type: echo_plugin:Recorder\n    role: web\n    path: {out}\n")
    return lb, config, out


def test_reconcile_with_rpc_auth_over_an_encrypted_cluster(secured) -> None:
    lb, config, out = secured
    done = reconcile(config, "--rpc-addr", lb.rpc, "--rpc-auth", "s3cret")
    assert done.returncode == 0, done.stderr
    # Exact tags from JSON (the comma in "a,b" is not ambiguous here); only the role the entry asked for.
    assert out.read_text() == "web1 127.0.0.1 web [('note', 'a,b'), ('port', '8081'), ('role', 'web')]\n"


def test_reconcile_reads_rpc_settings_from_the_environment(secured) -> None:
    lb, config, out = secured
    done = reconcile(config, env={"SERF_RPC_ADDR": lb.rpc, "SERF_RPC_AUTH": "s3cret"})
    assert done.returncode == 0, done.stderr
    assert out.read_text().startswith("web1 ")


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        pytest.param(None, "Authentication required", id="missing token"),
        pytest.param("wrong", "Invalid authentication token", id="wrong token"),
    ],
)
def test_reconcile_with_bad_auth_fails_clearly(secured, auth: str | None, message: str) -> None:
    lb, config, out = secured
    done = reconcile(config, "--rpc-addr", lb.rpc, *(["--rpc-auth", auth] if auth else []))
    assert done.returncode == 1
    assert done.stderr.startswith("serf-handle: error: 'serf members' failed: ")
    assert message in done.stderr
    assert done.stderr.count("\n") == 1
    assert not out.exists()


def test_reconcile_with_no_agent_fails_clearly(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("handlers: []\n")
    done = reconcile(config, "--rpc-addr", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr.startswith("serf-handle: error: 'serf members' failed: ")
    assert done.stderr.count("\n") == 1
