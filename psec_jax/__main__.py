"""`python -m psec_jax ...` is the same as the `psec-jax` console script."""

import sys

from psec_jax.entry import main

if __name__ == "__main__":
    sys.exit(main())
