"""The cloud-init seed's checks without a rack: what cloud-init would skip or fail on is refused with the reason,
what it reads is taken as given, and the seed ISO carries network-config only when one was given."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import cloudinit
from appliance.errors import UsageError
from appliance.runner import run

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0ZXN0a2V5Zm9yZHJvdmVyY2xvdWRpbml0c2VlZA drover@unit"


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"user_data": "#cloud-config\nruncmd: [echo, 'open\n"}, "user_data: not valid YAML"),
        ({"user_data": "#cloud-config\nruncmd: [a\n  b: c\n"}, "(line "),
        ({"user_data": "#cloud-config\n- a\n- b\n"}, "#cloud-config must be a YAML mapping"),
        ({"user_data": "#cloud-config\njust text\n"}, "#cloud-config must be a YAML mapping"),
        ({"user_data": "packages: [htop]\n"}, "cloud-init ignores user data whose first line is not"),
        ({"network_config": "version: 3\n"}, "version: 1 or version: 2"),
        ({"network_config": "- eth0\n"}, "version: 1 or version: 2"),
        ({"network_config": "version: 1\n"}, "version 1 needs config"),
        ({"network_config": "version: 2\nethernet: {}\n"}, "version 2 has no 'ethernet'"),
        ({"network_config": "version: 2\nbonds: [bond0]\n"}, "bonds must be a mapping"),
        ({"network_config": ": :\n  -"}, "network_config: not valid YAML"),
        ({"network_config": 7}, "network_config: text of at most"),
        ({"ssh_keys": ["ssh-ed25519"]}, "is not an OpenSSH public key"),
        ({"meta_data": "x"}, "cloud_init: must be"),
        ({}, "give user_data, ssh_keys, network_config"),
    ],
)
def test_refused_with_the_reason(spec: dict[str, object], reason: str) -> None:
    with pytest.raises(UsageError) as err:
        cloudinit.check(spec)
    assert reason in str(err.value) + (err.value.hint or "")


@pytest.mark.parametrize(
    "user_data",
    [
        "#cloud-config\nruncmd:\n  - echo hi\n",
        "#cloud-config\n",  # empty: cloud-init's defaults
        "#!/bin/sh\necho hi\n",
        "#include\nhttp://config.invalid/x\n",
        "Content-Type: multipart/mixed; boundary=x\n\n--x--\n",
        "## template: jinja\n#cloud-config\nhostname: {{ v1.local_hostname }}\n",
    ],
)
def test_what_cloud_init_reads_is_taken(user_data: str) -> None:
    assert cloudinit.check({"user_data": user_data}).user_data == user_data


def test_network_config_forms_and_the_seed(tmp_path: Path) -> None:
    v2 = "version: 2\nethernets:\n  lan:\n    match: {macaddress: '52:54:00:00:00:01'}\n    addresses: [192.0.2.5/24]\n"
    wrapped = "network:\n  version: 1\n  config:\n    - {type: physical, name: eth0, subnets: [{type: dhcp}]}\n"
    assert cloudinit.check({"network_config": wrapped}).network_config == wrapped
    seed = cloudinit.check({"network_config": v2, "ssh_keys": [KEY + "\n"]})
    assert seed == cloudinit.Seed("", (KEY,), v2)
    for network, files in (("", {"user-data", "meta-data"}), (v2, {"user-data", "meta-data", "network-config"})):
        iso = cloudinit.make_seed(tmp_path / "seed.iso", '{"instance-id": "i"}\n', "", network)
        out = tmp_path / f"x{len(network)}"
        run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/", str(out)])
        assert {p.name for p in out.iterdir()} == files
        if network:
            assert (out / "network-config").read_text() == v2
        iso.unlink()
