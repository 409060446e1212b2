import sys

from blobsync.cli.main import main

sys.exit(main())
