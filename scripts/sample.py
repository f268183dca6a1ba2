"""`python scripts/sample.py [overrides]`: the `adm-sample` console script (`adm.cli`)."""

from adm.cli import sample

if __name__ == "__main__":
    sample()
