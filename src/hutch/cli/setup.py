"""`hutch setup`: build the guest side and probe this host, once, before anything runs."""

import shutil
import subprocess

import typer

from hutch import config
from hutch.runtime import accel
from hutch.runtime.guest import build
from hutch.web import assets


def setup(
    refresh: bool = typer.Option(
        False, "--refresh", help="Ask apt for a newer guest kernel and probe KVM again."
    ),
) -> None:
    """Build the guest kernel, initramfs and guest agent (cached), choose KVM or TCG, and fetch
    the dashboard's front-end packages (pinned, checked, cached)."""
    settings = config.load()
    for tool, package in ((settings.qemu, "qemu-system-x86"), (settings.crun, "crun")):
        if shutil.which(tool) is None:
            typer.echo(f"warning: {tool} not found (apt-get install {package})", err=True)
    guest = build.prepare(
        settings.cache_dir,
        settings.kernel_package,
        refresh=refresh,
        log=lambda msg: typer.echo(f"  {msg}", err=True),
    )
    chosen = accel.choose(settings.qemu, guest, settings.cache_dir, settings.accel, refresh=refresh)
    qemu = subprocess.run([settings.qemu, "--version"], capture_output=True, text=True, check=False)
    typer.echo(f"guest kernel  {guest.kernel_package} ({guest.kernel})")
    typer.echo(f"initramfs     {guest.initrd}")
    typer.echo(f"accelerator   {chosen.name} ({chosen.reason})")
    typer.echo(f"qemu          {(qemu.stdout.splitlines() or ['?'])[0]}")
    vendor = assets.fetch(settings.cache_dir, log=lambda msg: typer.echo(f"  {msg}", err=True))
    typer.echo(f"dashboard     {vendor} ({len(assets.PACKAGES)} npm packages, pinned)")
