"""What a runtime needs from the node's networking (`hutch.network.node.NodeNetwork` provides
it; the agent hands it in): the runtime layer never builds links or rules itself."""

from pathlib import Path
from typing import Protocol

from hutch.model.errors import Unsupported
from hutch.model.sandbox import SandboxSpec


class NetworkWiring(Protocol):
    """Blocking calls (run them in a thread). Each leaves nothing behind when it fails."""

    def open_taps(self, spec: SandboxSpec) -> list[int]:
        """One open TAP descriptor per `spec.networks` entry, carrying nothing yet: no guest
        behind them may run before `wire_taps`. The caller owns and closes the descriptors."""

    def wire_taps(self, spec: SandboxSpec) -> None:
        """The TAPs of `open_taps` on their networks' bridges, with the node's rules for them
        in force (a paused guest's QEMU may start meanwhile)."""

    def plug_netns(self, spec: SandboxSpec) -> Path:
        """A network namespace holding the sandbox's NICs (eth0 first), configured; its path."""

    def unplug(self, sandbox_id: str) -> None:
        """Undo plug_*; unknown ids are not an error."""

    def unwire_taps(self, sandbox_id: str) -> None:
        """Undo wire_taps, as unplug does, but keep the TAPs (off their bridges, down): their
        paused QEMU holds them for a `wire_taps` again."""


def check_wired(spec: SandboxSpec, wiring: NetworkWiring | None) -> None:
    """Unsupported for a sandbox with networks on a node whose networking is not set up
    (`wiring` None): every runtime refuses it the same way, before anything is made."""
    if spec.networks and wiring is None:
        raise Unsupported("this node has no networking set up: run the sandbox without one")


def guest_net_params(spec: SandboxSpec, mtu: int = 1500) -> list[str]:
    """Kernel command-line flags for the guest agent (agent.c reads them at boot):

    hutch.net=IP4/P4,GW4,IP6/P6,GW6,MTU   eth0's addresses, default routes and MTU
    hutch.dns=A[,B...]                     /etc/resolv.conf's nameservers
    hutch.search=D[,E...]                  /etc/resolv.conf's search domains
    hutch.hostname=NAME                    /etc/hosts: NAME at eth0's addresses
    """
    if not spec.networks:
        return []
    a = spec.networks[0]
    params = [f"hutch.net={a.ip4}/{a.prefix4},{a.gateway4},{a.ip6}/{a.prefix6},{a.gateway6},{mtu}"]
    if a.dns:
        params.append("hutch.dns=" + ",".join(a.dns))
    if a.search:
        params.append("hutch.search=" + ",".join(a.search))
    params.append(f"hutch.hostname={spec.hostname or spec.id}")
    return params
