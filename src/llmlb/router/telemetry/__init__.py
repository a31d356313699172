"""What happened and what is happening: request history, Prometheus metrics, the overview and node
trends.
"""
