import sys

from probinfer.cli import main

sys.exit(main())
