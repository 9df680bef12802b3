"""Running one playbook over exactly the hosts given: the request and its outcome, the run folder, the local
ansible-runner run under its engine, and the handler that records its events. Below both the controller and the
execution nodes: neither imports the other to run a playbook."""
