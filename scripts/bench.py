"""The benchmark suite (see bioscan5m_hf/bench.py): python scripts/bench.py WORKDIR [--repeats 3]"""

import sys

from bioscan5m_hf.bench import main

if __name__ == "__main__":
    sys.exit(main())
