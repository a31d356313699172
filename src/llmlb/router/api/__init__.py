"""The router's HTTP handlers, one module per audience: clients (``client``), nodes
(``nodes``), operators (``admin``) and probes (``ops``). Handlers are thin: they parse,
authorize, call the owner of the concern (see ``RouterService``) and answer."""
