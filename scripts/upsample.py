"""`python scripts/upsample.py [overrides]`: the `adm-upsample` console script (`adm.cli`)."""

from adm.cli import upsample

if __name__ == "__main__":
    upsample()
