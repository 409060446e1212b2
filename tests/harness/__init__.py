"""Real services for tests: a throwaway PostgreSQL cluster and an rclone S3 server.

Register both as pytest plugins (``pytest_plugins = ["tests.harness.pg", "tests.harness.s3"]``
in ``tests/conftest.py``); each service starts once per session, on first use.
"""
