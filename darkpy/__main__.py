import sys

from darkpy.cli import main

sys.exit(main())
