"""The ML backend: web service, RQ jobs, the Redis store, and the processes that run them."""
