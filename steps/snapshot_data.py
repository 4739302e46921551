"""Step: copy the raw data files into the artifact store, so each run links to the exact bytes it used.

    tuneline run configs/default.yaml               # the pipeline's first data step
"""

import tempfile
from pathlib import Path
from typing import Annotated

from zenml import step

from materializers import RawDataMaterializer
from steps._metadata import log
from tuneline.config import DataConfig
from tuneline.data.snapshot import RawDataDir, snapshot


@step(output_materializers={"raw_data": RawDataMaterializer})
def snapshot_data(config: DataConfig, data_sha256: str = "") -> Annotated[RawDataDir, "raw_data"]:
    # data_sha256 (computed when the pipeline is compiled) is the cache key: unchanged files keep this
    # step, and so validation and everything after it, cached.
    raw = snapshot(config, Path(tempfile.mkdtemp(prefix="tuneline-raw-")))
    log({"data_sha256": data_sha256, "files": raw.files})
    return raw
