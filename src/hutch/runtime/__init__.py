"""Runtime drivers: run sandboxes (micro-VMs or crun containers) on this host."""
