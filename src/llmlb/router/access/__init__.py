"""Who may call what: API keys, accounts and sessions, authentication, per-key and per-role limits
and their sharing across routers, login lockouts.
"""
