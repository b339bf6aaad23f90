"""The real parts that tests and benchmarks run against: a Label Studio server in its own
virtual environment (``label_studio``), the backend's processes (``backend``: gunicorn, RQ
workers, a private redis-server) and a loopback HTTP server for images and stand-ins
(``local_http``). Not part of the installed package."""
