"""Starting and stopping engines safely: wait, run, ps, cleanup."""
