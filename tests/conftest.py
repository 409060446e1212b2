"""Plugins shared by every test directory: real PostgreSQL and real S3, started on demand."""

pytest_plugins = ["tests.harness.pg", "tests.harness.s3"]
