"""`python scripts/train_superres.py [overrides]`: the `adm-train-superres` console script (`adm.cli`)."""

from adm.cli import train_superres

if __name__ == "__main__":
    train_superres()
