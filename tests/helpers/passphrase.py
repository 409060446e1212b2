"""The passphrase every test profile is made with, library and CLI alike: a device made by
one kind of test can be opened by the other."""

from __future__ import annotations

PASSPHRASE = "correct horse battery staple"
