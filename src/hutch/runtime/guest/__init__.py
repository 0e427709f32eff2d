"""The guest side of the micro-VM: the guest agent, kernel and initramfs, built at set-up time."""
