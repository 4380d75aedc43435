"""k3s user data: valid for cloud-init's own schema, shellcheck-clean, executed where it runs commands,
with the flags and protections the design requires."""

import base64
import hashlib
import subprocess

import pytest
import yaml

from components.cloudinit import (
    DATA_VOLUME_SCRIPT_PATH, INSTALL_SCRIPT_PATH, K3S_CA_FILES, K3S_CONFIG_PATH, K3S_NODE_PASSWORD_PATH, K3S_TLS_DIR,
    KUBELET_DROPIN_PATH, LOGIND_DROPIN_PATH, NOVA_USER_DATA_LIMIT, K3sJoin, K3sNode, agent_join_token,
    metadata_block_command, render_data_volume_script, render_install_script, render_user_data,
)
from components.cockroach_manifests import HOST_DATA_MOUNT
from components.cockroach_manifests import NODE_LABEL
from components.settings import parse_settings
from tests.test_settings import VALID
from tests.validators import assert_shellcheck_clean, assert_valid_cloud_config

PEM = "-----BEGIN CERTIFICATE-----\n" + "A" * 64 + "\n-----END CERTIFICATE-----\n"
CA_FILES = {f"{ca}.{ext}": PEM for ca in K3S_CA_FILES for ext in ("crt", "key")} | {"service.key": PEM}
JOIN = K3sJoin(server_token="server-t0ken", agent_password="agent-t0ken", server_ca_pem=PEM)
VOLUME = "4b8ba93c-0ad8-4d4f-9a3e-1f6d2d4b7c11"


def kubernetes(**overrides):
    return parse_settings({**VALID, **overrides}, "m").kubernetes


def server_user_data(**overrides):
    return render_user_data(
        K3sNode("m-k3s-0", "10.20.0.10", "198.18.0.10", True, data_volume_id=VOLUME),
        kubernetes=kubernetes(**overrides), join=JOIN, server_private_ip="10.20.0.10",
        network_cidr="10.20.0.0/24", node_password="node-pw-0", ca_files=CA_FILES,
    )


def agent_user_data(**overrides):
    return render_user_data(
        K3sNode("m-k3s-1", "10.20.0.11", "198.18.0.11", False, data_volume_id=VOLUME),
        kubernetes=kubernetes(**overrides), join=JOIN, server_private_ip="10.20.0.10",
        network_cidr="10.20.0.0/24", node_password="node-pw-1",
    )


def files_of(user_data):
    document = yaml.safe_load(user_data)
    return document, {f["path"]: f for f in document["write_files"]}


def test_user_data_passes_cloud_init_schema():
    assert_valid_cloud_config(server_user_data())
    assert_valid_cloud_config(agent_user_data(httpProxy="http://proxy.example:3128", ntpServers='["ntp.example"]'))


def test_scripts_pass_shellcheck():
    for is_server in (True, False):
        for proxy in ({}, {"httpProxy": "http://proxy.example:3128", "noProxy": '[".internal"]'}):
            script = render_install_script(kubernetes(**proxy), is_server=is_server, no_proxy=("localhost", ".internal"))
            assert_shellcheck_clean(script, "sh")
        assert_shellcheck_clean(render_data_volume_script(VOLUME, is_server=is_server), "sh")
        assert_shellcheck_clean(render_install_script(kubernetes(), is_server=is_server, no_proxy=(),
                                                      data_mount=HOST_DATA_MOUNT), "sh")
    assert_shellcheck_clean(metadata_block_command()[2], "sh")


def test_server_has_ca_files_flags_and_chrony():
    document, files = files_of(server_user_data())
    assert document["ntp"] == {"enabled": True, "ntp_client": "chrony"}
    assert "apt" not in document
    for relative in CA_FILES:
        entry = files[f"{K3S_TLS_DIR}/{relative}"]
        assert entry["content"] == PEM
        assert entry["permissions"] == ("0600" if relative.endswith(".key") else "0644")
    config = yaml.safe_load(files[K3S_CONFIG_PATH]["content"])
    assert files[K3S_CONFIG_PATH]["permissions"] == "0600"
    assert config["node-ip"] == "10.20.0.10"
    assert config["advertise-address"] == "10.20.0.10"
    assert config["node-external-ip"] == "198.18.0.10"
    assert "198.18.0.10" in config["tls-san"]
    assert config["disable"] == ["traefik", "servicelb"]
    assert config["write-kubeconfig-mode"] == "0600"
    assert config["token"] == "server-t0ken" and config["agent-token"] == "agent-t0ken"
    assert config["node-label"] == [f"{NODE_LABEL}=true"]
    assert config["flannel-backend"] == "vxlan"
    assert "server" not in config
    # k3s hands kubelet-args to the kubelet as flags; the graceful-shutdown settings are not flags.
    assert "kubelet-arg" not in config
    assert KUBELET_DROPIN_PATH in files and LOGIND_DROPIN_PATH in files
    # One runcmd entry: cloud-init runs runcmd as one sh script without `set -e` (cc_runcmd.py, shellify).
    assert document["runcmd"] == [["sh", "-c", f"{DATA_VOLUME_SCRIPT_PATH} && exec {INSTALL_SCRIPT_PATH}"]]
    assert files["/etc/systemd/system/k3s.service.d/10-crdb-federation-data.conf"]["content"] == (
        f"[Unit]\nRequiresMountsFor={HOST_DATA_MOUNT}\n")


def test_agent_gets_only_the_pinned_agent_token_and_no_ca_keys():
    _, files = files_of(agent_user_data())
    assert "/etc/systemd/system/k3s-agent.service.d/10-crdb-federation-data.conf" in files
    assert not [p for p in files if p.startswith(K3S_TLS_DIR)]
    config = yaml.safe_load(files[K3S_CONFIG_PATH]["content"])
    assert config["server"] == "https://10.20.0.10:6443"
    digest = hashlib.sha256(PEM.encode()).hexdigest()
    assert config["token"] == f"K10{digest}::node:agent-t0ken" == agent_join_token(PEM, "agent-t0ken")
    text = agent_user_data()
    assert "server-t0ken" not in text and "BEGIN CERTIFICATE" not in text
    assert "advertise-address" not in config and "disable" not in config


def test_each_node_keeps_its_own_node_password_for_a_replacement_server():
    _, files = files_of(agent_user_data())
    entry = files[K3S_NODE_PASSWORD_PATH]
    assert entry["content"] == "node-pw-1\n" and entry["permissions"] == "0600"


def test_proxied_clouds_get_an_apt_proxy_and_ntp_servers_are_configurable():
    document, _ = files_of(agent_user_data(httpProxy="http://proxy.example:3128", ntpServers='["ntp1.example"]'))
    assert document["apt"] == {"http_proxy": "http://proxy.example:3128", "https_proxy": "http://proxy.example:3128"}
    assert document["ntp"]["servers"] == ["ntp1.example"]


def test_provider_networks_get_encrypted_flannel():
    values = {"networkMode": "existing", "publicAddressing": "fixed", "existingNetwork": "provider"}
    _, files = files_of(server_user_data(**values))
    assert yaml.safe_load(files[K3S_CONFIG_PATH]["content"])["flannel-backend"] == "wireguard-native"


def fake_bin(tmp_path, **scripts):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)
    return bin_dir


def test_the_metadata_service_is_blocked_on_every_boot_idempotently(tmp_path):
    """bootcmd inserts each raw-table rule once, whatever rules exist already."""
    rules = tmp_path / "rules"
    rules.write_text("-t raw -I OUTPUT -d 169.254.169.254/32 -j DROP\n")
    bin_dir = fake_bin(tmp_path, iptables=(
        f'shift; rule="$*"; case "$rule" in *" -C "*) grep -qF -- "${{rule#*-C }}" {rules} && exit 0 || exit 1 ;; '
        f'*) echo "$rule" >> {rules} ;; esac'))
    command = metadata_block_command()
    for _ in range(2):
        subprocess.run(command, env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True)
    lines = rules.read_text().splitlines()
    assert lines.count("-t raw -I OUTPUT -d 169.254.169.254/32 -j DROP") == 1
    assert lines.count("-t raw -I PREROUTING -d 169.254.169.254/32 -j DROP") == 1


INSTALLER_RECORD = "installer-env"


def fake_installer(url: str, record) -> str:
    """What the fake curl below downloads: a script that records the URL and its environment."""
    return f"echo URL={url} > {record}; env >> {record}\n"


def run_install_script(script, tmp_path, *, metadata_blocked=True, chrony="active", synchronised=True,
                       mounted=True):
    """Runs the script with fake curl/iptables/systemctl/chronyc/mountpoint and the real sha256sum; its
    'installer' records the environment."""
    record = tmp_path / INSTALLER_RECORD
    bin_dir = fake_bin(
        tmp_path,
        curl=('while [ "$#" -gt 0 ]; do case "$1" in -o) out=$2; shift ;; -*) ;; *) url=$1 ;; esac; shift; done\n'
              f'printf "echo URL=%s > {record}; env >> {record}\\n" "$url" > "$out"'),
        iptables="exit 0" if metadata_blocked else "exit 1",
        systemctl="exit 0" if chrony == "active" else "exit 3",
        chronyc="exit 0" if synchronised else "exit 1",
        mountpoint="exit 0" if mounted else "exit 1",
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return result, {}
    lines = record.read_text().splitlines()
    return result, dict(line.split("=", 1) for line in lines if "=" in line)


def pinned_to_fake(tmp_path, url, **overrides):
    """Settings whose install-script pin is the fake installer's sha256 (the real sha256sum checks it)."""
    digest = hashlib.sha256(fake_installer(url, tmp_path / INSTALLER_RECORD).encode()).hexdigest()
    return {"k3sInstallScriptUrl": url, "k3sInstallScriptSha256": digest, **overrides}


def test_install_script_runs_pinned_installer_with_mirror_and_proxy(tmp_path):
    _, files = files_of(server_user_data(**pinned_to_fake(
        tmp_path, "https://mirror.example/install.sh",
        httpProxy="http://proxy.example:3128", k3sReleasesUrl="https://mirror.example/k3s/releases",
        noProxy='[".corp.example"]', ntpServers='["ntp.example"]')))
    result, seen = run_install_script(files[INSTALL_SCRIPT_PATH]["content"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert seen["URL"] == "https://mirror.example/install.sh"
    assert seen["INSTALL_K3S_VERSION"] == "v1.35.5+k3s1"
    assert seen["INSTALL_K3S_EXEC"] == "server"
    assert seen["GITHUB_URL"] == "https://mirror.example/k3s/releases"
    assert seen["HTTP_PROXY"] == seen["HTTPS_PROXY"] == "http://proxy.example:3128"
    no_proxy = seen["NO_PROXY"].split(",")
    for entry in ("10.42.0.0/16", "10.43.0.0/16", "10.20.0.0/24", ".corp.example", "127.0.0.1", "localhost"):
        assert entry in no_proxy


@pytest.mark.parametrize("problem, expected", [
    ({"metadata_blocked": False}, "the metadata service is not blocked"),
    ({"chrony": "inactive"}, "chrony is not running"),
    ({"synchronised": False}, "the clock is not synchronised after 5 minutes; set crdb-federation:ntpServers"),
    ({"mounted": False}, f"the data volume is not mounted at {HOST_DATA_MOUNT}; k3s is not installed"),
])
def test_install_script_refuses_a_node_unfit_for_cockroachdb(tmp_path, problem, expected):
    _, files = files_of(agent_user_data(**pinned_to_fake(tmp_path, "https://get.example/install.sh")))
    result, seen = run_install_script(files[INSTALL_SCRIPT_PATH]["content"], tmp_path, **problem)
    assert result.returncode == 1 and expected in result.stderr and not seen, result.stderr


def test_an_install_script_other_than_the_pinned_one_never_runs(tmp_path):
    _, files = files_of(agent_user_data(k3sInstallScriptUrl="https://get.example/install.sh"))
    result, seen = run_install_script(files[INSTALL_SCRIPT_PATH]["content"], tmp_path)
    assert result.returncode == 1 and not seen
    assert ("the k3s install script at https://get.example/install.sh does not have the pinned sha256 "
            "8598e002e61d658fed7b7542fc6d2c66d8da6eae69e088830105d2ee1ffb6d91") in result.stderr


def test_the_default_install_script_is_pinned_to_a_k3s_commit():
    # k3s-io/k3s at 372c8adc ("Update to v1.35.5 (#14050)", release-1.35): its install.sh.sha256sum reads
    # "8598e002e61d658fed7b7542fc6d2c66d8da6eae69e088830105d2ee1ffb6d91  install.sh".
    script = files_of(agent_user_data())[1][INSTALL_SCRIPT_PATH]["content"]
    assert ("https://raw.githubusercontent.com/k3s-io/k3s/372c8adc5892bcd0fdadf1669f4f8fdc638795c0/install.sh"
            in script)
    assert "echo '8598e002e61d658fed7b7542fc6d2c66d8da6eae69e088830105d2ee1ffb6d91  '\"$installer\"" in script
    assert "INSTALL_K3S_EXEC=agent" in script and "GITHUB_URL=https://github.com/k3s-io/k3s/releases" in script
    assert "PROXY" not in script


def test_the_data_volume_comes_before_k3s_and_k3s_waits_for_its_mount(tmp_path):
    """The runcmd chain, executed: a failing data-volume script means the installer never runs."""
    document, _ = files_of(agent_user_data())
    [[shell, flag, chain]] = document["runcmd"]
    ran = tmp_path / "ran"
    scripts = {DATA_VOLUME_SCRIPT_PATH: tmp_path / "data-volume", INSTALL_SCRIPT_PATH: tmp_path / "install"}
    for outcome in ("exit 1", "exit 0"):
        scripts[DATA_VOLUME_SCRIPT_PATH].write_text(f"#!/bin/sh\necho data-volume >> {ran}\n{outcome}\n")
        scripts[INSTALL_SCRIPT_PATH].write_text(f"#!/bin/sh\necho install >> {ran}\n")
        for path in scripts.values():
            path.chmod(0o755)
        command = chain
        for real, fake in scripts.items():
            command = command.replace(real, str(fake))
        ran.unlink(missing_ok=True)
        subprocess.run([shell, flag, command])
        steps = ran.read_text().split()
        assert steps == (["data-volume"] if outcome == "exit 1" else ["data-volume", "install"]), outcome


def test_no_proxy_lines_without_proxy():
    _, files = files_of(server_user_data())
    assert "PROXY" not in files[INSTALL_SCRIPT_PATH]["content"]


def test_same_input_same_bytes_and_within_nova_limit():
    assert server_user_data() == server_user_data()
    # Nova's schema limits the base64 text (maxLength 65535), not the raw bytes.
    assert len(base64.b64encode(server_user_data().encode())) < NOVA_USER_DATA_LIMIT


def test_oversized_user_data_is_refused():
    # 50 KB of raw user data is under 64 KiB, but its base64 text is over Nova's 65535 characters.
    big = {"server-ca.crt": "A" * 50_000}
    with pytest.raises(ValueError, match="characters in base64; Nova accepts at most 65535"):
        render_user_data(K3sNode("n", "10.0.0.1", "10.0.0.1", True), kubernetes=kubernetes(), join=JOIN,
                         server_private_ip="10.0.0.1", network_cidr="10.0.0.0/24", node_password="p", ca_files=big)
