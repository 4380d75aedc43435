"""k3s user data: valid for cloud-init's own schema, shellcheck-clean, with the flags the design requires."""

import subprocess

import yaml

from components.cloudinit import (
    INSTALL_SCRIPT_PATH, K3S_CA_FILES, K3S_CONFIG_PATH, K3S_TLS_DIR, NOVA_USER_DATA_LIMIT, K3sNode,
    render_install_script, render_user_data,
)
from components.settings import parse_settings
from tests.test_settings import VALID
from tests.validators import assert_shellcheck_clean, assert_valid_cloud_config

PEM = "-----BEGIN CERTIFICATE-----\n" + "A" * 64 + "\n-----END CERTIFICATE-----\n"
CA_FILES = {f"{ca}.{ext}": PEM for ca in K3S_CA_FILES for ext in ("crt", "key")} | {"service.key": PEM}


def kubernetes(**overrides):
    return parse_settings({**VALID, **overrides}, "m").kubernetes


def server_user_data(**overrides):
    return render_user_data(
        K3sNode("m-k3s-0", "10.20.0.10", "203.0.113.10", True),
        kubernetes=kubernetes(**overrides), token="t0ken", server_private_ip="10.20.0.10",
        network_cidr="10.20.0.0/24", ca_files=CA_FILES,
    )


def agent_user_data(**overrides):
    return render_user_data(
        K3sNode("m-k3s-1", "10.20.0.11", "203.0.113.11", False),
        kubernetes=kubernetes(**overrides), token="t0ken", server_private_ip="10.20.0.10",
        network_cidr="10.20.0.0/24",
    )


def files_of(user_data):
    document = yaml.safe_load(user_data)
    return document, {f["path"]: f for f in document["write_files"]}


def test_user_data_passes_cloud_init_schema():
    assert_valid_cloud_config(server_user_data())
    assert_valid_cloud_config(agent_user_data(httpProxy="http://proxy.example:3128"))


def test_install_scripts_pass_shellcheck():
    for is_server in (True, False):
        for proxy in ({}, {"httpProxy": "http://proxy.example:3128", "noProxy": '[".internal"]'}):
            script = render_install_script(kubernetes(**proxy), is_server=is_server, no_proxy=("localhost", ".internal"))
            assert_shellcheck_clean(script, "sh")


def test_server_has_ca_files_flags_and_chrony():
    document, files = files_of(server_user_data())
    assert document["ntp"] == {"enabled": True, "ntp_client": "chrony"}
    for relative in CA_FILES:
        entry = files[f"{K3S_TLS_DIR}/{relative}"]
        assert entry["content"] == PEM
        assert entry["permissions"] == ("0600" if relative.endswith(".key") else "0644")
    config = yaml.safe_load(files[K3S_CONFIG_PATH]["content"])
    assert files[K3S_CONFIG_PATH]["permissions"] == "0600"
    assert config["node-ip"] == "10.20.0.10"
    assert config["advertise-address"] == "10.20.0.10"
    assert config["node-external-ip"] == "203.0.113.10"
    assert "203.0.113.10" in config["tls-san"]
    assert config["disable"] == ["traefik", "servicelb"]
    assert config["write-kubeconfig-mode"] == "0600"
    assert config["token"] == "t0ken"
    assert "server" not in config
    assert document["runcmd"] == [[INSTALL_SCRIPT_PATH]]


def test_agent_joins_server_privately_and_gets_no_ca_keys():
    _, files = files_of(agent_user_data())
    assert not [p for p in files if p.startswith(K3S_TLS_DIR)]
    config = yaml.safe_load(files[K3S_CONFIG_PATH]["content"])
    assert config["server"] == "https://10.20.0.10:6443"
    assert config["token"] == "t0ken"
    assert "advertise-address" not in config and "disable" not in config


def run_install_script(script, tmp_path):
    """Runs the script with a fake curl whose 'installer' records the environment it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "installer-env"
    fake_curl = bin_dir / "curl"
    fake_curl.write_text(
        "#!/bin/sh\n"
        'while [ "$#" -gt 0 ]; do case "$1" in -o) out=$2; shift ;; -*) ;; *) url=$1 ;; esac; shift; done\n'
        f'printf "echo URL=%s > {record}; env >> {record}\\n" "$url" > "$out"\n'
    )
    fake_curl.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = record.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_install_script_runs_pinned_installer_with_mirror_and_proxy(tmp_path):
    _, files = files_of(server_user_data(
        httpProxy="http://proxy.example:3128", k3sReleasesUrl="https://mirror.example/k3s/releases",
        k3sInstallScriptUrl="https://mirror.example/install.sh", noProxy='[".corp.example"]'))
    seen = run_install_script(files[INSTALL_SCRIPT_PATH]["content"], tmp_path)
    assert seen["URL"] == "https://mirror.example/install.sh"
    assert seen["INSTALL_K3S_VERSION"] == "v1.35.5+k3s1"
    assert seen["INSTALL_K3S_EXEC"] == "server"
    assert seen["GITHUB_URL"] == "https://mirror.example/k3s/releases"
    assert seen["HTTP_PROXY"] == seen["HTTPS_PROXY"] == "http://proxy.example:3128"
    no_proxy = seen["NO_PROXY"].split(",")
    for entry in ("10.42.0.0/16", "10.43.0.0/16", "10.20.0.0/24", ".corp.example", "127.0.0.1", "localhost"):
        assert entry in no_proxy


def test_agent_install_script_defaults(tmp_path):
    _, files = files_of(agent_user_data())
    seen = run_install_script(files[INSTALL_SCRIPT_PATH]["content"], tmp_path)
    assert seen["URL"] == "https://get.k3s.io"
    assert seen["INSTALL_K3S_EXEC"] == "agent"
    assert seen["GITHUB_URL"] == "https://github.com/k3s-io/k3s/releases"
    assert "HTTP_PROXY" not in seen


def test_no_proxy_lines_without_proxy():
    _, files = files_of(server_user_data())
    assert "PROXY" not in files[INSTALL_SCRIPT_PATH]["content"]


def test_same_input_same_bytes_and_within_nova_limit():
    assert server_user_data() == server_user_data()
    assert len(server_user_data().encode()) < NOVA_USER_DATA_LIMIT


def test_oversized_user_data_is_refused():
    import pytest
    big = {"server-ca.crt": "A" * NOVA_USER_DATA_LIMIT}
    with pytest.raises(ValueError, match="Nova accepts at most"):
        render_user_data(K3sNode("n", "10.0.0.1", "10.0.0.1", True), kubernetes=kubernetes(), token="t",
                         server_private_ip="10.0.0.1", network_cidr="10.0.0.0/24", ca_files=big)
