"""The packet path: AF_PACKET rings, a BPF filter and the forwarding loop.

Nothing here knows the config syntax: the control plane hands over plain `ForwardingTable` objects.
"""
