"""``python -m seg2tflite.app``: the same command line as the ``seg2tflite`` script."""

import sys

from seg2tflite.app.cli import main

sys.exit(main())
