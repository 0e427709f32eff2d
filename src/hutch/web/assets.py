"""Front-end assets from the npm registry (web-infra fills this in: the pinned table and
`fetch()`); the dashboard serves `<cache_dir>/VENDOR_DIR` at /ui/static/vendor."""

VENDOR_DIR = "ui/vendor"
