"""The guest side of the micro-VM: agent, kernel and initramfs, built at set-up time."""
