"""The monitor: a control socket for a running VM, QMP's JSON messages one per line.

protocol.py is the wire format, commands.py what each command does to the VM (through
the control plane), server.py the socket `pvkit run --monitor unix:PATH` serves, and
client.py what `pvkit monitor PATH COMMAND` sends (docs/monitor.md).
"""
