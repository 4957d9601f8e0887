"""Launchers for the servers the harness and the tests run on loopback."""
