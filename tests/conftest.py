"""Plugins shared by every test directory: real PostgreSQL and real S3, started on demand."""

import signal

pytest_plugins = ["tests.harness.pg", "tests.harness.s3"]

# A test run started in the background of a non-interactive shell (`make test &`) inherits
# SIGINT ignored, and every command the tests start would inherit that too: ^C typed at a
# test's pty, or SIGINT sent to a watch, would then do nothing and the test would hang.
# A handled signal is reset to its default across exec, an ignored one is not.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
