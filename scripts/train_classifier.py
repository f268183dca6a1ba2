"""`python scripts/train_classifier.py [overrides]`: the `adm-train-classifier` console script (`adm.cli`)."""

from adm.cli import train_classifier

if __name__ == "__main__":
    train_classifier()
