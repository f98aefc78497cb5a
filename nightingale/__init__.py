"""The Django project: settings (env.py reads them from the environment), URLs, WSGI/ASGI, and
the few helpers the engine (`sync`) and the UI (`dashboard`) share: http.py (bearer tokens, JSON
errors) and times.py (ISO times a person typed). Its helpers import Django only, never `sync` or
`dashboard` (urls.py names both apps' URLconfs by dotted path)."""
