import sys

from hpa_kernel.cli import main

sys.exit(main())
