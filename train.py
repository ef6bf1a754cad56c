"""Train INRFlow (FSDP2). Thin entry point: everything lives in :mod:`inrflow.train`.

    python train.py --preset digits                                   # CPU demo
    torchrun --nproc-per-node 8 train.py --size XL --data /data/imagenet/train --preset imagenet256
    torchrun --nproc-per-node 2 train.py --device cpu --size tiny --data digits --steps 100

``python train.py --help`` lists every option.
"""

import sys

from inrflow.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
