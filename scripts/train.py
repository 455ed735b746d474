"""Train a small image + DNA classifier from converted BIOSCAN-5M shards (see bioscan5m_hf/tools/train.py).

    python scripts/train.py shards --epochs 5
    torchrun --nproc_per_node=2 scripts/train.py shards --epochs 2
"""

import sys

from bioscan5m_hf.tools.train import main

if __name__ == "__main__":
    sys.exit(main())
