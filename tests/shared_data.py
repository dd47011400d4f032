"""Where the real data sets of ../shared/data are: $SPARSITY_SHARED_DATA, the folder beside
the repository, or /work/shared/data (a clean clone elsewhere finds it there); "" if none."""
import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = next((p for p in (os.environ.get("SPARSITY_SHARED_DATA", ""),
                                os.path.join(_REPO, "..", "shared", "data"),
                                "/work/shared/data") if p and os.path.isdir(p)), "")
