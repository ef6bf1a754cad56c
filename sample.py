"""Generate samples from an inrflow checkpoint. Thin entry point: see :mod:`inrflow.cli.sample`.

    python sample.py --ckpt runs/digits --num 100 --out digits.png
    python sample.py --ckpt runs/digits --resolution 32 --out digits32.png

``python sample.py --help`` lists every option.
"""

import sys

from inrflow.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
