import sys

from escnet.cli import main

sys.exit(main())
