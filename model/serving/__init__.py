"""The editor in people's and programs' hands: ``editsynth edit`` and ``editsynth serve`` (``cli``),
one server with a web UI (``webui``) and an HTTP API (``server``)."""
