"""Snapshots: a versioned, checksummed file of every component's state, and restore.

format.py is the container (no pickle, nothing executed from the file); state.py the
small protocol each component implements next to its own code; ram.py guest RAM stored
sparsely; capture.py and resume.py take a board apart and put it back together.
"""
