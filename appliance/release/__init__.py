"""Releases on the box: checking a signed bundle, installing it beside the running release,
switching to it with a backup of the database, and switching back when it fails its checks."""
