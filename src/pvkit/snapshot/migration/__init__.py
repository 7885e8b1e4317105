"""Live migration over TCP: a compatibility handshake, then the VM's state in a stream."""
