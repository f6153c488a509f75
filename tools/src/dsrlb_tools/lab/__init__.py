"""The embedded lab: real systemd hosts in Linux namespaces, wired by bridges in their own namespaces."""
