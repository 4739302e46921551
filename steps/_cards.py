"""What a step's model cards say about the run (tuneline.cards.CardInfo): the ZenML model's name, license and
tags when the pipeline has a model, and the data sources."""

from zenml import get_step_context
from zenml.exceptions import StepContextError

from tuneline.cards import CardInfo, sources


def about(*frames, datasets: list[str] = ()) -> CardInfo:
    """CardInfo for this step: datasets from the frames' `source` column, plus `datasets`."""
    try:
        model = get_step_context().model
    except StepContextError:  # a pipeline without a `model:` section
        model = None
    return CardInfo.of(model, sorted({*sources(*frames), *datasets}))
