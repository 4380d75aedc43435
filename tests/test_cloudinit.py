"""k3s user data: valid for cloud-init's own schema, shellcheck-clean, executed where it runs commands,
with the flags and protections the design requires."""

import hashlib
import subprocess

import pytest
import yaml

from components.cloudinit import (
    DATA_VOLUME_SCRIPT_PATH, INSTALL_SCRIPT_PATH, K3S_CA_FILES, K3S_CONFIG_PATH, K3S_NODE_PASSWORD_PATH, K3S_TLS_DIR,
    NOVA_USER_DATA_LIMIT, K3sJoin, K3sNode, agent_join_token, metadata_block_command, render_data_volume_script,
    render_install_script, render_user_data,
)
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
    assert document["runcmd"] == [[DATA_VOLUME_SCRIPT_PATH], [INSTALL_SCRIPT_PATH]]


def test_agent_gets_only_the_pinned_agent_token_and_no_ca_keys():
    _, files = files_of(agent_user_data())
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


def run_install_script(script, tmp_path, *, metadata_blocked=True, chrony="active"):
    """Runs the script with fake curl/iptables/systemctl/chronyc; its 'installer' records the environment."""
    record = tmp_path / "installer-env"
    bin_dir = fake_bin(
        tmp_path,
        curl=('while [ "$#" -gt 0 ]; do case "$1" in -o) out=$2; shift ;; -*) ;; *) url=$1 ;; esac; shift; done\n'
              f'printf "echo URL=%s > {record}; env >> {record}\\n" "$url" > "$out"'),
        iptables="exit 0" if metadata_blocked else "exit 1",
        systemctl="exit 0" if chrony == "active" else "exit 3",
        chronyc="exit 0",
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return result, {}
    lines = record.read_text().splitlines()
    return result, dict(line.split("=", 1) for line in lines if "=" in line)


def test_install_script_runs_pinned_installer_with_mirror_and_proxy(tmp_path):
    _, files = files_of(server_user_data(
        httpProxy="http://proxy.example:3128", k3sReleasesUrl="https://mirror.example/k3s/releases",
        k3sInstallScriptUrl="https://mirror.example/install.sh", noProxy='[".corp.example"]'))
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


@pytest.mark.parametrize("blocked, chrony, expected", [
    (False, "active", "the metadata service is not blocked"),
    (True, "inactive", "chrony is not running"),
])
def test_install_script_refuses_a_node_unfit_for_cockroachdb(tmp_path, blocked, chrony, expected):
    _, files = files_of(agent_user_data())
    result, seen = run_install_script(files[INSTALL_SCRIPT_PATH]["content"], tmp_path, metadata_blocked=blocked,
                                      chrony=chrony)
    assert result.returncode == 1 and expected in result.stderr and not seen


def test_agent_install_script_defaults(tmp_path):
    _, files = files_of(agent_user_data())
    result, seen = run_install_script(files[INSTALL_SCRIPT_PATH]["content"], tmp_path)
    assert seen["URL"] == "https://get.k3s.io"
    assert seen["INSTALL_K3S_EXEC"] == "agent"
    assert seen["GITHUB_URL"] == "https://github.com/k3s-io/k3s/releases"
    assert "HTTP_PROXY" not in seen


def run_data_volume_script(tmp_path, *, has_filesystem, is_server=False, attached=True):
    """Runs the script against a fake /dev/disk/by-id; blkid reports a filesystem or none; mkfs is recorded."""
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    device = tmp_path / "vdb"
    device.write_text("")
    if attached:
        (by_id / f"virtio-{VOLUME[:20]}").symlink_to(device)
    calls = tmp_path / "calls"
    state = "present" if has_filesystem else "blank"
    bin_dir = fake_bin(
        tmp_path,
        blkid=(f'if [ "$1" = "-s" ]; then echo 0b9e-uuid; exit 0; fi; '
               f'[ "$(cat {tmp_path}/fs 2>/dev/null || echo {state})" != blank ]'),
        **{"mkfs.ext4": f'echo "mkfs $*" >> {calls}; echo present > {tmp_path}/fs'},
        mountpoint="exit 1",
        mount=f'echo "mount $*" >> {calls}',
        sleep="exit 0",
    )
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DISK_BY_ID": str(by_id), "DATA_MOUNT": str(tmp_path / "data"),
           "FSTAB": str(tmp_path / "fstab"), "K3S_DB": str(tmp_path / "k3s" / "server" / "db"), "ATTACH_TIMEOUT": "10"}
    (tmp_path / "fstab").write_text("")
    script = render_data_volume_script(VOLUME, is_server=is_server)
    result = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    return result, (calls.read_text() if calls.exists() else ""), (tmp_path / "fstab").read_text()


def test_a_blank_data_volume_is_formatted_and_mounted_by_uuid(tmp_path):
    result, calls, fstab = run_data_volume_script(tmp_path, has_filesystem=False)
    assert result.returncode == 0, result.stderr
    assert f"mkfs -q -L crdb-data {tmp_path / 'vdb'}" in calls
    assert fstab == f"UUID=0b9e-uuid {tmp_path / 'data'} ext4 defaults,nofail,x-systemd.device-timeout=300 0 2\n"
    assert f"mount {tmp_path / 'data'}" in calls and (tmp_path / "data" / "cockroach").is_dir()


def test_a_volume_that_holds_a_store_is_never_formatted(tmp_path):
    result, calls, _ = run_data_volume_script(tmp_path, has_filesystem=True, is_server=True)
    assert result.returncode == 0, result.stderr
    assert "mkfs" not in calls
    # The server's k3s datastore lives on its data volume too.
    assert (tmp_path / "k3s" / "server" / "db").resolve() == (tmp_path / "data" / "k3s-db").resolve()


def test_a_volume_that_never_attaches_fails_the_boot_clearly(tmp_path):
    result, calls, _ = run_data_volume_script(tmp_path, has_filesystem=False, attached=False)
    assert result.returncode == 1 and f"data volume {VOLUME} is not attached" in result.stderr
    assert "mkfs" not in calls


def test_no_proxy_lines_without_proxy():
    _, files = files_of(server_user_data())
    assert "PROXY" not in files[INSTALL_SCRIPT_PATH]["content"]


def test_same_input_same_bytes_and_within_nova_limit():
    assert server_user_data() == server_user_data()
    assert len(server_user_data().encode()) < NOVA_USER_DATA_LIMIT


def test_oversized_user_data_is_refused():
    big = {"server-ca.crt": "A" * NOVA_USER_DATA_LIMIT}
    with pytest.raises(ValueError, match="Nova accepts at most"):
        render_user_data(K3sNode("n", "10.0.0.1", "10.0.0.1", True), kubernetes=kubernetes(), join=JOIN,
                         server_private_ip="10.0.0.1", network_cidr="10.0.0.0/24", node_password="p", ca_files=big)
