"""The generated device tree, checked by decompiling it with dtc (an independent parser)."""

from __future__ import annotations

import subprocess

from pvkit.platform.virt_arm64 import VirtConfig, virt_device_tree
from pvkit.services.profiles import NONE, PVKIT


def dts(**kwargs: object) -> str:
    blob = virt_device_tree(VirtConfig(**kwargs))  # type: ignore[arg-type]
    out = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", "-q", "-"], input=blob, capture_output=True, check=True
    )
    return out.stdout.decode()


def test_cpus_memory_psci_and_uart_are_described() -> None:
    text = dts(smp=4, memory=512 << 20)
    assert 'compatible = "arm,psci-1.0\\0arm,psci-0.2\\0arm,psci";' in text
    assert 'method = "hvc";' in text
    assert text.count('enable-method = "psci";') == 4
    for i in range(4):
        assert f"cpu@{i} {{" in text
    assert "reg = <0x00 0x40000000 0x00 0x20000000>;" in text
    assert 'stdout-path = "/pl011@9000000";' in text
    assert 'compatible = "arm,pl011\\0arm,primecell";' in text


def test_conduit_is_advertised() -> None:
    assert 'method = "smc";' in dts(conduit="smc")


def test_cpus_beyond_one_cluster_use_aff1() -> None:
    text = dts(smp=18)
    assert "cpu@100 {" in text and "cpu@101 {" in text and "cpu@f {" in text


def test_profile_decides_the_hypervisor_and_psci_nodes() -> None:
    pvkit = dts(profile=PVKIT)
    assert "hypervisor {" in pvkit and "pvkit,hypervisor" in pvkit
    assert "hypervisor {" not in dts()  # KVM publishes no such node; guests use the UID
    bare = dts(profile=NONE)
    assert "psci {" not in bare and "enable-method" not in bare
