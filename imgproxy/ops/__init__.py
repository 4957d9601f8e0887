"""Operating the service: metrics, health, request ids and log lines, the status page.

Import the submodules themselves: this package imports nothing, so that the CLI can name the
metrics directory (:mod:`.paths`) before anything loads prometheus_client.
"""
