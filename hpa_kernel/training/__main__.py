"""``python -m hpa_kernel.training ARGS`` = ``hpa-kernel train ARGS``; the torchrun entry point."""

import sys

from hpa_kernel.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
