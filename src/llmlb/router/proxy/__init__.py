"""A client request's way to a node and back: admission, the wait queue, failover, the relay,
recording, and the router's HTTP/1.1 client for its nodes.
"""
