"""What runs on a node, judged by the real components that will read it (nothing here can run k3s):
the kubelet's own flag parser and config validator, real blkid/mkfs.ext4/mount on loop devices, and
systemd-analyze verify. Each check is shown to fail on a broken input, so a pass means something.

Upstream, at the pinned versions:
- kubelet (k8s.io/kubernetes v1.35.4): no shutdown-grace-period flag (cmd/kubelet/app/options/options.go;
  kubernetes PR #125413: config file only); drop-ins in --config-dir merge in lexical order and need
  apiVersion and kind (kubernetes #124796). k3s passes kubelet-arg through as flags (pkg/util/args.go) and
  gives the kubelet --config-dir=<data-dir>/agent/etc/kubelet.conf.d (pkg/agent/config/config.go).
- blkid(8) (util-linux 2.39, Ubuntu 24.04): exit 2 both for "nothing found" and "cannot gather any
  information"; blkid.c returns BLKID_EXIT_NOTFOUND when open() fails.
- systemd.unit(5): RequiresMountsFor= adds Requires= and After= on the mount; systemd.mount(5): a nofail
  mount is ordered before nothing.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from components.cloudinit import (
    DATA_VOLUME_SCRIPT_PATH, INSTALL_SCRIPT_PATH, K3S_SERVER_ON_VOLUME, K3sJoin, K3sNode,
    render_data_volume_script, render_user_data,
)
from components.settings import parse_settings
from tests.integration.standin import kubelet
from tests.integration.standin.userdata import parse
from tests.test_settings import VALID

PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
JOIN = K3sJoin("server-token", "agent-token", PEM)


def user_data(is_server: bool, volume_id: str = "4b8ba93c-0ad8-4d4f-9a3e-1f6d2d4b7c11", **settings):
    node = K3sNode(f"m-k3s-{0 if is_server else 1}", "10.20.0.10" if is_server else "10.20.0.11",
                   "198.18.0.10" if is_server else "198.18.0.11", is_server, data_volume_id=volume_id)
    return parse(render_user_data(
        node, kubernetes=parse_settings({**VALID, **settings}, "m").kubernetes, join=JOIN,
        server_private_ip="10.20.0.10", network_cidr="10.20.0.0/24", node_password="pw",
        ca_files={"server-ca.crt": PEM} if is_server else None))


# --- the kubelet ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("is_server", [True, False], ids=["server", "agent"])
def test_the_real_kubelet_accepts_every_flag_and_drop_in_the_user_data_gives_it(kubernetes_binaries, is_server):
    node = user_data(is_server)
    flags = kubelet.kubelet_flags(node.k3s_config)
    dropins = node.kubelet_dropins()
    assert dropins, "the user data writes no kubelet drop-in"
    verdict = kubelet.judge(kubernetes_binaries / "kubelet", flags, dropins)
    assert verdict.accepted, verdict.output


def test_the_real_kubelet_refuses_the_kubelet_args_the_user_data_used_to_give(kubernetes_binaries):
    # What components/cloudinit.py rendered before: k3s would pass these as flags and crash-loop.
    old = {**user_data(True).k3s_config,
           "kubelet-arg": ["shutdown-grace-period=330s", "shutdown-grace-period-critical-pods=30s"]}
    verdict = kubelet.judge(kubernetes_binaries / "kubelet", kubelet.kubelet_flags(old), {})
    assert not verdict.accepted
    assert "failed to parse kubelet flag: unknown flag: --shutdown-grace-period" in verdict.output


def test_the_kubelet_merges_both_shutdown_fields_of_our_drop_in(kubernetes_binaries):
    """The kubelet ignores unknown fields in a drop-in, so a misspelt one would pass silently: a later drop-in
    that contradicts each of our values must make the validator name our value."""
    ours = user_data(False).kubelet_dropins()
    header = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
    probes = {
        "shutdownGracePeriod: 1s\n": "shutdownGracePeriodCriticalPods {30s} must be <= shutdownGracePeriod {1s}",
        "shutdownGracePeriodCriticalPods: 331s\n":
            "shutdownGracePeriodCriticalPods {5m31s} must be <= shutdownGracePeriod {5m30s}",
    }
    for probe, refusal in probes.items():
        verdict = kubelet.judge(kubernetes_binaries / "kubelet", [], {**ours, "99-probe.conf": header + probe})
        assert not verdict.accepted and refusal in verdict.output, verdict.output


# --- systemd -----------------------------------------------------------------------------------------------

def _verify_unit(tmp_path: Path, unit: str, dropin: str) -> subprocess.CompletedProcess:
    """systemd-analyze verify of k3s's unit as its installer writes it, with our drop-in beside it."""
    (tmp_path / f"{unit}.d").mkdir(parents=True)
    (tmp_path / unit).write_text(
        "[Unit]\nDescription=Lightweight Kubernetes\nWants=network-online.target\nAfter=network-online.target\n\n"
        "[Install]\nWantedBy=multi-user.target\n\n[Service]\nType=notify\nKillMode=process\nDelegate=yes\n"
        "ExecStart=/bin/true\n")
    (tmp_path / f"{unit}.d" / "10-crdb-federation-data.conf").write_text(dropin)
    return subprocess.run(["systemd-analyze", "verify", "--man=no", f"./{unit}"], cwd=tmp_path,
                          capture_output=True, text=True)


@pytest.mark.parametrize("is_server, unit", [(True, "k3s.service"), (False, "k3s-agent.service")])
def test_systemd_analyze_verifies_the_k3s_unit_drop_in(tmp_path, is_server, unit):
    dropin = user_data(is_server).files[f"/etc/systemd/system/{unit}.d/10-crdb-federation-data.conf"]
    done = _verify_unit(tmp_path / "ours", unit, dropin)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # The same check on a misspelt key: systemd-analyze reads the drop-in and says so.
    broken = _verify_unit(tmp_path / "broken", unit, dropin.replace("RequiresMountsFor", "RequiresMountFor"))
    assert "Unknown key 'RequiresMountFor'" in broken.stderr, broken.stderr


# --- the data volume, on real loop devices ----------------------------------------------------------------

@pytest.fixture
def loops(tmp_path):
    """Loop devices over sparse files (root only); detached and unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root (scripts/test.sh runs the tests as root)")
    made, mounts = [], []

    def make(size_mb: int = 64, *, with_filesystem: bool = False) -> str:
        image = tmp_path / f"disk{len(made)}.img"
        with open(image, "wb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True,
                                check=True).stdout.strip()
        made.append(device)
        if with_filesystem:
            subprocess.run(["mkfs.ext4", "-q", "-L", "crdb-data", device], check=True)
        return device

    def unbound() -> str:
        """A loop device with nothing behind it: it opens, and reads nothing."""
        return subprocess.run(["losetup", "--find"], capture_output=True, text=True, check=True).stdout.strip()

    make.unbound, make.mounts = unbound, mounts
    yield make
    for mount_point in mounts:
        subprocess.run(["umount", str(mount_point)], capture_output=True)
    for device in made:
        subprocess.run(["losetup", "--detach", device], capture_output=True)


def run_data_volume(tmp_path: Path, loops, device: str | None, *, link: str = "virtio", is_server: bool = False,
                    volume_id: str = "4b8ba93c-0ad8-4d4f-9a3e-1f6d2d4b7c11") -> subprocess.CompletedProcess:
    """The rendered data-volume script, run for real against `device` named as udev would name it."""
    by_id = tmp_path / "by-id"
    by_id.mkdir(exist_ok=True)
    names = {"virtio": f"virtio-{volume_id[:20]}", "wwn": f"wwn-0x{volume_id.replace('-', '')}"}
    if device is not None:
        (by_id / names[link]).symlink_to(device)
    (tmp_path / "fstab").touch()
    loops.mounts.append(tmp_path / "data")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DISK_BY_ID": str(by_id), "DATA_MOUNT": str(tmp_path / "data"),
           "FSTAB": str(tmp_path / "fstab"), "K3S_SERVER_DIR": str(tmp_path / "k3s-server"), "ATTACH_TIMEOUT": "0"}
    return subprocess.run(["sh", "-c", render_data_volume_script(volume_id, is_server=is_server)], env=env,
                          capture_output=True, text=True, timeout=120)


def filesystem_uuid(device: str) -> str:
    return subprocess.run(["blkid", "-p", "-s", "UUID", "-o", "value", device], capture_output=True,
                          text=True).stdout.strip()


def test_a_blank_volume_is_formatted_and_mounted_by_uuid(tmp_path, loops):
    device = loops()
    done = run_data_volume(tmp_path, loops, device)
    assert done.returncode == 0, done.stderr
    fs_uuid = filesystem_uuid(device)
    assert fs_uuid and (tmp_path / "fstab").read_text() == (
        f"UUID={fs_uuid} {tmp_path / 'data'} ext4 defaults,nofail,x-systemd.device-timeout=300 0 2\n")
    assert subprocess.run(["mountpoint", "-q", str(tmp_path / "data")]).returncode == 0
    assert (tmp_path / "data" / "cockroach").is_dir()


def test_a_volume_that_holds_a_store_is_mounted_and_never_formatted(tmp_path, loops):
    device = loops(with_filesystem=True)
    before = filesystem_uuid(device)
    scratch = tmp_path / "seed"
    scratch.mkdir()
    subprocess.run(["mount", device, str(scratch)], check=True)
    (scratch / "cockroach").mkdir()
    (scratch / "cockroach" / "000001.sst").write_text("the store")
    subprocess.run(["umount", str(scratch)], check=True)
    done = run_data_volume(tmp_path, loops, device, is_server=True)
    assert done.returncode == 0, done.stderr
    assert filesystem_uuid(device) == before
    assert (tmp_path / "data" / "cockroach" / "000001.sst").read_text() == "the store"
    # On the server, k3s's datastore and credentials live on the volume too.
    for name, kept in K3S_SERVER_ON_VOLUME:
        assert (tmp_path / "k3s-server" / name).resolve() == (tmp_path / "data" / kept).resolve()


def test_a_volume_that_cannot_be_read_is_refused_not_formatted(tmp_path, loops):
    device = loops.unbound()
    done = run_data_volume(tmp_path, loops, device)
    assert done.returncode == 1
    assert "cannot be read (0 of 1048576 bytes); not formatting it" in done.stderr, done.stderr
    assert not filesystem_uuid(device) and not (tmp_path / "fstab").read_text()


def test_a_vmware_volume_is_found_by_its_wwn(tmp_path, loops):
    device = loops()
    volume_id = str(uuid.uuid4())
    done = run_data_volume(tmp_path, loops, device, link="wwn", volume_id=volume_id)
    assert done.returncode == 0, done.stderr
    assert filesystem_uuid(device)


def test_without_its_volume_a_node_installs_no_k3s(tmp_path, loops):
    """The user data's runcmd, executed with the real data-volume script and install script: no device
    appears, so the installer (a fake curl that would record its download) is never reached."""
    node = user_data(False)
    [[shell, flag, chain]] = node.runcmd
    scripts = {}
    for path in (DATA_VOLUME_SCRIPT_PATH, INSTALL_SCRIPT_PATH):
        scripts[path] = tmp_path / Path(path).name
        scripts[path].write_text(node.files[path])
        scripts[path].chmod(0o755)
        chain = chain.replace(path, str(scripts[path]))
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "curl").write_text(f"#!/bin/sh\necho downloaded >> {tmp_path / 'downloads'}\nexit 1\n")
    (fakes / "curl").chmod(0o755)
    (tmp_path / "by-id").mkdir()
    env = {"PATH": f"{fakes}:/usr/sbin:/usr/bin:/sbin:/bin", "DISK_BY_ID": str(tmp_path / "by-id"),
           "DATA_MOUNT": str(tmp_path / "data"), "FSTAB": str(tmp_path / "fstab"), "ATTACH_TIMEOUT": "0"}
    done = subprocess.run([shell, flag, chain], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "is not attached after 0s" in done.stderr, done.stderr
    assert not (tmp_path / "downloads").exists()
