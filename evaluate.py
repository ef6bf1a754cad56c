"""Evaluate generated samples against a reference set (thin entry -> inrflow.cli.evaluate).

python evaluate.py --samples samples.npz --ref digits
python evaluate.py --checkpoint runs/digits/ckpt --ref digits --cfg-scale 2
python evaluate.py --samples gen_clouds/ --ref ref_clouds.npy --normalize bbox
python evaluate.py --help
"""

from __future__ import annotations

import sys

from inrflow.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
