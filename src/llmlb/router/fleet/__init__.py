"""Who is in the fleet and may serve: node records, the registry, its table, health and stall
detection, and the client for the router's control calls to nodes.
"""
