import sys

from perfloss.cli import main

sys.exit(main())
