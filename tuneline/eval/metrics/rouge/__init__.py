"""The ROUGE metric script for evaluate.load(tuneline.eval.metrics.ROUGE_SCRIPT); a package only so wheels ship it."""
