"""klpfleet: roll kernel livepatches across a fleet of Linux servers."""

# The one version number: the package's (pyproject reads it from here), the collection's galaxy.yml and its
# changelog's newest release must equal it (tests/test_packaging.py).
__version__ = "0.11.0"
