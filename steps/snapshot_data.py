"""Step: copy the raw data files into the artifact store, so each run links to the exact bytes it used, and
read evaluate.perplexity's general texts once, before training, into their own artifact.

    tuneline run configs/default.yaml               # the pipeline's first data step
"""

from typing import Annotated

from zenml import step

from materializers import RawDataMaterializer
from steps._cache import code_cache
from steps._metadata import log
from tuneline.artifacts import step_output
from tuneline.config import DataConfig, PerplexityConfig
from tuneline.data.readers import DataError
from tuneline.data.snapshot import RawDataDir, snapshot
from tuneline.eval.perplexity import GeneralText, read_general_text


@step(cache_policy=code_cache(__name__), output_materializers={"raw_data": RawDataMaterializer})
def snapshot_data(
    config: DataConfig, data_sha256: str = "", general_text: PerplexityConfig | None = None,
    general_text_sha256: str = "",
) -> tuple[Annotated[RawDataDir, "raw_data"], Annotated[GeneralText, "general_text"]]:
    # data_sha256 and general_text_sha256 (computed when the pipeline is compiled) are the cache key: unchanged
    # files keep this step, and so everything after it, cached. Changed general text re-runs this step, but the
    # raw data's content hash (RawDataMaterializer) keeps validation and training cached: only the evaluation
    # and the exports, which take `general_text`, run again.
    with step_output("raw") as out:
        raw = snapshot(config, out)
    texts = read_general_text(general_text) if general_text else GeneralText()
    if general_text and general_text_sha256 and texts.sha256 != general_text_sha256:
        # Stored under a key that does not describe it, a later run of the old bytes would get these texts.
        raise DataError(f"{general_text.file} changed after the run started (sha256 {general_text_sha256[:12]} "
                        f"when compiled, {texts.sha256[:12]} now): run the pipeline again")
    log({"data_sha256": data_sha256, "files": raw.files, "general_text": texts.summary()})
    return raw, texts
