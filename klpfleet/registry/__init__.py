"""The patch registry: livepatch artifacts, identified by content, kept in an artifact store."""
