"""Command-line tools of the userspace stack."""
