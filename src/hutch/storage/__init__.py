"""A node's volumes: persistent disks kept on the node (or on shared storage), outside any
sandbox. `backend.Backend` is what the agent asks of a storage backend; `local` keeps volumes as
raw sparse files whose snapshots and forks are reflinks."""
