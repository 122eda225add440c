"""Entry points: the command line, the HTTP API, the queue worker, the registry listener, and
what they parse (events, messages, principals) and print (render, views, audit lines)."""
