"""``clipforge serve``: an index folder behind an HTTP API and a web page (FastAPI).

:mod:`.batching` groups queries that arrive together into one encoder call;
:mod:`.metrics` counts requests and their latencies; :mod:`.app` is the application;
the page itself is ``page.html`` beside it.
"""
