"""The ROUGE metric script for evaluate.load(tuneline.metrics.ROUGE_SCRIPT); a package only so wheels ship it."""
