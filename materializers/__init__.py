"""ZenML materializers for tuneline's artifact types."""

from materializers.directories import DirectoryMaterializer, RawDataMaterializer
from materializers.report import ReportMaterializer

__all__ = ["DirectoryMaterializer", "RawDataMaterializer", "ReportMaterializer"]
