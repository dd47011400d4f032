"""``python -m sparsity_core.sweep CONFIG.yaml [--quick] [--workers N] ...`` (see :mod:`.cli`)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
