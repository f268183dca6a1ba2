"""Per-script experiment roots (``experiments/<script>/experiment/<name>.yaml``): ``experiment=smoke``
means the smoke run of whichever training script reads it."""
