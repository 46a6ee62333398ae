"""The operating-system layer: processes, sockets, file holders; Linux and macOS behind one API."""
