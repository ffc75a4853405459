"""The `tokenwise` command line: one module per sub-command, wired in :mod:`.main`."""
