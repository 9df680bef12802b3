"""klpfleet: roll kernel livepatches across a fleet of Linux servers."""

__version__ = "0.1.0"
