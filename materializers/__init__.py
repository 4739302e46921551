"""ZenML materializers for tuneline's artifact types."""

from materializers.directories import DirectoryMaterializer, RawDataMaterializer

__all__ = ["DirectoryMaterializer", "RawDataMaterializer"]
