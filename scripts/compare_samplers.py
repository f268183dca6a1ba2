"""`python scripts/compare_samplers.py [overrides]`: the `adm-compare-samplers` console script (`adm.cli`)."""

from adm.cli import compare_samplers

if __name__ == "__main__":
    compare_samplers()
