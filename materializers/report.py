"""ZenML materializer for `tuneline.dashboard.Report`: the HTML page, the Markdown and each PNG chart are
stored as files and shown as separate dashboard visualizations, in that order (HTML first).

    zenml artifact version describe final_report    # or the run page in the dashboard
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from tuneline.dashboard import Report

PAGE = "report.html"
MARKDOWN = "report.md"
IMAGES = "images.json"  # the chart names, in order; each is <name>.png


class ReportMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple] = (Report,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def _path(self, name: str) -> str:
        return os.path.join(self.uri, name)

    def save(self, data: Report) -> None:
        with fileio.open(self._path(PAGE), "w") as f:
            f.write(data.html)
        with fileio.open(self._path(MARKDOWN), "w") as f:
            f.write(data.markdown)
        for name, png in data.images.items():
            with fileio.open(self._path(f"{name}.png"), "wb") as f:
                f.write(png)
        with fileio.open(self._path(IMAGES), "w") as f:
            f.write(json.dumps(list(data.images)))

    def load(self, data_type: type) -> Report:
        with fileio.open(self._path(PAGE), "r") as f:
            page = f.read()
        with fileio.open(self._path(MARKDOWN), "r") as f:
            markdown = f.read()
        with fileio.open(self._path(IMAGES), "r") as f:
            names = json.loads(f.read())
        images = {}
        for name in names:
            with fileio.open(self._path(f"{name}.png"), "rb") as f:
                images[name] = f.read()
        return Report(html=page, markdown=markdown, images=images)

    def save_visualizations(self, data: Report) -> dict[str, VisualizationType]:
        # The files save() wrote are the visualizations: nothing is written twice.
        shown = {self._path(PAGE): VisualizationType.HTML}
        if data.markdown:
            shown[self._path(MARKDOWN)] = VisualizationType.MARKDOWN
        shown.update({self._path(f"{name}.png"): VisualizationType.IMAGE for name in data.images})
        return shown

    def extract_metadata(self, data: Report) -> dict[str, Any]:
        return {"charts": list(data.images)} if data.images else {}
