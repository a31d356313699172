"""Which models go where: the policy, the distributor, download tasks, and the router's own model
store.
"""
