"""ZenML materializers for tuneline's artifact types."""

from materializers.directories import DirectoryMaterializer

__all__ = ["DirectoryMaterializer"]
