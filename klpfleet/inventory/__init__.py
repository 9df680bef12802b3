"""The bridge to Ansible inventories: reading sources through ansible-core into the database (`sources`,
`importer`), the inventory Ansible reads back out of it (`export`), and the import's fingerprint."""
