"""`python scripts/train.py [overrides]`: the `adm-train` console script (`adm.cli`)."""

from adm.cli import train

if __name__ == "__main__":
    train()
