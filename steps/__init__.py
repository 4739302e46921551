"""ZenML steps: thin wrappers, one per file, each one call into tuneline/."""
