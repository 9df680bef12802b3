"""Execution nodes: machines that run the controller's Ansible jobs near the hosts, through ansible-runner's
streaming protocol (transmit on the controller, `ansible-runner worker` on the node over SSH, process back on
the controller). Nodes hold no state and no database credentials; one rollout, one gate, one database."""
